//! `outbox-bench`: measures the relay against limits taken on the same
//! machine in the same run, and prints every figure as a ratio to its
//! limit, beside its target:
//!
//! 1. ceiling: a raw idempotent `acks=all` rdkafka producer, batching tuned;
//! 2. relay throughput draining a pre-loaded backlog, as a share of (1);
//! 3. write overhead: order transaction alone vs with one outbox message;
//! 4. commit-to-consumed latency at steady rates, notify vs poll wake-up,
//!    beside the broker's own produce-to-consume latency at that rate;
//! 5. the relay's peak RSS draining a small vs a large backlog;
//! 6. outbox table and index size through load, drain, sweep, VACUUM and
//!    refill.
//!
//! Run it through `scripts/bench.sh` (which starts the services); see the
//! README's "Benchmarks" section.

mod db;
mod kafka;
mod profile;
mod relay;
mod report;
mod scenarios;
mod workload;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;

use report::{mib, thousands, Report, Row};
use scenarios::Ctx;

/// Measures outbox-relay against the broker's and the database's own
/// limits, in one run; writes target/bench/report.{md,json}.
#[derive(Parser)]
#[command(name = "outbox-bench", max_term_width = 100, args_override_self = true)]
struct Args {
    /// Any database of the PostgreSQL server to use; the benchmark creates
    /// and drops its own databases (outbox_bench_*) next to it.
    #[arg(
        long,
        env = "OUTBOX_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "OUTBOX_BENCH_BROKERS")]
    brokers: String,
    /// The outbox-relay binary (build it with --release).
    #[arg(long, default_value = "target/release/outbox-relay")]
    relay_bin: PathBuf,
    /// Small sizes and short durations (about a minute), for CI.
    #[arg(long)]
    smoke: bool,
    /// Backlog size for the ceiling, the drain and the table health.
    /// [default: 1000000, smoke: 5000]
    #[arg(long)]
    messages: Option<u64>,
    /// The small backlog the memory comparison drains. [default: messages / 10]
    #[arg(long)]
    small_messages: Option<u64>,
    /// Seconds each latency run lasts. [default: 10, smoke: 1.5]
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Steady rates (messages/s) for the latency runs.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    latency_rates: Vec<u32>,
    /// Seconds each variant of the write-overhead comparison runs.
    /// [default: 15, smoke: 2]
    #[arg(long)]
    overhead_secs: Option<f64>,
    /// Highest transaction rate of the latency load: above it, a
    /// transaction carries several messages (5,000 msg/s at the default
    /// are 1,000 transactions of 5).
    #[arg(long, default_value_t = 1000)]
    latency_max_tps: u32,
    /// Concurrent clients for the write overhead and the latency load.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Partitions of every topic the benchmark creates.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Run only these measurements (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// An extra flag for every relay started, e.g. --relay-arg=--batch-size=2000.
    /// Repeatable.
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// RUST_LOG for the relays (their logs go to OUT_DIR/logs), e.g.
    /// outbox_relay=debug to log every batch's timing.
    #[arg(long)]
    relay_log: Option<String>,
    /// Where the report and the relay logs go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// Keep the benchmark's databases instead of dropping them.
    #[arg(long)]
    keep_databases: bool,
}

/// The measurements, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// (1) Raw producer throughput.
    Ceiling,
    /// (2) Relay throughput draining the backlog.
    Drain,
    /// (3) Write overhead.
    Overhead,
    /// (4) Commit-to-consumed latency.
    Latency,
    /// (5) Relay peak memory, small vs large backlog.
    Memory,
    /// (6) Table and index size.
    Health,
}

/// Sizes and durations of this run.
struct Plan {
    smoke: bool,
    messages: u64,
    small: u64,
    latency_secs: f64,
    overhead_secs: f64,
}

/// Targets from the issue.
const RELAY_VS_CEILING: f64 = 0.70;
const WRITE_OVERHEAD: f64 = 1.15;
const P99_MS_AT_1000_NOTIFY: f64 = 25.0;
const MEMORY_GROWTH: f64 = 1.20;
const TABLE_GROWTH: f64 = 1.20;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outbox-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) if report.errors.is_empty() => ExitCode::SUCCESS,
        Ok(report) => {
            eprintln!(
                "outbox-bench: {} measurement(s) failed (see above)",
                report.errors.len()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("outbox-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Collects figures and failures while the scenarios run.
struct Run {
    rows: Vec<Row>,
    details: serde_json::Map<String, serde_json::Value>,
    errors: Vec<String>,
}

impl Run {
    /// Runs one measurement; a failure is recorded and the run goes on.
    async fn step<T: serde::Serialize>(
        &mut self,
        name: &str,
        f: impl Future<Output = Result<T>>,
    ) -> Option<T> {
        eprintln!("==> {name}");
        let started = Instant::now();
        match f.await {
            Ok(v) => {
                self.details.insert(
                    name.to_owned(),
                    json!({ "result": serde_json::to_value(&v).unwrap_or_default(),
                            "wall_seconds": started.elapsed().as_secs_f64() }),
                );
                Some(v)
            }
            Err(e) => {
                let msg = format!("{name}: {e:#}");
                eprintln!("   FAILED: {msg}");
                self.errors.push(msg);
                None
            }
        }
    }
}

async fn run(args: Args) -> Result<Report> {
    let started = Instant::now();
    let plan = Plan {
        smoke: args.smoke,
        messages: args
            .messages
            .unwrap_or(if args.smoke { 5_000 } else { 1_000_000 }),
        small: 0,
        latency_secs: args
            .latency_secs
            .unwrap_or(if args.smoke { 1.5 } else { 10.0 }),
        overhead_secs: args
            .overhead_secs
            .unwrap_or(if args.smoke { 2.0 } else { 15.0 }),
    };
    let plan = Plan {
        small: args.small_messages.unwrap_or(plan.messages / 10).max(1),
        ..plan
    };
    let want = |s: Scenario| args.only.is_empty() || args.only.contains(&s);

    let relay_version = std::process::Command::new(&args.relay_bin)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "cannot run the relay binary {} (build it: cargo build --release -p outbox-relay)",
                args.relay_bin.display()
            )
        })?;
    let relay_version = String::from_utf8_lossy(&relay_version.stdout)
        .trim()
        .to_owned();

    let run_id = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let ctx = Ctx {
        server: db::Server::connect(&args.database_url, args.keep_databases).await?,
        brokers: args.brokers.clone(),
        partitions: args.partitions,
        relay: relay::RelaySpec {
            bin: args.relay_bin.clone(),
            brokers: args.brokers.clone(),
            wakeup: "notify",
            args: args.relay_args.clone(),
            rust_log: args.relay_log.clone(),
        },
        run_id,
        log_dir: args.out_dir.join("logs"),
        drain_timeout: Duration::from_secs(if plan.smoke { 120 } else { 600 }),
    };
    let parameters = json!({
        "mode": if plan.smoke { "smoke" } else { "full" },
        "messages": plan.messages,
        "small_messages": plan.small,
        "payload_bytes": workload::PAYLOAD_BYTES,
        "keys": workload::KEYS,
        "partitions": args.partitions,
        "latency_seconds": plan.latency_secs,
        "latency_rates": args.latency_rates,
        "latency_max_tps": args.latency_max_tps,
        "overhead_seconds_per_variant": plan.overhead_secs,
        "clients": args.clients,
        "relay_bin": args.relay_bin,
        "relay_version": relay_version,
        "relay_args": args.relay_args,
        "ceiling_producer": kafka::CEILING_TUNING.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "brokers": args.brokers,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    eprintln!(
        "outbox-bench: {} run, {} messages, relay {}",
        if plan.smoke { "smoke" } else { "full" },
        thousands(plan.messages as f64),
        args.relay_bin.display()
    );

    let mut run = Run {
        rows: Vec::new(),
        details: serde_json::Map::new(),
        errors: Vec::new(),
    };
    let n = plan.messages;

    // 1 and 2: the ceiling right before and right after the drain, so the
    // limit reflects the machine as the drain saw it.
    let mut ceilings = Vec::new();
    if want(Scenario::Ceiling) {
        ceilings.extend(
            run.step("ceiling_before", scenarios::ceiling(&ctx, n, "before"))
                .await,
        );
    }
    let mut big_drain = None;
    if want(Scenario::Drain) || want(Scenario::Memory) {
        big_drain = run
            .step(&format!("drain_{n}"), scenarios::drain(&ctx, n))
            .await;
    }
    if want(Scenario::Ceiling) {
        ceilings.extend(
            run.step("ceiling_after", scenarios::ceiling(&ctx, n, "after"))
                .await,
        );
    }
    let ceiling = (!ceilings.is_empty())
        .then(|| ceilings.iter().map(|c| c.rate).sum::<f64>() / ceilings.len() as f64);
    if let Some(c) = ceiling {
        let each: Vec<String> = ceilings.iter().map(|c| thousands(c.rate)).collect();
        run.rows.push(
            Row::new(
                "1",
                format!("ceiling: raw producer, {} records", thousands(n as f64)),
                format!("{} msg/s", thousands(c)),
            )
            .limit(format!(
                "mean of runs before/after drain: {}",
                each.join(" / ")
            )),
        );
    }
    if let Some(d) = big_drain.as_ref().map(|d| &d.result) {
        let mut row = Row::new(
            "2",
            format!("relay drain, {} backlog", thousands(n as f64)),
            format!("{} msg/s", thousands(d.rate)),
        );
        if let Some(c) = ceiling {
            let ratio = d.rate / c;
            row = row
                .limit(format!("ceiling {} msg/s", thousands(c)))
                .ratio(ratio)
                .target(
                    format!("≥ {RELAY_VS_CEILING:.2} × ceiling"),
                    ratio >= RELAY_VS_CEILING,
                );
        }
        run.rows.push(row);
        run.rows.push(
            Row::new(
                "2",
                "… where the drain's time went (sampled pg_stat_activity, /proc)",
                d.profile.summary(),
            )
            .limit(format!(
                "{:.0} batches, {:.1} ms each",
                d.batches,
                1e3 * d.batch_seconds_sum / d.batches.max(1.0)
            )),
        );
    }

    // 5: memory, small vs large backlog.
    if want(Scenario::Memory) {
        let small = run
            .step(
                &format!("drain_{}", plan.small),
                scenarios::drain(&ctx, plan.small),
            )
            .await;
        let small = match small {
            Some(s) => {
                ctx.server.drop_db(s.db).await;
                Some(s.result)
            }
            None => None,
        };
        if let (Some(s), Some(b)) = (small.as_ref(), big_drain.as_ref().map(|d| &d.result)) {
            let ratio = b.peak_rss_kib as f64 / s.peak_rss_kib as f64;
            run.rows.push(
                Row::new(
                    "5",
                    format!(
                        "relay peak RSS, {} vs {} backlog",
                        thousands(n as f64),
                        thousands(plan.small as f64)
                    ),
                    format!(
                        "{} vs {}",
                        mib(b.peak_rss_kib as f64 * 1024.0),
                        mib(s.peak_rss_kib as f64 * 1024.0)
                    ),
                )
                .limit(format!(
                    "{} backlog: {}",
                    thousands(plan.small as f64),
                    mib(s.peak_rss_kib as f64 * 1024.0)
                ))
                .ratio(ratio)
                .target(format!("≤ {MEMORY_GROWTH:.2}"), ratio <= MEMORY_GROWTH),
            );
        }
    }

    // 6: table health, continuing on the big drain's database.
    if want(Scenario::Health) {
        let health = if want(Scenario::Drain) && big_drain.is_none() {
            run.errors
                .push("health: not measured, it continues after the failed drain".into());
            None
        } else {
            run.step("health", scenarios::health(&ctx, n, big_drain.as_ref()))
                .await
        };
        if let Some(h) = health {
            let show = |s: &db::Sizes| {
                format!(
                    "{} (indexes {}, {} rows)",
                    mib(s.total_bytes as f64),
                    mib(s.index_bytes as f64),
                    thousands(s.rows as f64)
                )
            };
            let k = thousands(n as f64);
            run.rows.push(Row::new(
                "6",
                format!("outbox.message, {k} loaded"),
                show(&h.loaded),
            ));
            run.rows.push(Row::new(
                "6",
                "… drained (rows deleted on acknowledgement, space not yet reclaimed)",
                show(&h.drained),
            ));
            run.rows.push(Row::new(
                "6",
                "… swept (sweeper, --retention 0s)",
                show(&h.swept),
            ));
            run.rows
                .push(Row::new("6", "… after VACUUM", show(&h.vacuumed)));
            run.rows.push(
                Row::new("6", format!("… refilled with {k}"), show(&h.refilled))
                    .limit(format!("first load {}", mib(h.loaded.total_bytes as f64)))
                    .ratio(h.growth)
                    .target(
                        format!("≤ {TABLE_GROWTH:.2} (bounded)"),
                        h.growth <= TABLE_GROWTH,
                    ),
            );
            run.rows.push(
                Row::new(
                    "6",
                    "… second cycle: drained, VACUUM, refilled",
                    show(&h.refilled_again),
                )
                .limit(format!("first load {}", mib(h.loaded.total_bytes as f64)))
                .ratio(h.growth_again)
                .target(
                    format!("≤ {TABLE_GROWTH:.2} (bounded)"),
                    h.growth_again <= TABLE_GROWTH,
                ),
            );
        }
    }
    if let Some(d) = big_drain.take() {
        ctx.server.drop_db(d.db).await;
    }

    // 3: write overhead.
    if want(Scenario::Overhead) {
        if let Some(o) = run
            .step(
                "overhead",
                scenarios::overhead(&ctx, args.clients, plan.overhead_secs),
            )
            .await
        {
            run.rows.push(
                Row::new(
                    "3",
                    format!("order tx + 1 outbox message, {} clients", o.clients),
                    format!("{} tx/s", thousands(o.with_outbox_rate)),
                )
                .limit(format!("order tx alone {} tx/s", thousands(o.alone_rate)))
                .ratio(o.ratio)
                .target(
                    format!("alone/with ≤ {WRITE_OVERHEAD:.2}"),
                    o.ratio <= WRITE_OVERHEAD,
                ),
            );
            run.rows.push(
                Row::new(
                    "3",
                    "… diagnostic: same while a relay waits (every commit notifies)",
                    format!("{} tx/s", thousands(o.waiting_rate)),
                )
                .limit(format!("order tx alone {} tx/s", thousands(o.alone_rate)))
                .ratio(o.waiting_ratio),
            );
            run.rows.push(
                Row::new(
                    "3",
                    "… floor: order tx + a plain second INSERT of the same width",
                    format!("{} tx/s", thousands(o.floor_rate)),
                )
                .limit(format!("order tx alone {} tx/s", thousands(o.alone_rate)))
                .ratio(o.floor_ratio),
            );
        }
    }

    // 4: latency, per rate: the broker alone, then the relay in both modes.
    if want(Scenario::Latency) {
        for &rate in &args.latency_rates {
            ctx.server.checkpoint().await;
            let probe = run
                .step(
                    &format!("broker_latency_{rate}"),
                    scenarios::broker_latency(&ctx, rate, plan.latency_secs),
                )
                .await;
            for wakeup in ["notify", "poll"] {
                ctx.server.checkpoint().await;
                let Some(l) = run
                    .step(
                        &format!("latency_{wakeup}_{rate}"),
                        scenarios::latency(
                            &ctx,
                            scenarios::LatencyLoad {
                                wakeup,
                                rate,
                                per_tx: rate.div_ceil(args.latency_max_tps.max(1)),
                                secs: plan.latency_secs,
                                clients: args.clients,
                            },
                        ),
                    )
                    .await
                else {
                    continue;
                };
                let mut row = Row::new(
                    "4",
                    format!(
                        "latency, {wakeup}, {} msg/s ({} msg/tx; reached {})",
                        thousands(rate as f64),
                        l.per_tx,
                        thousands(l.achieved_rate)
                    ),
                    format!(
                        "p50 {:.1} / p99 {:.1} / max {:.1} ms",
                        l.latency.p50_ms, l.latency.p99_ms, l.latency.max_ms
                    ),
                );
                if let Some(p) = &probe {
                    row = row
                        .limit(format!(
                            "broker alone p50 {:.1} / p99 {:.1} ms",
                            p.latency.p50_ms, p.latency.p99_ms
                        ))
                        .ratio(l.latency.p99_ms / p.latency.p99_ms.max(0.001));
                }
                if wakeup == "notify" && rate == 1000 {
                    row = row.target(
                        format!("p99 ≤ {P99_MS_AT_1000_NOTIFY:.0} ms"),
                        l.latency.p99_ms <= P99_MS_AT_1000_NOTIFY,
                    );
                }
                run.rows.push(row);
            }
        }
    }

    // Measured in the order that keeps the run short; reported in the
    // issue's order.
    run.rows.sort_by_key(|r| r.section);
    let report = Report {
        mode: if plan.smoke { "smoke" } else { "full" },
        duration_secs: started.elapsed().as_secs_f64(),
        parameters,
        rows: run.rows,
        details: run.details,
        errors: run.errors,
    };
    report.write(&args.out_dir)?;
    println!();
    print!("{}", report.text_table());
    println!(
        "\n{} run in {:.0} s; {} target(s) missed{}; report: {}",
        report.mode,
        report.duration_secs,
        report.misses(),
        if report.errors.is_empty() {
            String::new()
        } else {
            format!(", {} measurement(s) FAILED", report.errors.len())
        },
        args.out_dir.join("report.md").display()
    );
    Ok(report)
}
