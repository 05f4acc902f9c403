//! Reaching the database at start: which failures are worth retrying and
//! which are the user's to fix, told apart so that a wrong password fails
//! at once with PostgreSQL's own reason and a server that is still
//! starting is waited for.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::RelayConfig;
use crate::error::{Error, Result};
use crate::secrets::redact_url;

/// The loop's fetch and prefetch, up to four batches being marked, the
/// LISTEN connection, the sweeper and /healthz.
const POOL_SIZE: u32 = 9;

/// Shortest time one connection attempt is given, even at the deadline.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// Longest pause between two connection attempts at start.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);

/// What a failed connection attempt means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Worth another try: nothing listens yet, the server is starting or
    /// full, the network dropped the attempt.
    Transient(String),
    /// Another try gets the same answer until someone changes the URL,
    /// the server's configuration or its certificates.
    Permanent(String),
}

/// Connects to the database, retrying transient failures until
/// `config.connect_timeout`.
///
/// Fails at once with [`Error::DatabaseRefused`] when the server refused
/// the relay for a reason retrying cannot fix (password, role, database,
/// TLS), and with [`Error::DatabaseUnreachable`] when the deadline passed;
/// both name the URL without its password.
pub(crate) async fn connect(config: &RelayConfig) -> Result<PgPool> {
    let options = options(config)?;
    let url = redact_url(&config.database_url);
    let failed = |failure: Failure| {
        let url = url.clone();
        match failure {
            Failure::Permanent(reason) => Error::DatabaseRefused { url, reason },
            Failure::Transient(reason) => Error::DatabaseUnreachable {
                url,
                timeout: humantime::format_duration(config.connect_timeout).to_string(),
                reason,
            },
        }
    };
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let mut wait = Duration::from_millis(200);
    // One plain connection first: a pool only reports "timed out" when
    // its connections fail, which hides the reason.
    loop {
        // Bounded, so that a server that accepts and never answers cannot
        // hold the start past the deadline.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(MIN_ATTEMPT);
        let failure = match tokio::time::timeout(left, options.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                break;
            }
            Ok(Err(e)) => classify(&e),
            Err(_) => Failure::Transient(format!(
                "the server accepted the connection but did not answer within {}",
                humantime::format_duration(left)
            )),
        };
        match failure {
            Failure::Transient(reason) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(url = %url, reason = %reason, "database not reachable yet; retrying");
                // The last pause ends at the deadline, for one last try.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(wait.min(left)).await;
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
            refused_or_too_late => return Err(failed(refused_or_too_late)),
        }
    }
    PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(config.connect_timeout.max(Duration::from_secs(1)))
        .connect_with(options)
        .await
        .map_err(|e| failed(classify(&e)))
}

/// The connect options for `config.database_url`, with the relay's
/// session settings.
fn options(config: &RelayConfig) -> Result<PgConnectOptions> {
    let options: PgConnectOptions = config.database_url.parse().map_err(|e: sqlx::Error| {
        Error::config(
            "database-url",
            // sqlx's URL errors (the url crate's, UTF-8 decoding, numbers,
            // sslmode) never quote the password; the test below holds it.
            format!(
                "{} is not a valid PostgreSQL URL: {e}",
                redact_url(&config.database_url)
            ),
        )
    })?;
    // The relay's statements are written to walk indexes in seq order and
    // stop at LIMIT. Right after a bulk load the table has no statistics
    // yet, and the planner would rather bitmap-scan and sort the whole
    // backlog (seconds per batch on a million rows), or read the whole
    // table to find the few delayed messages (it cannot estimate
    // `available_at > created_at`); these settings only make such plans a
    // last resort for the relay's own connections. A plan that has to use
    // one anyway (the small lease tables have no index to use) then costs
    // above jit_above_cost, and compiling it took 20-70 ms per statement:
    // JIT never pays for the relay's short statements, so it is off.
    // Parallel workers do not pay either: with sorting off, the first
    // fetches on each connection (custom plans, before PostgreSQL settles
    // on the prepared statement's generic plan) were planned as a parallel
    // index scan, and starting the workers took about 10 ms of a fetch
    // that reads 1,000 rows in half a millisecond.
    Ok(options.application_name("outbox-relay").options([
        ("enable_bitmapscan", "off"),
        ("enable_sort", "off"),
        ("enable_seqscan", "off"),
        ("jit", "off"),
        ("max_parallel_workers_per_gather", "0"),
    ]))
}

/// Sorts a connection error into retry-worthy or not, with a reason a
/// user can act on.
pub(crate) fn classify(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) => {
            let message = db.message().to_owned();
            match db.code().as_deref() {
                // invalid_password; PostgreSQL gives the same answer for a
                // role that does not exist, on purpose.
                Some("28P01") => Failure::Permanent(format!(
                    "{message}. Check the user and password in the URL"
                )),
                // invalid_authorization_specification: no pg_hba.conf
                // line lets this user in this way (often: TLS required),
                // or the role does not exist.
                Some("28000") if message.contains("no encryption") => Failure::Permanent(format!(
                    "{message}. The server requires TLS: add sslmode=require (or verify-full with sslrootcert=CA-FILE) to the URL"
                )),
                Some("28000") => Failure::Permanent(format!(
                    "{message}. Check the user in the URL and the server's pg_hba.conf"
                )),
                // invalid_catalog_name: the database does not exist.
                Some("3D000") => Failure::Permanent(format!(
                    "{message}. Create it, or fix the database name in the URL"
                )),
                // insufficient_privilege: no CONNECT on the database.
                Some("42501") => Failure::Permanent(format!(
                    "{message}. GRANT CONNECT on the database to the user"
                )),
                // cannot_connect_now (starting or shutting down),
                // too_many_connections and anything else the server may
                // answer differently next time.
                _ => Failure::Transient(message),
            }
        }
        sqlx::Error::Tls(inner) => Failure::Permanent(tls_reason(&inner.to_string())),
        // rustls reports a certificate it does not accept as invalid data
        // during the handshake.
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Failure::Permanent(tls_reason(&io.to_string()))
        }
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            Failure::Transient("connection refused: nothing listens at that host and port (is PostgreSQL running?)".into())
        }
        sqlx::Error::Io(io) => Failure::Transient(io.to_string()),
        // A CA or key file that cannot be read or parsed.
        sqlx::Error::Configuration(inner) => Failure::Permanent(format!(
            "{inner}. Check sslrootcert, sslcert and sslkey in the URL"
        )),
        other => Failure::Transient(other.to_string()),
    }
}

/// A TLS failure with the setting that usually fixes it.
fn tls_reason(inner: &str) -> String {
    if inner.contains("does not support TLS") {
        "the server does not support TLS. Enable ssl on the server, or use sslmode=prefer or disable in the URL".to_owned()
    } else if inner.contains("certificate") || inner.contains("Certificate") {
        format!("TLS: the server's certificate was not accepted ({inner}). Check sslrootcert (the CA that signed the server's certificate) and the host name in the URL, or use sslmode=verify-ca to skip the host name check")
    } else {
        format!("TLS to the server failed: {inner}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_port_is_transient_and_says_so() {
        let e = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        match classify(&e) {
            Failure::Transient(reason) => {
                assert!(reason.contains("connection refused"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        for url in [
            "postgres://app:hunter2-secret@db:notaport/orders",
            "postgres://app:hunter2-secret@db/orders?sslmode=sometimes",
            "postgres://app:hunter2-secret%FF@db/orders",
        ] {
            let e = options(&RelayConfig::new(url)).expect_err(url).to_string();
            assert!(e.contains("database-url"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn tls_problems_are_permanent() {
        let e = sqlx::Error::Tls("server does not support TLS".into());
        assert!(
            matches!(classify(&e), Failure::Permanent(r) if r.contains("does not support TLS"))
        );
        let e = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        assert!(matches!(classify(&e), Failure::Permanent(r) if r.contains("sslrootcert")));
    }
}
