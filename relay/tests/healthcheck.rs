//! `outbox-relay healthcheck` answers for a running relay: exit 0 while
//! `/healthz` says 200, non-zero with the reason when it says 503 (the
//! broker is gone) or nothing listens.

mod common;

use std::process::Command;

use anyhow::Result;
use common::{Broker, Relay, Storage, TestDb};

fn healthcheck(listen: &str) -> Result<(bool, String)> {
    let mut cmd = Command::new(common::relay_bin());
    common::isolate_env(&mut cmd);
    let out = cmd
        .args(["healthcheck", "--http-listen", listen])
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test]
async fn healthcheck_follows_healthz() -> Result<()> {
    let db = TestDb::new().await?;
    let mut broker = Broker::start_new("healthcheck-broker", Storage::Memory).await?;
    let relay = Relay::spawn("healthcheck-relay", &db.url, &broker.addr(), &[])?;
    let http = relay.http_addr().await?;

    let (ok, text) = healthcheck(&http)?;
    assert!(ok, "healthy relay reported unhealthy: {text}");
    assert!(text.contains("\"database\":\"ok\""), "{text}");

    broker.stop();
    let (ok, text) = healthcheck(&http)?;
    assert!(!ok, "a relay without its broker reported healthy: {text}");
    assert!(text.contains("unhealthy (503)"), "{text}");

    let closed = format!("127.0.0.1:{}", common::free_port()?);
    let (ok, text) = healthcheck(&closed)?;
    assert!(!ok, "{text}");
    assert!(text.contains("cannot reach the relay"), "{text}");
    Ok(())
}
