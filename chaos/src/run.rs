//! One chaos run, start to finish: the private cluster, the broker and
//! its topic, the supervised relays, the watchdog, the writers and the
//! faults; then the drain, the read-back and the check, handed to the
//! report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_testkit::{random_suffix, Broker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use uuid::Uuid;

use crate::backlog::{drain, progress};
use crate::broker::{self, BrokerStorage};
use crate::cli::{Args, BrokerKind};
use crate::faults::{self, BrokerTarget, FaultLog, Targets};
use crate::relays::{self, RelaySpec, Relays, RelaysGuard};
use crate::report::{self, Outcome};
use crate::util::Downtime;
use crate::writer::{self, WriterSpec, WriterStats};
use crate::{check, pg, reader, watchdog};
use outbox_testkit::MockBroker;

/// Kills tansu when the main task ends, whoever else holds it.
struct TansuGuard(Arc<Mutex<Broker>>);

impl Drop for TansuGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).stop();
    }
}

/// Runs the harness as `args` say; `Ok(false)` when the check failed.
pub async fn run(args: Args) -> Result<bool> {
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
            let mock = Arc::new(MockBroker::start(3, &[(&topic, args.partitions)])?);
            let addr = mock.bootstrap().to_owned();
            broker::wait_topic(&addr, &topic, args.partitions).await?;
            let target = BrokerTarget::Mock(mock.clone(), topic.clone(), args.partitions);
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
    let passed = report::write(Outcome {
        args: &args,
        seed,
        min_faults,
        run_name,
        run_dir,
        drained,
        drain_secs,
        read_error,
        statuses,
        writer_stats,
        committed,
        seen,
        findings,
        stall_report,
        fault_log,
        fault_kinds,
        relay_events,
        self_exits,
        generations,
        downtime,
    })?;
    drop(tansu_guard);
    drop(mock);
    drop(pg);
    Ok(passed)
}
