//! The measurements. Each creates what it needs (a fresh database, a fresh
//! topic, a relay process), measures, checks that nothing went missing,
//! and cleans up. A failed check is an error, never a low number.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use outbox::{Message, Outbox};
use serde::Serialize;

use crate::db::{self, Db, Server, Sizes};
use crate::kafka::{self, ArrivalRecorder};
use crate::profile::{Profile, Sampler};
use crate::relay::{metric, Relay, RelaySpec};
use crate::workload;

/// What every scenario shares.
pub struct Ctx {
    pub server: Server,
    pub brokers: String,
    pub partitions: i32,
    pub relay: RelaySpec,
    pub run_id: String,
    pub log_dir: PathBuf,
    /// How long a drain may take before it counts as failed.
    pub drain_timeout: Duration,
}

impl Ctx {
    /// A fresh topic name for `what`.
    fn topic(&self, what: &str) -> String {
        format!("bench-{}-{what}", self.run_id)
    }

    async fn fresh_topic(&self, what: &str) -> Result<String> {
        let topic = self.topic(what);
        kafka::create_topic(&self.brokers, &topic, self.partitions).await?;
        Ok(topic)
    }

    /// Reads `topic` back and fails unless it holds `n` distinct messages.
    async fn verify_on_broker(&self, topic: &str, n: u64, what: &str) -> Result<usize> {
        let found = kafka::distinct_ids(
            &self.brokers,
            topic,
            self.partitions,
            n as usize,
            Duration::from_secs(10),
        )
        .await?;
        ensure!(
            found >= n as usize,
            "{what}: reading the topic back found {found} of {n} messages"
        );
        Ok(found)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    fn spec(&self, wakeup: &'static str, extra: &[&str]) -> RelaySpec {
        let mut spec = self.relay.clone();
        spec.wakeup = wakeup;
        spec.args.extend(extra.iter().map(|s| s.to_string()));
        spec
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("   {}", msg.as_ref());
}

// ---------------------------------------------------------------------------
// 1. Ceiling

/// The raw producer's throughput.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    pub messages: u64,
    pub seconds: f64,
    pub rate: f64,
}

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

// ---------------------------------------------------------------------------
// 2 and 5. Draining a backlog (throughput and memory)

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

// ---------------------------------------------------------------------------
// 3. Write overhead

#[derive(Debug, Clone, Serialize)]
pub struct OverheadResult {
    pub clients: usize,
    pub seconds_per_variant: f64,
    pub rounds: usize,
    pub alone_tx: u64,
    pub with_outbox_tx: u64,
    pub alone_rate: f64,
    pub with_outbox_rate: f64,
    /// alone / with outbox: how much slower the outbox makes the write.
    pub ratio: f64,
    /// Diagnostic: with the outbox message while a relay waits for work,
    /// so every commit notifies (the worst case for writers).
    pub waiting_tx: u64,
    pub waiting_rate: f64,
    pub waiting_ratio: f64,
    /// Floor: the order plus a second INSERT of the same width into a
    /// table with only a primary key: what any second statement costs.
    pub floor_tx: u64,
    pub floor_rate: f64,
    pub floor_ratio: f64,
}

pub async fn overhead(ctx: &Ctx, clients: usize, secs: f64) -> Result<OverheadResult> {
    let db = ctx
        .server
        .fresh_db("outbox_bench_overhead", clients as u32)
        .await?;
    let result = overhead_in(ctx, &db, clients, secs).await;
    ctx.server.drop_db(db).await;
    result
}

/// Registers (or removes) a relay that waits for work, as an idle relay in
/// `--wakeup notify` mode does: while it is there, every insert notifies.
async fn set_relay_waiting(db: &Db, waiting: bool) -> Result<()> {
    let id = uuid::Uuid::nil();
    if waiting {
        sqlx::query(
            "INSERT INTO outbox.relay (id, name, waiting_until) \
             VALUES ($1, 'bench', now() + interval '1 hour')",
        )
        .bind(id)
        .execute(db.pool())
        .await?;
    } else {
        sqlx::query("DELETE FROM outbox.relay WHERE id = $1")
            .bind(id)
            .execute(db.pool())
            .await?;
    }
    Ok(())
}

/// What each client's transaction writes besides its order row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Extra {
    Nothing,
    OutboxMessage,
    PlainRow,
}

async fn overhead_in(ctx: &Ctx, db: &Db, clients: usize, secs: f64) -> Result<OverheadResult> {
    sqlx::query(
        "CREATE TABLE bench_order (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         customer bigint NOT NULL, sku text NOT NULL, qty int NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(db.pool())
    .await?;
    sqlx::query(
        "CREATE TABLE bench_plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         topic text NOT NULL, msg_key bytea, payload bytea, \
         created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(db.pool())
    .await?;
    let topic = ctx.topic("orders");
    // Alternate the variants in rounds, so drift from other work on the
    // machine hits all alike.
    let rounds = 3;
    let slice = Duration::from_secs_f64(secs / rounds as f64);
    // Warm up (connections, prepared statements, caches).
    let warm = Duration::from_secs_f64((secs / 10.0).clamp(0.2, 1.0));
    for extra in [Extra::Nothing, Extra::OutboxMessage, Extra::PlainRow] {
        write_load(db, &topic, clients, extra, warm).await?;
    }
    // [alone, with outbox, with outbox while a relay waits, plain second row]:
    // (transactions, seconds)
    let variants = [
        (Extra::Nothing, false),
        (Extra::OutboxMessage, false),
        (Extra::OutboxMessage, true),
        (Extra::PlainRow, false),
    ];
    let mut totals = [(0u64, 0f64); 4];
    for _ in 0..rounds {
        for ((extra, waiting), total) in variants.iter().zip(totals.iter_mut()) {
            if *waiting {
                set_relay_waiting(db, true).await?;
            }
            let (n, t) = write_load(db, &topic, clients, *extra, slice).await?;
            if *waiting {
                set_relay_waiting(db, false).await?;
            }
            total.0 += n;
            total.1 += t;
        }
    }
    let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.message")
        .fetch_one(db.pool())
        .await?;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_order")
        .fetch_one(db.pool())
        .await?;
    let [alone, with, waiting, floor] = totals;
    // Every committed transaction wrote its order, and its message when it
    // had one (the warm-up wrote some more of both).
    ensure!(
        outbox_rows >= (with.0 + waiting.0) as i64
            && orders >= (alone.0 + with.0 + waiting.0 + floor.0) as i64,
        "write overhead: {outbox_rows} messages and {orders} orders for {totals:?} transactions"
    );
    let rate = |(n, t): (u64, f64)| n as f64 / t;
    let r = OverheadResult {
        clients,
        seconds_per_variant: secs,
        rounds,
        alone_tx: alone.0,
        with_outbox_tx: with.0,
        alone_rate: rate(alone),
        with_outbox_rate: rate(with),
        ratio: rate(alone) / rate(with),
        waiting_tx: waiting.0,
        waiting_rate: rate(waiting),
        waiting_ratio: rate(alone) / rate(waiting),
        floor_tx: floor.0,
        floor_rate: rate(floor),
        floor_ratio: rate(alone) / rate(floor),
    };
    progress(format!(
        "write overhead: {:.0} tx/s alone, {:.0} with the outbox (ratio {:.3}), \
         {:.0} while a relay waits (ratio {:.3}), {:.0} with a plain second row (ratio {:.3})",
        r.alone_rate,
        r.with_outbox_rate,
        r.ratio,
        r.waiting_rate,
        r.waiting_ratio,
        r.floor_rate,
        r.floor_ratio
    ));
    Ok(r)
}

/// `clients` connections commit business transactions (one order row,
/// plus `extra`) back to back for `d`. Returns the transactions committed
/// and the seconds it took.
async fn write_load(
    db: &Db,
    topic: &str,
    clients: usize,
    extra: Extra,
    d: Duration,
) -> Result<(u64, f64)> {
    let committed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + d;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let pool = db.pool().clone();
        let topic = topic.to_owned();
        let committed = committed.clone();
        tasks.push(tokio::spawn(async move {
            let outbox = Outbox::new();
            let mut i = c as u64;
            while Instant::now() < deadline {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO bench_order (customer, sku, qty) VALUES ($1, $2, $3)")
                    .bind((i % workload::KEYS) as i64)
                    .bind(format!("SKU-{}", i % 97))
                    .bind(1 + (i % 5) as i32)
                    .execute(&mut *tx)
                    .await?;
                match extra {
                    Extra::Nothing => {}
                    Extra::OutboxMessage => {
                        outbox
                            .enqueue(
                                &mut *tx,
                                Message::new(&topic, workload::payload(i)).key(workload::key(i)),
                            )
                            .await?;
                    }
                    Extra::PlainRow => {
                        sqlx::query(
                            "INSERT INTO bench_plain (topic, msg_key, payload) VALUES ($1, $2, $3)",
                        )
                        .bind(&topic)
                        .bind(workload::key(i).into_bytes())
                        .bind(workload::payload(i).into_bytes())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                committed.fetch_add(1, Ordering::Relaxed);
                i += clients as u64;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((
        committed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

// ---------------------------------------------------------------------------
// 4. Latency

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
    pub duplicates: usize,
    pub relay_log: PathBuf,
}

/// Messages sent before the measured ones, not counted: they pay for
/// connection set-up and the topic metadata look-up.
fn warmup(rate: u32) -> u64 {
    (rate as u64 / 2).max(20)
}

/// The load of one latency run.
#[derive(Debug, Clone, Copy)]
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
}

pub async fn latency(ctx: &Ctx, load: LatencyLoad) -> Result<LatencyResult> {
    let name = format!("latency_{}_{}", load.wakeup, load.rate);
    let db = ctx
        .server
        .fresh_db(&format!("outbox_bench_{name}"), load.clients as u32)
        .await?;
    let result = latency_in(ctx, &db, &name, load).await;
    ctx.server.drop_db(db).await;
    result
}

async fn latency_in(ctx: &Ctx, db: &Db, name: &str, load: LatencyLoad) -> Result<LatencyResult> {
    let LatencyLoad {
        wakeup,
        rate,
        per_tx,
        secs,
        clients,
    } = load;
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
    let arrivals = consumer.finish()?;
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
        .map(|(_, id, committed)| arrivals[id].saturating_duration_since(*committed))
        .collect();
    let r = LatencyResult {
        wakeup,
        target_rate: rate,
        per_tx: per_tx as u32,
        achieved_rate,
        max_schedule_lag_ms: max_lag.as_secs_f64() * 1e3,
        latency: Percentiles::of(latencies)?,
        duplicates,
        relay_log,
    };
    progress(format!(
        "latency {wakeup} @{rate}/s: achieved {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.achieved_rate, r.latency.p50_ms, r.latency.p99_ms, r.latency.max_ms
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

pub async fn broker_latency(ctx: &Ctx, rate: u32, secs: f64) -> Result<ProbeResult> {
    let topic = ctx.fresh_topic(&format!("probe-{rate}")).await?;
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

// ---------------------------------------------------------------------------
// 6. Table health

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
