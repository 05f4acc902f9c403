//! `outbox-chaos`: runs three relays against a private PostgreSQL cluster
//! and a broker while a writer commits keyed messages through the library
//! and seeded faults hit everything (relays killed and paused past their
//! lease, the database restarted, the broker paused or restarted). Then it
//! lets the relays drain, reads the topic back from offset 0 with a plain
//! consumer and checks, against what committed: nothing lost, nothing
//! rolled back published, per-key order (first and last occurrences), and
//! no shard stalled behind a live relay.
//!
//! Run it through `scripts/chaos.sh`; see `--help`.

mod broker;
mod check;
mod faults;
mod pg;
mod reader;
mod relays;
mod util;
mod watchdog;
mod writer;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use broker::{BrokerStorage, MockBroker};
use faults::{BrokerTarget, FaultLog, Targets};
use outbox_testkit::{random_suffix, Broker};
use relays::{RelaySpec, Relays, RelaysGuard};
use util::Downtime;
use writer::{WriterSpec, WriterStats};

/// Which broker the relays publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BrokerKind {
    /// A tansu process.
    Tansu,
    /// librdkafka's mock cluster, hosted in this process, with broker-side
    /// errors injected.
    Mock,
}

/// Chaos harness for outbox-relay: seeded faults, then an independent
/// check of the topic against what committed.
#[derive(Parser, Debug)]
#[command(name = "outbox-chaos", max_term_width = 100)]
struct Args {
    /// How long faults are injected, in minutes.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Seed of the fault schedule and the workload [default: random, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// The tansu binary.
    #[arg(long, env = "TANSU_BIN", default_value = "tansu")]
    tansu_bin: PathBuf,
    /// The outbox-relay binary.
    #[arg(long, default_value = "target/debug/outbox-relay")]
    relay_bin: PathBuf,
    /// The broker.
    #[arg(long, value_enum, default_value_t = BrokerKind::Tansu)]
    broker: BrokerKind,
    /// tansu's storage: memory (broker faults are pauses) or sqlite
    /// (broker faults are SIGKILL and restart).
    #[arg(long, value_enum, default_value_t = BrokerStorage::Memory)]
    broker_storage: BrokerStorage,
    /// Relays running at once.
    #[arg(long, default_value_t = 3)]
    relays: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 500)]
    keys: u32,
    /// Messages per second the writers aim at.
    #[arg(long, default_value_t = 800)]
    rate: u32,
    /// Writer tasks; each owns a share of the keys, so per-key commit
    /// order is still n order.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Share of transactions rolled back on purpose.
    #[arg(long, default_value_t = 0.05)]
    rollback_share: f64,
    /// A shard held by a live relay, with due messages, whose oldest one
    /// does not move for longer than this is a stall.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    watchdog: Duration,
    /// Fail when fewer faults ran [default: minutes × 15].
    #[arg(long)]
    min_faults: Option<u32>,

    /// Fault kinds to leave out (by their name in the report, e.g.
    /// `broker_pause`), to tell which kind a failure comes with.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// How long the relays get to publish everything after the faults.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Extra argument for every relay (repeatable), after the harness's.
    #[arg(long = "relay-arg", allow_hyphen_values = true, value_name = "ARG")]
    relay_args: Vec<String>,
    /// RUST_LOG of the relays.
    #[arg(long, default_value = "info,tokio_cron_scheduler=warn")]
    relay_log: String,
    /// Where run folders go.
    #[arg(long, default_value = "target/chaos")]
    out_dir: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The pools' reconnect warnings during database restarts and
                // librdkafka's end-of-partition "errors" are expected noise.
                .unwrap_or_else(|_| "warn,sqlx=error,rdkafka=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Kills tansu when the main task ends, whoever else holds it.
struct TansuGuard(Arc<Mutex<Broker>>);

impl Drop for TansuGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).stop();
    }
}

async fn run(args: Args) -> Result<bool> {
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let minutes = args.minutes;
    let min_faults = args
        .min_faults
        .unwrap_or_else(|| (minutes * 15.0).ceil() as u32);
    if args.relays == 0 || args.writers == 0 || args.keys == 0 || args.rate == 0 {
        bail!("--relays, --writers, --keys and --rate must be positive");
    }
    let run_name = format!(
        "{}-seed{seed}-{}",
        chrono::Local::now().format("%Y%m%d-%H%M%S"),
        std::process::id()
    );
    let run_dir = args.out_dir.join(&run_name);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    eprintln!(
        "chaos: seed={seed} minutes={minutes} relays={} keys={} rate={}/s broker={:?}{} logs in {}",
        args.relays,
        args.keys,
        args.rate,
        args.broker,
        if args.broker == BrokerKind::Tansu {
            format!(" storage={:?}", args.broker_storage)
        } else {
            String::new()
        },
        run_dir.display()
    );
    let relay_bin = args
        .relay_bin
        .canonicalize()
        .with_context(|| format!("relay binary {}", args.relay_bin.display()))?;

    // 1. The private database.
    let pg = pg::PgCluster::start(&run_dir.join("postgres.log")).await?;
    let database_url = pg.url();
    eprintln!("chaos: PostgreSQL cluster at {database_url}");
    let pool = PgPoolOptions::new()
        .max_connections(args.writers as u32 + 4)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&database_url)
        .await
        .context("connecting to the private cluster")?;
    outbox::migrate(&pool).await.context("outbox::migrate")?;
    sqlx::query(
        "CREATE TABLE chaos_committed (key text NOT NULL, n bigint NOT NULL, id uuid PRIMARY KEY)",
    )
    .execute(&pool)
    .await?;

    // 2. The broker and the topic.
    let topic = format!("chaos-{}", random_suffix());
    let (brokers, target, tansu_guard, mock) = match args.broker {
        BrokerKind::Tansu => {
            // Logs go to RUN_DIR/tansu-N.log, one per start.
            let mut tansu = Broker::builder()
                .bin(&args.tansu_bin)
                .storage(args.broker_storage.into())
                .log_dir(&run_dir)
                .build()?;
            tansu.spawn()?;
            let addr = tansu.addr();
            broker::wait_ready(&addr, Duration::from_secs(30), || Ok(tansu.check_alive()?)).await?;
            let partitions = u32::try_from(args.partitions).context("--partitions")?;
            tansu.create_topic(&topic, partitions).await?;
            broker::wait_topic(&addr, &topic, args.partitions).await?;
            let tansu = Arc::new(Mutex::new(tansu));
            let guard = TansuGuard(tansu.clone());
            let target = match args.broker_storage {
                BrokerStorage::Memory => BrokerTarget::TansuPause(tansu.clone()),
                BrokerStorage::Sqlite => BrokerTarget::TansuRestart(tansu.clone(), addr.clone()),
            };
            (addr, target, Some(guard), None)
        }
        BrokerKind::Mock => {
            let mock = Arc::new(MockBroker::start(3, &topic, args.partitions)?);
            let addr = mock.bootstrap().to_owned();
            broker::wait_topic(&addr, &topic, args.partitions).await?;
            let target = BrokerTarget::Mock(mock.clone(), args.partitions);
            (addr, target, None, Some(mock))
        }
    };
    eprintln!(
        "chaos: broker at {brokers}, topic {topic} ({} partitions)",
        args.partitions
    );

    // 3. The relays, supervised.
    let mut relay_args: Vec<String> = [
        "--lease",
        "5s",
        // Under the harness's own watchdog (30 s): a relay that cannot
        // publish must let go of its shards before it counts as a stall.
        "--stall-timeout",
        "20s",
        "--batch-size",
        "200",
        "--poll-interval",
        "500ms",
        "--sweep-schedule",
        "*/3 * * * * *",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    relay_args.extend(args.relay_args.iter().cloned());
    let spec = RelaySpec {
        bin: relay_bin,
        database_url: database_url.clone(),
        brokers: brokers.clone(),
        args: relay_args,
        log_dir: run_dir.clone(),
        rust_log: args.relay_log.clone(),
    };
    let relays = Arc::new(Mutex::new(Relays::new(spec, args.relays)));
    let _relays_guard = RelaysGuard(relays.clone());
    let (stop_supervisor, stop_supervisor_rx) = watch::channel(false);
    let supervisor = tokio::spawn(relays::supervise(relays.clone(), stop_supervisor_rx));

    let started = Instant::now();
    let downtime = Arc::new(Downtime::default());

    // 4. The watchdog.
    let (stop_watchdog, stop_watchdog_rx) = watch::channel(false);
    let watch_progress = Arc::new(Mutex::new(watchdog::StallReport::default()));
    let watchdog = tokio::spawn(watchdog::run(
        pool.clone(),
        args.watchdog,
        downtime.clone(),
        stop_watchdog_rx,
        watch_progress.clone(),
    ));

    // 5. The writers.
    let (stop_writers, stop_writers_rx) = watch::channel(false);
    let stats = Arc::new(Mutex::new(WriterStats::default()));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let keys: Vec<u32> = (0..args.keys)
            .filter(|k| *k as usize % args.writers == w)
            .collect();
        if keys.is_empty() {
            continue;
        }
        let share = keys.len() as f64 / args.keys as f64;
        let spec = WriterSpec {
            index: w,
            topic: topic.clone(),
            keys,
            rate: f64::from(args.rate) * share,
            rollback_share: args.rollback_share,
            seed: seed.wrapping_add(1 + w as u64),
        };
        writers.push(tokio::spawn(writer::run_writer(
            pool.clone(),
            spec,
            stop_writers_rx.clone(),
            stats.clone(),
        )));
    }

    // 6. The faults.
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    let (_stop_faults, stop_faults_rx) = watch::channel(false);
    let targets = Targets {
        relays: relays.clone(),
        pg: pg.ctl(),
        broker: target,
        downtime: downtime.clone(),
    };
    let fault_kinds = faults::kinds(&targets.broker, &args.skip);
    let mut faults = tokio::spawn(faults::run(
        targets,
        StdRng::seed_from_u64(seed),
        until,
        started,
        stop_faults_rx,
        fault_kinds.clone(),
    ));

    // Progress while the faults run; fail fast if a writer dies.
    let fault_log: FaultLog = loop {
        tokio::select! {
            log = &mut faults => break log.context("the fault injector panicked")?,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                if let Some(pos) = writers.iter().position(|w| w.is_finished()) {
                    // Surface the writer's error.
                    writers.remove(pos).await.context("a writer panicked")??;
                    bail!("a writer stopped early");
                }
                progress(&pool, started, &stats, &relays, &watch_progress).await;
            }
        }
    };
    eprintln!(
        "chaos: {:.0}s: faults done ({} in all); stopping the writers",
        started.elapsed().as_secs_f64(),
        fault_log.total()
    );

    // 7. Stop the writers, let the relays drain.
    let _ = stop_writers.send(true);
    for w in writers {
        w.await.context("a writer panicked")??;
    }
    let writer_stats = stats.lock().expect("stats lock").clone();
    let drain_started = Instant::now();
    let drained = drain(&pool, args.drain_timeout).await;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let _ = stop_watchdog.send(true);
    let stall_report = watchdog.await.context("the watchdog panicked")?;
    let _ = stop_supervisor.send(true);
    supervisor.await.context("the supervisor panicked")?;
    let pids = relays::lock(&relays).terminate_all();
    let term_deadline = Instant::now() + Duration::from_secs(20);
    while relays::lock(&relays).reap_stopping() > 0 && Instant::now() < term_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if relays::lock(&relays).reap_stopping() > 0 {
        eprintln!("chaos: some relays ignored SIGTERM for 20s ({pids:?}); killing them");
        relays::lock(&relays).kill_all();
    }
    eprintln!(
        "chaos: {:.0}s: relays stopped; reading the topic back",
        started.elapsed().as_secs_f64()
    );

    // 8. Verify from the broker side.
    let committed: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT id, key, n FROM chaos_committed")
            .fetch_all(&pool)
            .await
            .context("reading chaos_committed")?;
    let committed: check::Committed = committed
        .into_iter()
        .map(|(id, key, n)| (id, (key, n)))
        .collect();
    let (rb, rt, rp) = (brokers.clone(), topic.clone(), args.partitions);
    let seen = tokio::task::spawn_blocking(move || {
        reader::read_all(&rb, &rt, rp, Duration::from_secs(60))
    })
    .await?;
    let read_error = seen.as_ref().err().map(|e| format!("{e:#}"));
    let seen = seen.unwrap_or_default();
    let findings = check::check(&seen, &committed);
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM outbox.message GROUP BY status ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    pool.close().await;

    // 9. Report.
    let (relay_events, self_exits, generations) = {
        let r = relays::lock(&relays);
        (r.events().to_vec(), r.self_exits().clone(), r.generations())
    };
    let self_exit_total: u32 = self_exits.values().sum();
    let mut details = String::new();
    let d = &mut details;
    if let Err(e) = &drained {
        let _ = writeln!(d, "drain: {e:#}");
    }
    if let Some(e) = &read_error {
        let _ = writeln!(d, "reading the topic: {e}");
    }
    let statuses_text = statuses
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    if statuses.iter().any(|(s, _)| s == "pending" || s == "dead") {
        let _ = writeln!(d, "outbox.message left behind: {statuses_text}");
    }
    if writer_stats.committed != committed.len() as u64 {
        let _ = writeln!(
            d,
            "harness check failed: the writers counted {} committed messages, chaos_committed has {}",
            writer_stats.committed,
            committed.len()
        );
    }
    if !findings.lost.is_empty() {
        let mut lost: Vec<String> = findings
            .lost
            .iter()
            .take(10)
            .map(|id| {
                let (k, n) = &committed[id];
                format!("{k}:{n} ({id})")
            })
            .collect();
        if findings.lost.len() > 10 {
            lost.push(format!("… {} more", findings.lost.len() - 10));
        }
        let _ = writeln!(d, "lost: {}", lost.join(", "));
    }
    if !findings.phantom.is_empty() {
        let ids: Vec<String> = findings
            .phantom
            .iter()
            .take(10)
            .map(Uuid::to_string)
            .collect();
        let _ = writeln!(d, "phantom (never committed) ids: {}", ids.join(", "));
    }
    write_bad_keys(&run_dir, &seen, &findings, &committed)?;
    for bad in findings.order_violations.iter().take(5) {
        let _ = writeln!(d, "order violation: {}", check::render(bad));
    }
    // Reported, not a failure: at least once allows a late re-send of an
    // older message after newer ones (a relay killed after the broker's
    // ack but before its mark, or paused with records queued). A consumer
    // that de-duplicates ignores it; a compacted topic would not.
    for bad in findings.stale_tails.iter().take(5) {
        let _ = writeln!(
            d,
            "stale tail (reported, not a failure): {}",
            check::render(bad)
        );
    }
    if !findings.order_violations.is_empty() || !findings.stale_tails.is_empty() {
        let _ = writeln!(
            d,
            "every record of these keys, with offsets and ids: {}",
            run_dir.join("bad-keys.txt").display()
        );
    }
    for m in findings.malformed.iter().take(10) {
        let _ = writeln!(d, "malformed: {m}");
    }
    for s in stall_report.details.iter().take(10) {
        let _ = writeln!(d, "{s}");
    }
    for e in &fault_log.errors {
        let _ = writeln!(d, "fault error: {e}");
    }
    if self_exit_total > 0 {
        let by: Vec<String> = self_exits
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            d,
            "relay self-exits ({}); see relay-*.log in {}",
            by.join(", "),
            run_dir.display()
        );
    }
    let broker_panics = tansu_panics(&run_dir);
    for p in &broker_panics {
        let _ = writeln!(
            d,
            "BROKER FAILURE: tansu panicked ({p}); it answers nothing sensible after that, so \
             lost/stalls in this run are the broker's, not evidence against the relay"
        );
    }
    if read_error.is_some() && !committed.is_empty() && findings.records == 0 {
        let _ = writeln!(
            d,
            "the topic could not be read back at all: lost counts every committed message"
        );
    }
    if args.broker == BrokerKind::Tansu
        && args.broker_storage == BrokerStorage::Sqlite
        && (!findings.lost.is_empty() || drained.is_err() || self_exit_total > 0)
    {
        let _ = writeln!(
            d,
            "note: tansu 0.6.0 with SQLite storage is known to fail idempotent producers after a \
             restart (README, \"The test broker\"); relay exits or undelivered messages after a \
             broker_restart may be that broker gap rather than the relay's"
        );
    }
    let fault_total = fault_log.total();
    let mut kinds_text = String::new();
    for kind in &fault_kinds {
        let n = fault_log.counts.get(kind).copied().unwrap_or(0);
        let _ = write!(kinds_text, " {}={n}", kind.name());
    }
    let summary = format!(
        "chaos: seed={seed} minutes={minutes} committed={} lost={} phantom={} duplicates={} \
         order_violations={} stale_tails={} stalls={} (longest {:.1}s) faults={fault_total}{kinds_text} \
         relay_self_exits={self_exit_total}",
        committed.len(),
        findings.lost.len(),
        findings.phantom.len(),
        findings.duplicates,
        findings.order_violations.len(),
        findings.stale_tails.len(),
        stall_report.stalls,
        stall_report.longest.as_secs_f64(),
    );
    let failed = !findings.lost.is_empty()
        || !findings.phantom.is_empty()
        || !findings.order_violations.is_empty()
        || stall_report.stalls > 0
        || fault_total < min_faults
        || !findings.malformed.is_empty()
        || read_error.is_some()
        || writer_stats.committed != committed.len() as u64;
    if fault_total < min_faults {
        let _ = writeln!(
            d,
            "only {fault_total} faults ran; at least {min_faults} required"
        );
    }
    let info = format!(
        "run: {run_name}; records read {} ({} distinct ids); writer: {} tx committed, {} rolled back on purpose ({} msgs), \
         {} retried (last error: {}), {} unknown COMMITs ({} had committed); drain took {drain_secs:.1}s; \
         outbox.message at the end: {}; deliberate downtime {:.1}s; watchdog samples {} ({} failed); relay generations {generations:?}",
        findings.records,
        findings.distinct,
        writer_stats.committed_tx,
        writer_stats.rolled_back_tx,
        writer_stats.rolled_back,
        writer_stats.retried_tx,
        writer_stats.last_error.as_deref().unwrap_or("none"),
        writer_stats.unknown_commits,
        writer_stats.unknown_committed,
        if statuses_text.is_empty() { "empty" } else { &statuses_text },
        downtime.total().as_secs_f64(),
        stall_report.samples,
        stall_report.failed_samples,
    );
    let mut report = String::new();
    report.push_str(&details);
    report.push_str(&info);
    report.push('\n');
    report.push_str(&summary);
    report.push('\n');
    print!("{report}");
    std::fs::write(run_dir.join("report.txt"), &report)?;
    let mut timeline = fault_log.events.join("\n");
    timeline.push('\n');
    std::fs::write(run_dir.join("faults.log"), timeline)?;
    let mut sup = relay_events.join("\n");
    sup.push('\n');
    std::fs::write(run_dir.join("supervisor.log"), sup)?;
    let json = serde_json::json!({
        "seed": seed,
        "minutes": minutes,
        "committed": committed.len(),
        "records": findings.records,
        "lost": findings.lost.len(),
        "phantom": findings.phantom.len(),
        "duplicates": findings.duplicates,
        "order_violations": findings.order_violations.len(),
        "stale_tails": findings.stale_tails.len(),
        "stalls": stall_report.stalls,
        "longest_stuck_seconds": stall_report.longest.as_secs_f64(),
        "faults": fault_log.counts.iter().map(|(k, v)| (k.name(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "relay_self_exits": self_exits,
        "passed": !failed,
    });
    std::fs::write(
        run_dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    drop(tansu_guard);
    drop(mock);
    drop(pg);
    Ok(!failed)
}

/// Writes every record of the offending keys (partition, offset, n, id,
/// and the id's UUIDv7 time, i.e. when it was enqueued) and the lost
/// messages to `bad-keys.txt`, for the post-mortem.
fn write_bad_keys(
    run_dir: &std::path::Path,
    seen: &[check::Seen],
    findings: &check::Findings,
    committed: &check::Committed,
) -> Result<()> {
    let bad: std::collections::BTreeSet<&str> = findings
        .order_violations
        .iter()
        .chain(&findings.stale_tails)
        .map(|b| b.key.as_str())
        .collect();
    if bad.is_empty() && findings.lost.is_empty() && findings.phantom.is_empty() {
        return Ok(());
    }
    let time = |id: &Uuid| {
        id.get_timestamp()
            .map(|t| {
                let (s, ns) = t.to_unix();
                chrono::DateTime::from_timestamp(s as i64, ns)
                    .map(|d| d.format("%H:%M:%S%.3f").to_string())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let mut out = String::new();
    let mut records: Vec<&check::Seen> = seen.iter().collect();
    records.sort_by_key(|r| (r.partition, r.offset));
    for key in bad {
        let _ = writeln!(out, "{key}: partition/offset n id (enqueued at)");
        for r in &records {
            if let (Some((k, n)), Some(id)) = (&r.payload, r.id) {
                if k == key {
                    let _ = writeln!(
                        out,
                        "  {}/{} {n} {id} ({})",
                        r.partition,
                        r.offset,
                        time(&id)
                    );
                }
            }
        }
    }
    for id in &findings.lost {
        let (k, n) = &committed[id];
        let _ = writeln!(out, "lost: {k}:{n} {id} ({})", time(id));
    }
    for id in &findings.phantom {
        let _ = writeln!(out, "phantom: {id} ({})", time(id));
    }
    std::fs::write(run_dir.join("bad-keys.txt"), out)?;
    Ok(())
}

/// `tansu-N.log: <panic message>` for every tansu start that panicked.
fn tansu_panics(run_dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("tansu-") && n.ends_with(".log"))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(run_dir.join(&name)).unwrap_or_default();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.contains("panicked at") {
                let why = lines.next().unwrap_or_default().trim();
                out.push(format!("{name}: {} {why}", line.trim()));
                break;
            }
        }
    }
    out
}

/// One progress line on stderr.
async fn progress(
    pool: &PgPool,
    started: Instant,
    stats: &Arc<Mutex<WriterStats>>,
    relays: &relays::SharedRelays,
    stalls: &Arc<Mutex<watchdog::StallReport>>,
) {
    let pending: Option<i64> = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE status = 'pending'")
            .fetch_one(pool),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let s = stats.lock().expect("stats lock").clone();
    let exits: u32 = relays::lock(relays).self_exits().values().sum();
    let st = stalls.lock().expect("progress lock").clone();
    eprintln!(
        "chaos: {:5.1}s committed={} pending={} relay_self_exits={exits} stalls={} (longest stuck {:.1}s)",
        started.elapsed().as_secs_f64(),
        s.committed,
        pending.map_or("?".to_owned(), |p| p.to_string()),
        st.stalls,
        st.longest.as_secs_f64(),
    );
}

/// Waits until no message is pending.
async fn drain(pool: &PgPool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    loop {
        let pending: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE status = 'pending'")
                .fetch_one(pool)
                .await;
        match pending {
            Ok(0) => return Ok(()),
            Ok(n) if Instant::now() > deadline => {
                bail!("{n} messages still pending after {timeout:?}")
            }
            Err(e) if Instant::now() > deadline => bail!("cannot count pending messages: {e}"),
            Ok(n) => {
                if last_print.elapsed() > Duration::from_secs(5) {
                    eprintln!("chaos: draining: {n} pending");
                    last_print = Instant::now();
                }
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
