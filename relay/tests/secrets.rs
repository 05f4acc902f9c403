//! Secrets stay out of everything the relay prints or serves: `--help`,
//! log lines at debug level (librdkafka's configuration dump included),
//! start-up errors, `/healthz` and `/metrics`, with the broker up and
//! down.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use common::{Broker, Storage, TestDb};
use outbox_testkit::http_get;

/// A secret of each kind, unique to this run so no other text can match.
struct Secrets {
    db: String,
    sasl: String,
    key: String,
}

impl Secrets {
    fn new() -> Self {
        let tag = common::random_suffix();
        Secrets {
            db: format!("dbpw-{tag}"),
            sasl: format!("saslpw-{tag}"),
            key: format!("keypw-{tag}"),
        }
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for secret in [&self.db, &self.sasl, &self.key] {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows the secret {secret}:\n{text}"
            );
        }
    }
}

/// The scratch database's URL with a password added (the test server
/// trusts local connections, so any password is accepted).
fn with_password(url: &str, password: &str) -> String {
    url.replacen("://postgres@", &format!("://postgres:{password}@"), 1)
}

#[test]
fn help_hides_environment_values() -> Result<()> {
    let s = Secrets::new();
    let mut cmd = Command::new(common::relay_bin());
    common::isolate_env(&mut cmd);
    let out = cmd
        .arg("--help")
        .env(
            "DATABASE_URL",
            format!("postgres://app:{}@db.example/orders", s.db),
        )
        .env("OUTBOX_KAFKA", format!("sasl.password={}", s.sasl))
        .output()?;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DATABASE_URL"), "{text}");
    s.assert_absent("--help", &text);
    Ok(())
}

#[tokio::test]
async fn a_run_with_secrets_prints_none() -> Result<()> {
    let s = Secrets::new();
    let db = TestDb::new().await?;
    assert!(
        db.url.contains("://postgres@"),
        "the test expects a password-less scratch URL, got {}",
        db.url
    );
    let url = with_password(&db.url, &s.db);
    let topic = common::unique_topic("secrets");
    let mut broker = Broker::start_new("secrets-broker", Storage::Sqlite).await?;
    broker.create_topic(&topic, 3).await?;

    // Secrets in the URL and in OUTBOX_KAFKA, whose first value holds a
    // comma of its own, and librdkafka's own debug output (`conf` dumps
    // the configuration it was given).
    let mut cmd = common::relay_command(&url, &broker.addr(), &[]);
    cmd.env(
        "OUTBOX_KAFKA",
        format!(
            "debug=broker,conf,sasl.password={},sasl.username=relay,ssl.key.password={}",
            s.sasl, s.key
        ),
    );
    cmd.env("RUST_LOG", "debug");
    let mut relay = common::Relay::spawn_command("secrets-relay", &mut cmd)?;
    let http = relay.http_addr().await?;
    let ids = db.enqueue_numbered(&topic, 20, 4).await?;
    db.wait_all_published(ids.len() as i64, Duration::from_secs(30))
        .await?;
    let (_, healthy) = http_get(&http, "/healthz").await?;
    let (_, metrics) = http_get(&http, "/metrics").await?;

    // Errors too: the broker goes away while the relay runs.
    broker.stop();
    db.enqueue_numbered(&topic, 5, 1).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, unhealthy) = http_get(&http, "/healthz").await?;
    // With the broker gone, stopping waits up to 5 s for each batch in
    // flight (4) and 5 s more for the producer's flush.
    relay.terminate(Duration::from_secs(40)).await?;

    let output = relay.output();
    assert!(
        output.contains("relay started"),
        "the relay did not start:\n{output}"
    );
    s.assert_absent("the relay's output", &output);
    s.assert_absent("/healthz", &healthy);
    s.assert_absent("/healthz with the broker down", &unhealthy);
    s.assert_absent("/metrics", &metrics);
    Ok(())
}

#[tokio::test]
async fn start_up_errors_hide_the_password() -> Result<()> {
    let s = Secrets::new();
    let db = TestDb::new().await?;
    // A database that does not exist: PostgreSQL refuses at once.
    let url = with_password(&db.url, &s.db);
    let (base, _) = url.rsplit_once('/').expect("a database path");
    let missing = format!("{base}/no_such_db_{}", common::random_suffix());
    let exited = common::run_relay_to_exit(
        "secrets-missing-db",
        &[
            "--database-url",
            &missing,
            "--kafka",
            &format!("sasl.password={}", s.sasl),
            "--http-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(30),
    )
    .await?;
    assert!(!exited.status.success());
    assert!(
        exited.stderr.contains("does not exist"),
        "{}",
        exited.stderr
    );
    assert!(exited.stderr.contains("postgres:***@"), "{}", exited.stderr);
    s.assert_absent("the start-up error", &exited.stderr);
    s.assert_absent("stdout", &exited.stdout);

    // A --kafka value that is not KEY=VALUE but holds a secret.
    let exited = common::run_relay_to_exit(
        "secrets-bad-kafka",
        &[
            "--database-url",
            &url,
            "--kafka",
            &format!("sasl.password:{}", s.sasl),
        ],
        Duration::from_secs(30),
    )
    .await?;
    assert!(!exited.status.success());
    assert!(exited.stderr.contains("KEY=VALUE"), "{}", exited.stderr);
    s.assert_absent("the --kafka error", &exited.stderr);
    Ok(())
}
