//! (2, isolated) What limits the drain: the relay's own statements with no
//! broker, and the raw producer while those statements run beside it.
//!
//! The drain shares two parties with the ceiling's one: PostgreSQL serving
//! the relay's fetch and delete, and the broker fed by a producer. On a
//! machine where they share the cores, the drain cannot beat the slower of
//! the two running side by side; these measurements give both figures in
//! the same run, so a drain near them is limited by the machine, not by
//! the relay between them.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{progress, Ctx};
use crate::db;
use crate::kafka;

/// The relay's statements, as it sends them (its `queries/` files).
const FETCH: &str = include_str!("../../../relay/src/store/queries/fetch_pending.sql");
const DELETE: &str = include_str!("../../../relay/src/store/queries/delete_published.sql");
const DELETE_RUNS: &str =
    include_str!("../../../relay/src/store/queries/delete_published_runs.sql");

/// The relay's defaults: messages per fetch, and marks at once.
const BATCH: i64 = 1000;
const MARKING: usize = 4;

/// The relay's session settings, as `relay/src/connect.rs` sets them (a
/// test below keeps the two the same): they decide the plans the relay's
/// statements run with.
const RELAY_SESSION: [(&str, &str); 5] = [
    ("enable_bitmapscan", "off"),
    ("enable_sort", "off"),
    ("enable_seqscan", "off"),
    ("jit", "off"),
    ("max_parallel_workers_per_gather", "0"),
];

/// Fewest messages loaded for the loop beside the producer: a small run's
/// producer spends most of its window connecting and warming up.
const BESIDE_AT_LEAST: u64 = 250_000;

/// The row the relay decodes for each message: the same columns, decoded
/// into the same types, so the loop's own CPU matches the relay's reading.
#[derive(sqlx::FromRow)]
#[allow(dead_code)] // read to pay for decoding, as the relay does
struct Row {
    seq: i64,
    id: Uuid,
    topic: String,
    msg_key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    header_names: Vec<String>,
    header_values: Vec<Vec<u8>>,
    msg_type: Option<String>,
    created_at: DateTime<Utc>,
    attempts: i32,
}

/// Both isolating measurements.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsResult {
    pub messages: u64,
    /// The relay's fetch + delete loop alone, no broker: msg/s.
    pub statements_alone: f64,
    /// The raw producer (the ceiling's) while the loop runs: msg/s.
    pub producer_beside_statements: f64,
    /// The loop while the raw producer runs, over the producer's run: msg/s.
    pub statements_beside_producer: f64,
    /// The share of the producer's run (set-up included) the loop was
    /// running for; below 1 when the loop ran out of messages first.
    pub overlap: f64,
}

/// Loads `n` messages for the loop to drain alone, then more for it to
/// work on beside the ceiling's producer (`n` records): in a full run
/// enough to outlast it; in a smoke run the producer's set-up and warm-up
/// can outlast them, and the result says so ([`LimitsResult::overlap`]).
pub async fn limits(ctx: &Ctx, n: u64) -> Result<LimitsResult> {
    let db = ctx.server.fresh_db("outbox_bench_limits", 1).await?;
    let result = async {
        let pool = relay_pool(db.url()).await?;
        let r = limits_in(ctx, &pool, n).await;
        pool.close().await;
        r
    }
    .await;
    ctx.server.drop_db(db).await;
    result
}

/// A pool whose sessions are set up as the relay's are
/// (`relay/src/connect.rs`): its plans, not the server's defaults, are
/// what the drain runs.
async fn relay_pool(url: &str) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?.options(RELAY_SESSION);
    Ok(PgPoolOptions::new()
        .max_connections((MARKING + 2) as u32)
        .connect_with(options)
        .await?)
}

async fn limits_in(ctx: &Ctx, pool: &PgPool, n: u64) -> Result<LimitsResult> {
    db::load(pool, "limits", 0, n).await?;
    db::settle(pool).await?;

    let alone = {
        let started = Instant::now();
        statements(pool.clone(), Some(n), None, Arc::default()).await?;
        n as f64 / started.elapsed().as_secs_f64()
    };
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE status = 'pending'")
            .fetch_one(pool)
            .await?;
    ensure!(
        left == 0,
        "the statements alone left {left} of {n} messages pending"
    );
    progress(format!(
        "limits: the relay's statements alone (fetch + delete, no broker): {alone:.0} msg/s"
    ));

    let beside_n = (2 * n).max(BESIDE_AT_LEAST);
    db::load(pool, "limits", n, beside_n).await?;
    // Also clears the index entries of what the first loop deleted, which
    // the next loop's first fetch would otherwise walk.
    db::settle(pool).await?;
    let topic = ctx.fresh_topic("limits").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let beside = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(statements(
        pool.clone(),
        None,
        Some(stop.clone()),
        beside.clone(),
    ));
    let brokers = ctx.brokers.clone();
    let t = topic.clone();
    let from = beside.load(Ordering::Relaxed);
    let window = Instant::now();
    let produced = tokio::task::spawn_blocking(move || kafka::ceiling(&brokers, &t, n)).await?;
    let window = window.elapsed();
    let through = beside.load(Ordering::Relaxed) - from;
    stop.store(true, Ordering::Relaxed);
    let ran = task.await.context("the statement loop panicked")?;
    let produced = produced?;
    let ran = ran?;
    ctx.verify_on_broker(&topic, n + kafka::WARMUP, "limits")
        .await?;
    kafka::delete_topic(&ctx.brokers, &topic).await;
    // A slow start of the producer (connecting, the warm-up) can outlast
    // the messages loaded: the statements' rate is then over their own
    // run, and the report says how much of the producer's they covered.
    let busy = ran.min(window);
    let r = LimitsResult {
        messages: n,
        statements_alone: alone,
        producer_beside_statements: produced.rate(),
        statements_beside_producer: through as f64 / busy.as_secs_f64(),
        overlap: busy.as_secs_f64() / window.as_secs_f64(),
    };
    progress(format!(
        "limits: side by side, the raw producer {:.0} msg/s and the statements {:.0} msg/s",
        r.producer_beside_statements, r.statements_beside_producer
    ));
    Ok(r)
}

/// The relay's database work for a drain, without a broker: fetch a batch
/// of every shard from the cursor, delete it (up to [`MARKING`] deletes at
/// once, each in its own transaction without waiting for the WAL flush,
/// as the relay's marks), repeat. Stops after `limit` messages, when
/// `stop` is set, or when nothing is left. Counts messages fetched, and
/// returns how long it fetched for.
async fn statements(
    pool: PgPool,
    limit: Option<u64>,
    stop: Option<Arc<AtomicBool>>,
    counted: Arc<AtomicU64>,
) -> Result<Duration> {
    let started = Instant::now();
    let mask = vec![0xFF_u8; 32];
    let none_seqs: Vec<i64> = Vec::new();
    let none_keys: Vec<Vec<u8>> = Vec::new();
    let mut after = 0_i64;
    let mut done = 0_u64;
    let mut marks: std::collections::VecDeque<tokio::task::JoinHandle<Result<()>>> =
        Default::default();
    loop {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let want = limit.map_or(BATCH, |l| BATCH.min((l - done) as i64));
        if want == 0 {
            break;
        }
        let rows: Vec<Row> = sqlx::query_as(FETCH)
            .bind(&mask)
            .bind(want)
            .bind(&none_seqs)
            .bind(&none_keys)
            .bind(after)
            .fetch_all(&pool)
            .await
            .context("fetching as the relay does")?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        done += rows.len() as u64;
        counted.fetch_add(rows.len() as u64, Ordering::Relaxed);
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        if marks.len() == MARKING {
            if let Some(oldest) = marks.pop_front() {
                oldest.await??;
            }
        }
        let pool = pool.clone();
        marks.push_back(tokio::spawn(async move {
            let mut tx = pool
                .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                .await?;
            // As the relay's `SeqRuns`: a batch of consecutive seqs (this
            // loop's usual batch, one backlog in every shard) is deleted
            // by range, a scattered one by seq.
            let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
            let delete = if last - first + 1 == seqs.len() as i64 {
                sqlx::query(DELETE_RUNS).bind(vec![first]).bind(vec![last])
            } else {
                sqlx::query(DELETE).bind(&seqs)
            };
            let deleted = delete.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            ensure!(
                deleted as usize == seqs.len(),
                "deleted {deleted} of {} messages fetched",
                seqs.len()
            );
            Ok(())
        }));
    }
    let ran = started.elapsed();
    for m in marks {
        m.await??;
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    /// The loop measures the relay's plans only while its session settings
    /// are the relay's: the list in `relay/src/connect.rs`, read as text.
    #[test]
    fn the_session_settings_are_the_relays() {
        let connect = include_str!("../../../relay/src/connect.rs");
        let start = connect
            .find(".options([")
            .expect("relay/src/connect.rs sets its session options with .options([...])")
            + ".options([".len();
        let end = start + connect[start..].find("])").expect("the options list ends");
        let relays: Vec<(&str, &str)> = connect[start..end]
            .split("),")
            .filter_map(|pair| {
                let (k, v) = pair.trim().trim_start_matches('(').split_once(',')?;
                Some((k.trim().trim_matches('"'), v.trim().trim_matches('"')))
            })
            .collect();
        assert_eq!(super::RELAY_SESSION.to_vec(), relays);
    }
}
