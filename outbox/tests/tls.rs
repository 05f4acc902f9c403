//! The library over TLS: a pool that connects with `sslmode=verify-full`,
//! `verify-ca` or `require` (or with a client certificate instead of a
//! password) to a PostgreSQL that accepts nothing else migrates, enqueues
//! and commits as over plain TCP, on a session that really is encrypted;
//! a server whose certificate the client's CA did not sign is refused,
//! saying so.
//!
//! Each test starts a PostgreSQL of its own (`outbox_testkit::PgCluster`)
//! with certificates it generates (`outbox_testkit::tls::Certs`).

use std::path::Path;

use anyhow::{ensure, Result};
use outbox::{Message, Outbox};
use outbox_testkit::tls::Certs;
use outbox_testkit::{PgAccess, PgCluster};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// Certificates and a cluster that uses them.
struct Setup {
    cluster: PgCluster,
    certs: Certs,
    _dir: tempfile::TempDir,
}

async fn setup(access: PgAccess) -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let certs = Certs::generate(dir.path())?;
    let cluster = PgCluster::builder()
        .tls(certs.server_cert(), certs.server_key(), Some(&certs.ca()))
        .access(access)
        .start()
        .await?;
    Ok(Setup {
        cluster,
        certs,
        _dir: dir,
    })
}

/// `url` with `?params` added, paths spelled out.
fn with_params(url: &str, params: &[(&str, &Path)], sslmode: &str) -> String {
    let mut url = format!("{url}?sslmode={sslmode}");
    for (name, path) in params {
        url.push_str(&format!("&{name}={}", path.display()));
    }
    url
}

/// Migrates, enqueues one message in a transaction and commits through a
/// pool on `url`; checks the row is there and the session is encrypted.
async fn enqueue_over(url: &str) -> Result<PgPool> {
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    outbox::migrate(&pool).await?;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await?;
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await?;
    ensure!(encrypted, "the session on {url} is not encrypted");
    let id = outbox
        .enqueue(&mut *tx, Message::new("orders", "over TLS").key("order-1"))
        .await?;
    tx.commit().await?;
    let (topic, payload): (String, Vec<u8>) =
        sqlx::query_as("SELECT topic, payload FROM outbox.message WHERE id = $1")
            .bind(id.0)
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("orders", &b"over TLS"[..])
    );
    Ok(pool)
}

#[tokio::test]
async fn verify_full_enqueues_over_an_encrypted_session() -> Result<()> {
    let s = setup(PgAccess::PasswordOverTls).await?;
    let url = with_params(
        &s.cluster.superuser_url("postgres"),
        &[("sslrootcert", &s.certs.ca())],
        "verify-full",
    );
    let pool = enqueue_over(&url).await?;
    // Every connection of the pool is encrypted, not just the first.
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.backend_type = 'client backend' AND a.client_addr IS NOT NULL AND NOT s.ssl",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(plain, 0, "a TCP session without TLS");
    pool.close().await;

    // The server takes nothing but TLS.
    let plain_url = format!("{}?sslmode=disable", s.cluster.superuser_url("postgres"));
    let err = PgConnection::connect(&plain_url).await.unwrap_err();
    println!("sslmode=disable: {err}");
    assert!(err.to_string().contains("no encryption"), "{err}");
    Ok(())
}

#[tokio::test]
async fn verify_ca_enqueues_over_an_encrypted_session() -> Result<()> {
    let s = setup(PgAccess::PasswordOverTls).await?;
    let url = with_params(
        &s.cluster.superuser_url("postgres"),
        &[("sslrootcert", &s.certs.ca())],
        "verify-ca",
    );
    enqueue_over(&url).await?.close().await;
    Ok(())
}

#[tokio::test]
async fn require_enqueues_over_an_encrypted_session() -> Result<()> {
    let s = setup(PgAccess::PasswordOverTls).await?;
    let url = format!("{}?sslmode=require", s.cluster.superuser_url("postgres"));
    enqueue_over(&url).await?.close().await;
    // `require` encrypts without checking whom it talks to: a CA that
    // signed nothing here does not stop it.
    let url = with_params(
        &s.cluster.superuser_url("postgres"),
        &[("sslrootcert", &s.certs.other_ca())],
        "require",
    );
    PgConnection::connect(&url).await?.close().await?;
    Ok(())
}

#[tokio::test]
async fn client_certificate_signs_in_without_a_password() -> Result<()> {
    let s = setup(PgAccess::ClientCertificate).await?;
    // No password in the URL: the certificate's CN names the role.
    let base = format!(
        "postgres://{}@127.0.0.1:{}/postgres",
        s.certs.client_cn(),
        s.cluster.port()
    );
    let url = with_params(
        &base,
        &[
            ("sslrootcert", &s.certs.ca()),
            ("sslcert", &s.certs.client_cert()),
            ("sslkey", &s.certs.client_key()),
        ],
        "verify-full",
    );
    let pool = enqueue_over(&url).await?;
    let dn: Option<String> =
        sqlx::query_scalar("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await?;
    assert_eq!(dn.as_deref(), Some("/CN=postgres"));
    pool.close().await;

    // Without the certificate, even with the right password, no entry.
    let url = with_params(
        &s.cluster.superuser_url("postgres"),
        &[("sslrootcert", &s.certs.ca())],
        "verify-full",
    );
    let err = PgConnection::connect(&url).await.unwrap_err();
    println!("no client certificate: {err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused() -> Result<()> {
    let s = setup(PgAccess::PasswordOverTls).await?;
    for mode in ["verify-full", "verify-ca"] {
        let url = with_params(
            &s.cluster.superuser_url("postgres"),
            &[("sslrootcert", &s.certs.other_ca())],
            mode,
        );
        let err = PgConnection::connect(&url).await.unwrap_err();
        println!("{mode} with the wrong CA: {err}");
        let text = err.to_string();
        // sqlx passes rustls' refusal on as an I/O error during the
        // handshake, e.g. "invalid peer certificate: UnknownIssuer".
        assert!(
            text.contains("invalid peer certificate"),
            "{mode}: the error should name the certificate problem: {text}"
        );
        assert!(
            !text.contains(s.cluster.password()),
            "{mode}: the password shows in {text}"
        );
    }
    Ok(())
}
