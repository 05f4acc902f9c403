//! The example config file in docs/relay.md works as written: zstd,
//! SASL_SSL with SCRAM and a CA file are all accepted by the relay's
//! librdkafka (before TLS, SASL and zstd were compiled in, each of these
//! stopped the relay at start), and the relay starts with it.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{Relay, TestDb};
use outbox_testkit::tls::Certs;

/// The TOML block that follows "An example file" in docs/relay.md.
fn example_from_docs() -> Result<String> {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/relay.md"))?;
    let after = docs
        .split_once("An example file")
        .context("docs/relay.md has no example file")?
        .1;
    let block = after
        .split_once("```toml\n")
        .context("no ```toml block after the example's heading")?
        .1;
    Ok(block
        .split_once("```")
        .context("unterminated toml block")?
        .0
        .to_owned())
}

#[tokio::test]
async fn the_documented_example_config_starts_a_relay() -> Result<()> {
    let example = example_from_docs()?;
    for setting in ["zstd", "SASL_SSL", "SCRAM-SHA-512", "ssl.ca.location"] {
        assert!(example.contains(setting), "the example lost {setting}");
    }
    // The CA files it names are the deployment's; point them at real ones.
    let dir = tempfile::tempdir()?;
    let certs = Certs::generate(dir.path())?;
    let ca = certs.ca().display().to_string();
    let config = example
        .replace("/etc/outbox/kafka-ca.pem", &ca)
        .replace("/etc/outbox/db-ca.pem", &ca);
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, &config)?;

    // The example's database and brokers are the deployment's too: the
    // flag points the relay at a scratch database (flags beat the file);
    // its brokers stay unreachable, which the relay waits out.
    let db = TestDb::new().await?;
    let mut cmd = Command::new(common::relay_bin());
    common::isolate_env(&mut cmd);
    cmd.arg("--config")
        .arg(&path)
        .args(["--database-url", &db.url])
        .args(["--http-listen", "127.0.0.1:0"]);
    let mut relay = Relay::spawn_command("example-config", &mut cmd)?;
    relay.http_addr().await.with_context(|| {
        format!(
            "the relay did not start with the example config:\n{}",
            relay.output()
        )
    })?;
    let output = relay.output();
    for refusal in [
        "not available at build time",
        "No provider for SASL",
        "cannot create the Kafka producer",
    ] {
        assert!(!output.contains(refusal), "{refusal}:\n{output}");
    }
    let status = relay.terminate(Duration::from_secs(20)).await?;
    assert!(status.success(), "exit {status}:\n{}", relay.output());
    Ok(())
}
