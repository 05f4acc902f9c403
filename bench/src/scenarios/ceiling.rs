//! (1) The ceiling: a raw producer's throughput on a fresh topic, the
//! limit the relay's drain is measured against.

use anyhow::Result;
use serde::Serialize;

use super::{progress, Ctx};
use crate::kafka;

/// The raw producer's throughput.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    pub messages: u64,
    pub seconds: f64,
    pub rate: f64,
}

/// Produces `n` records (after a warm-up) with the raw producer to a fresh
/// topic, checks they all arrived, and deletes the topic.
pub async fn ceiling(ctx: &Ctx, n: u64, label: &str) -> Result<CeilingResult> {
    let topic = ctx.fresh_topic(&format!("ceiling-{label}")).await?;
    let brokers = ctx.brokers.clone();
    let t = topic.clone();
    let c = tokio::task::spawn_blocking(move || kafka::ceiling(&brokers, &t, n)).await??;
    ctx.verify_on_broker(&topic, n + kafka::WARMUP, "ceiling")
        .await?;
    kafka::delete_topic(&ctx.brokers, &topic).await;
    let r = CeilingResult {
        messages: n,
        seconds: c.elapsed.as_secs_f64(),
        rate: c.rate(),
    };
    progress(format!(
        "ceiling ({label}): {n} records in {:.2}s = {:.0} msg/s",
        r.seconds, r.rate
    ));
    Ok(r)
}
