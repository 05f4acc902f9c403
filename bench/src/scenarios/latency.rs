//! (4) Commit-to-consumed latency at a steady rate, through the relay
//! (notify or poll wake-up), beside the broker's own produce-to-consume
//! latency at that rate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use outbox::{Message, Outbox};
use serde::Serialize;

use super::{progress, Ctx};
use crate::db::Db;
use crate::kafka::{self, ArrivalRecorder};
use crate::relay::Relay;
use crate::workload;

/// Percentiles of a latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(mut v: Vec<Duration>) -> Result<Self> {
        ensure!(!v.is_empty(), "no latency samples");
        v.sort_unstable();
        let at = |p: f64| {
            let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1e3
        };
        Ok(Percentiles {
            samples: v.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: v[v.len() - 1].as_secs_f64() * 1e3,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub wakeup: &'static str,
    pub target_rate: u32,
    /// Messages per transaction.
    pub per_tx: u32,
    /// Commits per second actually reached.
    pub achieved_rate: f64,
    /// Largest delay between a transaction's due time and its start: the
    /// database's lag behind the schedule.
    pub max_schedule_lag_ms: f64,
    pub latency: Percentiles,
    /// Commit to the relay handing the record to its producer (the
    /// record's CreateTime; millisecond resolution): the database and the
    /// relay's part.
    pub to_producer: Option<Percentiles>,
    /// The producer's timestamp to consumed: the broker's part, as the
    /// broker-alone probe measures it.
    pub producer_to_consumed: Option<Percentiles>,
    pub duplicates: usize,
    pub relay_log: PathBuf,
}

/// Messages sent before the measured ones, not counted: they pay for
/// connection set-up and the topic metadata look-up.
fn warmup(rate: u32) -> u64 {
    (rate as u64 / 2).max(20)
}

/// The load of one latency run.
#[derive(Debug, Clone)]
pub struct LatencyLoad {
    /// The relay's `--wakeup`.
    pub wakeup: &'static str,
    /// Messages per second.
    pub rate: u32,
    /// Messages per transaction.
    pub per_tx: u32,
    /// Measured seconds.
    pub secs: f64,
    /// Connections committing.
    pub clients: usize,
    /// Tells repeated runs apart (their databases and topics).
    pub tag: String,
}

/// One latency run on a fresh database (dropped after) and topic.
pub async fn latency(ctx: &Ctx, load: LatencyLoad) -> Result<LatencyResult> {
    let name = format!("latency_{}_{}_{}", load.wakeup, load.rate, load.tag);
    let db = ctx
        .server
        .fresh_db(&format!("outbox_bench_{name}"), load.clients as u32)
        .await?;
    let result = latency_in(ctx, &db, &name, &load).await;
    ctx.server.drop_db(db).await;
    result
}

async fn latency_in(ctx: &Ctx, db: &Db, name: &str, load: &LatencyLoad) -> Result<LatencyResult> {
    let LatencyLoad {
        wakeup,
        rate,
        per_tx,
        secs,
        clients,
        tag: _,
    } = *load;
    let topic = ctx.fresh_topic(name).await?;
    let consumer = ArrivalRecorder::start(&ctx.brokers, &topic, ctx.partitions)?;
    let (mut relay, _) = Relay::start(&ctx.spec(wakeup, &[]), db.url(), &ctx.log(name)).await?;

    let skip = warmup(rate);
    let measured = (rate as f64 * secs).round() as u64;
    let total = skip + measured;
    let per_tx = per_tx.max(1) as u64;
    let transactions = total.div_ceil(per_tx);
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let period = per_tx as f64 / rate as f64;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let pool = db.pool().clone();
        let topic = topic.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let outbox = Outbox::new();
            let mut commits = Vec::new();
            let mut max_lag = Duration::ZERO;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= transactions {
                    break;
                }
                let due = start + Duration::from_secs_f64(j as f64 * period);
                tokio::time::sleep_until(due).await;
                max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
                let first = j * per_tx;
                let last = (first + per_tx).min(total);
                let mut tx = pool.begin().await?;
                let ids = outbox
                    .enqueue_all(
                        &mut *tx,
                        (first..last).map(|i| {
                            Message::new(&topic, workload::payload(i)).key(workload::key(i))
                        }),
                    )
                    .await?;
                tx.commit().await?;
                let at = Instant::now();
                commits.extend(
                    (first..last)
                        .zip(ids)
                        .map(|(i, id)| (i, id.to_string(), at)),
                );
            }
            Ok::<_, anyhow::Error>((commits, max_lag))
        }));
    }
    let mut commits = Vec::with_capacity(total as usize);
    let mut max_lag = Duration::ZERO;
    for t in tasks {
        let (c, lag) = t.await??;
        commits.extend(c);
        max_lag = max_lag.max(lag);
    }
    let arrived = consumer
        .wait_for(total as usize, Duration::from_secs(30))
        .await;
    relay.check_alive()?;
    let relay_log = relay.log().to_owned();
    relay.stop().await?;
    let duplicates = consumer.duplicates();
    let arrivals = consumer.finish_with_produce_times()?;
    if !arrived {
        let missing = commits
            .iter()
            .filter(|(_, id, _)| !arrivals.contains_key(id))
            .count();
        bail!("latency {wakeup} @{rate}/s: {missing} of {total} committed messages never arrived within 30s");
    }
    kafka::delete_topic(&ctx.brokers, &topic).await;

    commits.sort_by_key(|c| c.0);
    let measured_commits: Vec<_> = commits.iter().filter(|c| c.0 >= skip).collect();
    let first = measured_commits.first().context("no commits")?.2;
    let last = measured_commits.last().context("no commits")?.2;
    let achieved_rate = measured_commits.len().saturating_sub(1) as f64
        / last.duration_since(first).as_secs_f64().max(1e-9);
    let latencies = measured_commits
        .iter()
        .map(|(_, id, committed)| arrivals[id].at.saturating_duration_since(*committed))
        .collect();
    // Where each message's time went: before the producer had it, and after.
    let (to_producer, after): (Vec<Duration>, Vec<Duration>) = measured_commits
        .iter()
        .filter_map(|(_, id, committed)| {
            let a = arrivals[id];
            let produced = a.at.checked_sub(a.since_produced?)?;
            Some((
                produced.saturating_duration_since(*committed),
                a.since_produced?,
            ))
        })
        .unzip();
    let r = LatencyResult {
        wakeup,
        target_rate: rate,
        per_tx: per_tx as u32,
        achieved_rate,
        max_schedule_lag_ms: max_lag.as_secs_f64() * 1e3,
        latency: Percentiles::of(latencies)?,
        to_producer: Percentiles::of(to_producer).ok(),
        producer_to_consumed: Percentiles::of(after).ok(),
        duplicates,
        relay_log,
    };
    let part = |p: Option<Percentiles>| {
        p.map_or("-".to_owned(), |p| {
            format!("p50 {:.0} / p99 {:.0}", p.p50_ms, p.p99_ms)
        })
    };
    progress(format!(
        "latency {wakeup} @{rate}/s: achieved {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (commit→producer {}, producer→consumed {})",
        r.achieved_rate, r.latency.p50_ms, r.latency.p99_ms, r.latency.max_ms,
        part(r.to_producer), part(r.producer_to_consumed)
    ));
    Ok(r)
}

/// The raw broker path at the same rate: produce (relay producer settings)
/// to consume, no database.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub rate: u32,
    pub latency: Percentiles,
}

/// Produces at `rate` for `secs` with the relay's producer settings and
/// times each record to its arrival at a consumer.
pub async fn broker_latency(ctx: &Ctx, rate: u32, secs: f64, tag: &str) -> Result<ProbeResult> {
    let topic = ctx.fresh_topic(&format!("probe-{rate}-{tag}")).await?;
    let consumer = ArrivalRecorder::start(&ctx.brokers, &topic, ctx.partitions)?;
    let skip = warmup(rate);
    let total = skip + (rate as f64 * secs).round() as u64;
    let brokers = ctx.brokers.clone();
    let t = topic.clone();
    let sent = tokio::task::spawn_blocking(move || {
        kafka::paced_produce(&brokers, &t, rate as f64, total, "probe")
    })
    .await??;
    let arrived = consumer
        .wait_for(total as usize, Duration::from_secs(30))
        .await;
    let arrivals = consumer.finish()?;
    ensure!(
        arrived,
        "broker latency @{rate}/s: {} of {total} records arrived",
        arrivals.len()
    );
    kafka::delete_topic(&ctx.brokers, &topic).await;
    let latencies = (skip..total)
        .map(|i| {
            let id = format!("probe-{i}");
            arrivals[&id].saturating_duration_since(sent[&id])
        })
        .collect();
    let r = ProbeResult {
        rate,
        latency: Percentiles::of(latencies)?,
    };
    progress(format!(
        "broker alone @{rate}/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.latency.p50_ms, r.latency.p99_ms, r.latency.max_ms
    ));
    Ok(r)
}
