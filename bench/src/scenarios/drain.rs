//! (2) and (5): one relay process draining a pre-loaded backlog, for its
//! throughput and its peak memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use serde::Serialize;

use super::{progress, Ctx};
use crate::db::{self, Db, Sizes};
use crate::kafka;
use crate::profile::{Profile, Sampler};
use crate::relay::{metric, Relay};

/// One drain of a pre-loaded backlog by one relay process.
#[derive(Debug, Clone, Serialize)]
pub struct DrainResult {
    pub messages: u64,
    pub load_seconds: f64,
    /// From the relay answering /healthz to no pending row left.
    pub drain_seconds: f64,
    pub rate: f64,
    /// Relay start to /healthz 200.
    pub startup_seconds: f64,
    /// VmHWM of the relay process at the end of the drain.
    pub peak_rss_kib: u64,
    pub published_total: f64,
    pub failed_total: f64,
    pub batches: f64,
    /// Sum of the relay's own batch timings.
    pub batch_seconds_sum: f64,
    /// Distinct messages read back from the topic.
    pub records_on_broker: usize,
    /// `outbox.message` after the load and after the drain.
    pub table_loaded: Sizes,
    pub table_drained: Sizes,
    /// Where the time went.
    pub profile: Profile,
    pub relay_log: PathBuf,
}

/// A finished drain and its database, kept for the table-health
/// measurement (the caller drops it).
pub struct Drained {
    pub result: DrainResult,
    pub db: Db,
}

impl Serialize for Drained {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.result.serialize(s)
    }
}

/// Loads `n` messages into a fresh database and drains them with one
/// relay; the database is dropped on failure, kept (in `Drained`) on
/// success.
pub async fn drain(ctx: &Ctx, n: u64) -> Result<Drained> {
    let name = format!("drain_{n}");
    let db = ctx
        .server
        .fresh_db(&format!("outbox_bench_{name}"), 4)
        .await?;
    match drain_in(ctx, &db, n, &name).await {
        Ok(result) => Ok(Drained { result, db }),
        Err(e) => {
            ctx.server.drop_db(db).await;
            Err(e)
        }
    }
}

async fn drain_in(ctx: &Ctx, db: &Db, n: u64, name: &str) -> Result<DrainResult> {
    let topic = ctx.fresh_topic(name).await?;
    let load = db::load(db.pool(), &topic, 0, n).await?;
    db::settle(db.pool()).await?;
    let table_loaded = db::sizes(db.pool()).await?;
    progress(format!(
        "drain {n}: loaded in {:.1}s; starting the relay",
        load.as_secs_f64()
    ));

    let spawned = Instant::now();
    let (mut relay, ready) =
        Relay::start(&ctx.spec("notify", &[]), db.url(), &ctx.log(name)).await?;
    let sampler = Sampler::start(db.pool().clone(), relay.pid());
    let done = db::wait_drained(db.pool(), &mut relay, ctx.drain_timeout).await;
    let profile = sampler.finish().await?;
    let done = done?;
    let peak_rss_kib = relay.peak_rss_kib()?;
    let metrics = relay.metrics().await?;
    let log = relay.log().to_owned();
    relay.stop().await?;

    let counts = db::status_counts(db.pool()).await?;
    let unfinished: i64 = counts
        .iter()
        .filter(|(s, _)| s == "pending" || s == "dead")
        .map(|(_, c)| *c)
        .sum();
    ensure!(
        unfinished == 0,
        "drain {n}: messages left unpublished: {counts:?}"
    );
    let records_on_broker = ctx
        .verify_on_broker(&topic, n, &format!("drain {n}"))
        .await?;
    kafka::delete_topic(&ctx.brokers, &topic).await;
    let table_drained = db::sizes(db.pool()).await?;

    let drain_seconds = done.duration_since(ready).as_secs_f64();
    let r = DrainResult {
        messages: n,
        load_seconds: load.as_secs_f64(),
        drain_seconds,
        rate: n as f64 / drain_seconds,
        startup_seconds: ready.duration_since(spawned).as_secs_f64(),
        peak_rss_kib,
        published_total: metric(&metrics, "outbox_relay_published_total").unwrap_or(0.0),
        failed_total: metric(&metrics, "outbox_relay_failed_total").unwrap_or(0.0),
        batches: metric(&metrics, "outbox_relay_batch_seconds_count").unwrap_or(0.0),
        batch_seconds_sum: metric(&metrics, "outbox_relay_batch_seconds_sum").unwrap_or(0.0),
        records_on_broker,
        table_loaded,
        table_drained,
        profile,
        relay_log: log,
    };
    progress(format!(
        "drain {n}: {:.2}s = {:.0} msg/s, {:.0} batches of {:.1} ms avg, peak RSS {} KiB",
        r.drain_seconds,
        r.rate,
        r.batches,
        1e3 * r.batch_seconds_sum / r.batches.max(1.0),
        r.peak_rss_kib
    ));
    progress(format!("drain {n}: {}", r.profile.summary()));
    Ok(r)
}
