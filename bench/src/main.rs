//! `outbox-bench`: measures the relay against limits taken on the same
//! machine in the same run, and prints every figure as a ratio to its
//! limit, beside its target:
//!
//! 1. ceiling: a raw idempotent `acks=all` rdkafka producer, batching tuned;
//! 2. relay throughput draining a pre-loaded backlog, as a share of (1);
//!    and, isolated, its two parties: the relay's statements with no
//!    broker, and the raw producer and those statements side by side;
//! 3. write overhead: order transaction alone vs with one outbox message;
//! 4. commit-to-consumed latency at steady rates, notify vs poll wake-up,
//!    beside the broker's own produce-to-consume latency at that rate;
//! 5. the relay's peak RSS draining a small vs a large backlog;
//! 6. outbox table and index size through load, drain, sweep, VACUUM and
//!    refill.
//!
//! Run it through `scripts/bench.sh` (which starts the services); see
//! docs/benchmarks.md.

mod cli;
mod db;
mod hog;
mod kafka;
mod profile;
mod relay;
mod report;
mod rows;
mod scenarios;
mod workload;

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;

use cli::{Args, Plan, Scenario};
use report::{thousands, Report, Row};
use scenarios::Ctx;

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
    let plan = Plan::new(&args);
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
        "latency_repeats": plan.latency_repeats,
        "hog_rates": if args.no_hog { Vec::new() } else { args.hog_rates.clone() },
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
    let ceiling = rows::ceiling(&mut run.rows, n, &ceilings);
    if let Some(d) = big_drain.as_ref().map(|d| &d.result) {
        rows::drain(&mut run.rows, n, d, ceiling);
    }
    // The drain's limits run after the table-health measurement, which
    // continues on the drain's database, but their rows go beside it.
    let limits_at = run.rows.len();

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
            rows::memory(&mut run.rows, n, plan.small, s, b);
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
            rows::health(&mut run.rows, n, &h);
        }
    }
    let drained = match big_drain.take() {
        Some(d) => {
            ctx.server.drop_db(d.db).await;
            Some(d.result)
        }
        None => None,
    };
    if want(Scenario::Limits) {
        if let Some(l) = run.step("limits", scenarios::limits(&ctx, n)).await {
            let mut limit_rows = Vec::new();
            rows::limits(&mut limit_rows, &l, ceiling, drained.as_ref());
            run.rows.splice(limits_at..limits_at, limit_rows);
        }
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
            rows::overhead(&mut run.rows, &o);
        }
    }

    // 4: latency, per rate and load: the broker alone, then the relay in
    // both modes, each repeated; interleaved so that every repeat of the
    // three sees the machine in the same state.
    if want(Scenario::Latency) {
        for &rate in &args.latency_rates {
            let hog_too = !args.no_hog && args.hog_rates.contains(&rate);
            for hogged in [false, true].into_iter().filter(|&h| !h || hog_too) {
                let _hog = if hogged {
                    Some(hog::CpuHog::start().context("starting the CPU hog")?)
                } else {
                    None
                };
                let load = if hogged { "hog" } else { "quiet" };
                let mut probes = Vec::new();
                let mut runs: Vec<(&'static str, Vec<scenarios::LatencyResult>)> = args
                    .wakeups
                    .iter()
                    .map(|w| (w.name(), Vec::new()))
                    .collect();
                for repeat in 1..=plan.latency_repeats {
                    let tag = format!("{load}{repeat}");
                    ctx.server.checkpoint().await;
                    probes.extend(
                        run.step(
                            &format!("broker_latency_{rate}_{tag}"),
                            scenarios::broker_latency(&ctx, rate, plan.latency_secs, &tag),
                        )
                        .await,
                    );
                    for (wakeup, results) in runs.iter_mut() {
                        let wakeup = *wakeup;
                        ctx.server.checkpoint().await;
                        results.extend(
                            run.step(
                                &format!("latency_{wakeup}_{rate}_{tag}"),
                                scenarios::latency(
                                    &ctx,
                                    scenarios::LatencyLoad {
                                        wakeup,
                                        rate,
                                        per_tx: rate.div_ceil(args.latency_max_tps.max(1)),
                                        secs: plan.latency_secs,
                                        clients: args.clients,
                                        tag: tag.clone(),
                                    },
                                ),
                            )
                            .await,
                        );
                    }
                }
                for (wakeup, results) in &runs {
                    if !results.is_empty() {
                        run.rows
                            .push(rows::latency(wakeup, rate, hogged, results, &probes));
                    }
                }
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
