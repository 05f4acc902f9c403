//! (6) Table health: `outbox.message` and its indexes through load, drain,
//! sweep, VACUUM and refill, twice, to show the table stays bounded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde::Serialize;

use super::drain::Drained;
use super::{progress, Ctx};
use crate::db::{self, Db, Sizes};
use crate::kafka;
use crate::relay::Relay;

#[derive(Debug, Clone, Serialize)]
pub struct HealthResult {
    pub messages: u64,
    /// Backlog loaded, before the drain.
    pub loaded: Sizes,
    /// Drained: rows deleted on acknowledgement (the default retention),
    /// their space not yet reclaimed.
    pub drained: Sizes,
    /// After the sweeper of a relay with `--retention 0s` ran (it deletes
    /// what was kept; nothing here, with the default retention).
    pub swept: Sizes,
    /// After `VACUUM outbox.message`.
    pub vacuumed: Sizes,
    /// After loading the same number of messages again.
    pub refilled: Sizes,
    /// Refilled size over first-load size.
    pub growth: f64,
    /// A second cycle: the refill drained, VACUUM, loaded again. Equal to
    /// the first refill when the table stays bounded cycle after cycle.
    pub refilled_again: Sizes,
    /// Second refill over first-load size.
    pub growth_again: f64,
    pub sweep_seconds: f64,
    pub relay_log: PathBuf,
}

/// Measures the table through a sweep, VACUUM and a refill. Continues on
/// the database of the big drain when given one (its backlog is drained,
/// the published rows kept), so the run does not drain a million messages
/// twice; otherwise loads and drains its own.
pub async fn health(ctx: &Ctx, n: u64, drained: Option<&Drained>) -> Result<HealthResult> {
    if let Some(d) = drained {
        return health_in(ctx, &d.db, n, d.result.table_loaded, d.result.table_drained).await;
    }
    let db = ctx.server.fresh_db("outbox_bench_health", 4).await?;
    let result = async {
        let topic = ctx.fresh_topic("health-load").await?;
        db::load(db.pool(), &topic, 0, n).await?;
        let loaded = db::sizes(db.pool()).await?;
        drain_with_relay(ctx, &db, "health_drain").await?;
        ctx.verify_on_broker(&topic, n, "table health").await?;
        kafka::delete_topic(&ctx.brokers, &topic).await;
        let drained = db::sizes(db.pool()).await?;
        health_in(ctx, &db, n, loaded, drained).await
    }
    .await;
    ctx.server.drop_db(db).await;
    result
}

/// Runs a relay with the default settings until `db` has nothing pending.
async fn drain_with_relay(ctx: &Ctx, db: &Db, log: &str) -> Result<()> {
    let (mut relay, _) = Relay::start(&ctx.spec("notify", &[]), db.url(), &ctx.log(log)).await?;
    db::wait_drained(db.pool(), &mut relay, ctx.drain_timeout).await?;
    relay.stop().await
}

async fn health_in(
    ctx: &Ctx,
    db: &Db,
    n: u64,
    loaded: Sizes,
    drained: Sizes,
) -> Result<HealthResult> {
    progress("table health: sweeping with --retention 0s, a sweep every second");
    let started = Instant::now();
    let spec = ctx.spec(
        "notify",
        &["--retention", "0s", "--sweep-schedule", "*/1 * * * * *"],
    );
    let (mut relay, _) = Relay::start(&spec, db.url(), &ctx.log("health_sweep")).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        relay.check_alive()?;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.message")
            .fetch_one(db.pool())
            .await?;
        if left == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "table health: the sweeper left {left} rows after 180s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sweep_seconds = started.elapsed().as_secs_f64();
    let relay_log = relay.log().to_owned();
    relay.stop().await?;

    let swept = db::sizes(db.pool()).await?;
    sqlx::query("VACUUM outbox.message")
        .execute(db.pool())
        .await?;
    let vacuumed = db::sizes(db.pool()).await?;
    // A topic that exists: the second cycle publishes these.
    let refill_topic = ctx.fresh_topic("health-refill").await?;
    db::load(db.pool(), &refill_topic, n, n).await?;
    let refilled = db::sizes(db.pool()).await?;

    progress("table health: a second cycle (drain, VACUUM, load)");
    drain_with_relay(ctx, db, "health_cycle2").await?;
    sqlx::query("VACUUM outbox.message")
        .execute(db.pool())
        .await?;
    kafka::delete_topic(&ctx.brokers, &refill_topic).await;
    db::load(db.pool(), &ctx.topic("health-refill-again"), 2 * n, n).await?;
    let refilled_again = db::sizes(db.pool()).await?;
    let r = HealthResult {
        messages: n,
        loaded,
        drained,
        swept,
        vacuumed,
        refilled,
        growth: refilled.total_bytes as f64 / loaded.total_bytes as f64,
        refilled_again,
        growth_again: refilled_again.total_bytes as f64 / loaded.total_bytes as f64,
        sweep_seconds,
        relay_log,
    };
    progress(format!(
        "table health: loaded {} MiB, drained {} MiB, swept {} MiB, vacuumed {} MiB, \
         refilled {} MiB, refilled again after a second cycle {} MiB",
        loaded.total_bytes >> 20,
        drained.total_bytes >> 20,
        swept.total_bytes >> 20,
        vacuumed.total_bytes >> 20,
        refilled.total_bytes >> 20,
        refilled_again.total_bytes >> 20
    ));
    Ok(r)
}
