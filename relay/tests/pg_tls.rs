//! The relay over TLS to PostgreSQL, and what it says when it cannot get
//! in: `outbox-relay migrate` works with `sslmode=verify-full` against a
//! server that takes nothing but TLS; a refusal retrying cannot fix (wrong
//! password, missing database or role, TLS required, TLS refused, a
//! certificate from another CA) ends the relay at once with PostgreSQL's
//! or rustls' reason, while a closed port is retried until
//! `--connect-timeout` and then called "connection refused". The password
//! never shows in the output.
//!
//! Each test starts a PostgreSQL of its own (`outbox_testkit::PgCluster`)
//! with certificates it generates (`outbox_testkit::tls::Certs`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::{free_port, random_suffix, run_relay_to_exit, Exited};
use outbox_testkit::tls::Certs;
use outbox_testkit::{PgAccess, PgCluster};

/// A refusal must end the relay well before this, although
/// `--connect-timeout` would let it retry for 20 s.
const QUICK: Duration = Duration::from_secs(5);

/// What every failing run must end with.
const ERROR_PREFIX: &str = "outbox-relay: error:";

/// Certificates and a cluster that requires TLS and a password.
struct Setup {
    cluster: PgCluster,
    certs: Certs,
    _dir: tempfile::TempDir,
}

async fn setup() -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let certs = Certs::generate(dir.path())?;
    let cluster = PgCluster::builder()
        .tls(certs.server_cert(), certs.server_key(), Some(&certs.ca()))
        .access(PgAccess::PasswordOverTls)
        .log(common::log_path(&format!(
            "pg_tls-postgres-{}",
            random_suffix()
        )))
        .start()
        .await?;
    Ok(Setup {
        cluster,
        certs,
        _dir: dir,
    })
}

/// `url?sslmode=MODE` plus `sslrootcert=CA` when given.
fn tls_url(url: &str, mode: &str, ca: Option<&Path>) -> String {
    match ca {
        Some(ca) => format!("{url}?sslmode={mode}&sslrootcert={}", ca.display()),
        None => format!("{url}?sslmode={mode}"),
    }
}

/// The last line of stderr that is not blank.
fn last_line(run: &Exited) -> &str {
    run.stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// One start that must fail: what to run and what its error must say.
struct Case {
    name: &'static str,
    url: String,
    /// Lower case; looked for in the last line of stderr, lowered.
    expect: &'static str,
}

/// Runs `case` as `outbox-relay` (the default `run`, against a broker
/// address nothing listens on: the database comes first) and as
/// `outbox-relay migrate`, both with `--connect-timeout 20s`; returns what
/// went against the contract.
async fn check_refusal(case: &Case, password: &str) -> Result<Vec<String>> {
    let brokers = format!("127.0.0.1:{}", free_port()?);
    let run_args = [
        "--database-url",
        &case.url,
        "--brokers",
        &brokers,
        "--http-listen",
        "127.0.0.1:0",
        "--connect-timeout",
        "20s",
    ];
    let migrate_args = [
        "migrate",
        "--database-url",
        &case.url,
        "--connect-timeout",
        "20s",
    ];
    let mut failures = Vec::new();
    for (command, args) in [("run", &run_args[..]), ("migrate", &migrate_args[..])] {
        let what = format!("{} ({command})", case.name);
        let started = Instant::now();
        let run = run_relay_to_exit(
            &format!("pg_tls-{}-{command}", case.name.replace(' ', "-")),
            args,
            Duration::from_secs(40),
        )
        .await?;
        let took = started.elapsed();
        let last = last_line(&run);
        println!("{what}: {} after {took:?}: {last}", run.status);
        if run.status.success() {
            failures.push(format!("{what}: exited successfully"));
        }
        if took >= QUICK {
            failures.push(format!(
                "{what}: took {took:?} (limit {QUICK:?}): retried a permanent failure?"
            ));
        }
        if !last.starts_with(ERROR_PREFIX) {
            failures.push(format!(
                "{what}: last line of stderr does not start with {ERROR_PREFIX:?}: {last:?}"
            ));
        }
        if !last.to_lowercase().contains(case.expect) {
            failures.push(format!(
                "{what}: last line of stderr does not say {:?}: {last:?}",
                case.expect
            ));
        }
        if run.stdout.contains(password) || run.stderr.contains(password) {
            failures.push(format!("{what}: the password shows in the output"));
        }
    }
    Ok(failures)
}

#[tokio::test]
async fn migrate_works_over_verify_full_tls() -> Result<()> {
    let s = setup().await?;
    let url = tls_url(
        &s.cluster.superuser_url("postgres"),
        "verify-full",
        Some(&s.certs.ca()),
    );
    let run = run_relay_to_exit(
        "pg_tls-migrate",
        &[
            "migrate",
            "--database-url",
            &url,
            "--connect-timeout",
            "20s",
        ],
        Duration::from_secs(60),
    )
    .await?;
    assert!(
        run.status.success(),
        "outbox-relay migrate over TLS failed: {}\n{}",
        run.stderr,
        run.stdout
    );
    for out in [&run.stdout, &run.stderr] {
        assert!(
            !out.contains(s.cluster.password()),
            "the password shows in the output:\n{out}"
        );
    }
    // The server takes nothing but TLS, so the schema came over TLS.
    let mut admin = s.cluster.admin().await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regnamespace('outbox') IS NOT NULL")
        .fetch_one(&mut admin)
        .await?;
    assert!(exists, "no outbox schema after outbox-relay migrate");
    Ok(())
}

#[tokio::test]
async fn refusals_end_the_start_at_once_with_their_reason() -> Result<()> {
    let s = setup().await?;
    let password = s.cluster.password().to_owned();
    let ca = s.certs.ca();
    let good = |db: &str| s.cluster.superuser_url(db);
    let cases = [
        Case {
            name: "wrong password",
            url: tls_url(
                &s.cluster.url("postgres", "pw-wrong", "postgres"),
                "verify-full",
                Some(&ca),
            ),
            expect: "password authentication failed",
        },
        Case {
            name: "missing database",
            url: tls_url(&good("no_such_db"), "verify-full", Some(&ca)),
            expect: "does not exist",
        },
        Case {
            // With SCRAM, PostgreSQL does not tell a missing role from a
            // wrong password.
            name: "missing role",
            url: tls_url(
                &s.cluster.url("no_such_role", &password, "postgres"),
                "verify-full",
                Some(&ca),
            ),
            expect: "password authentication failed",
        },
        Case {
            name: "tls required",
            url: tls_url(&good("postgres"), "disable", None),
            expect: "no encryption",
        },
        Case {
            name: "wrong ca",
            url: tls_url(&good("postgres"), "verify-full", Some(&s.certs.other_ca())),
            expect: "certificate",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        failures.extend(check_refusal(case, &password).await?);
    }

    // The same server with TLS switched off, a client that requires it.
    s.cluster.set_ssl(false).await?;
    let refused = Case {
        name: "tls refused",
        url: tls_url(&good("postgres"), "require", None),
        expect: "does not support tls",
    };
    failures.extend(check_refusal(&refused, &password).await?);

    assert!(
        failures.is_empty(),
        "start-up refusals against the contract:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn a_closed_port_is_retried_then_called_connection_refused() -> Result<()> {
    // Nothing listens on this port.
    let port = free_port()?;
    let password = format!("pw-{}", random_suffix());
    let url = format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres?sslmode=require");
    let started = Instant::now();
    let run = run_relay_to_exit(
        "pg_tls-closed-port",
        &["migrate", "--database-url", &url, "--connect-timeout", "2s"],
        Duration::from_secs(30),
    )
    .await?;
    let took = started.elapsed();
    let last = last_line(&run);
    println!("closed port: {} after {took:?}: {last}", run.status);
    assert!(
        !run.status.success(),
        "exited successfully:\n{}",
        run.stderr
    );
    assert!(
        took >= Duration::from_millis(1500),
        "gave up after {took:?}: a closed port should be retried for --connect-timeout (2s)"
    );
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} with --connect-timeout 2s"
    );
    assert!(last.starts_with(ERROR_PREFIX), "last line: {last:?}");
    assert!(
        last.to_lowercase().contains("connection refused"),
        "last line should say connection refused: {last:?}"
    );
    for out in [&run.stdout, &run.stderr] {
        assert!(
            !out.contains(&password),
            "the password shows in the output:\n{out}"
        );
    }
    Ok(())
}
