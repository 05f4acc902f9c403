//! Runs the whole order/inventory flow on this machine and checks that it
//! converged: a Kafka-protocol broker (librdkafka's mock cluster hosted
//! here by default, tansu, or a cluster of your own), both services with
//! their own databases, one outbox-relay per service, a few hundred
//! orders against limited stock,
//! optionally with crashes (`--chaos`: the inventory service and the order
//! service's relay are SIGKILLed mid-run and restarted). Prints live
//! progress, then a consistency report; exits non-zero if an invariant
//! fails.

mod broker;
mod check;
mod clients;
mod latency;
mod stack;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use order_inventory::Names;
use outbox_testkit::{free_port, http_get, ScratchDb};

use broker::{BrokerKind, DemoBroker};
use check::{check, status_counts};
use latency::{since_placed, Milestones};
use stack::{stop, wait_for_path, Stack};
use wire::replay_records;

#[derive(Parser)]
struct Args {
    /// Orders to place.
    #[arg(long, default_value_t = 300)]
    orders: usize,
    /// Concurrent clients placing orders.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Orders per second, all clients together.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Products in stock.
    #[arg(long, default_value_t = 5)]
    skus: usize,
    /// Initial stock per product (limited, so some orders must be cancelled).
    #[arg(long, default_value_t = 120)]
    stock: i32,
    /// SIGKILL the inventory service and the order relay mid-run, then restart them.
    #[arg(long)]
    chaos: bool,
    /// Copies of already-published OrderPlaced records to put on the wire
    /// again (as a relay that crashed before marking would), for the
    /// inventory inbox to absorb.
    #[arg(long, default_value_t = 30)]
    duplicates: usize,
    /// Give up if not converged this long after the last order was placed.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// PostgreSQL URL used to create the two service databases.
    #[arg(
        long,
        env = "OUTBOX_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    admin_url: String,
    /// The broker to start: `mock` (librdkafka's mock Kafka cluster,
    /// hosted by this program: nothing to install) or `tansu` (the tansu
    /// broker, `--tansu-bin`).
    #[arg(long, value_enum, default_value = "mock")]
    broker: BrokerKind,
    /// Use a Kafka cluster of your own instead (`HOST:PORT,...`: Apache
    /// Kafka, Redpanda, tansu). Each run creates topics and consumer groups
    /// of its own there (`demo-<run>-order-events`, ...; 6 partitions), so
    /// runs never read each other's records. Overrides `--broker`.
    #[arg(long)]
    brokers: Option<String>,
    /// The tansu broker binary (`--broker tansu`).
    #[arg(long, env = "TANSU_BIN", default_value = "tansu")]
    tansu_bin: PathBuf,
    /// The services' consumer-group session timeout: how long the group
    /// waits for a crashed consumer. Default: 3s on the mock cluster,
    /// which, unlike Apache Kafka, does not let a restarted consumer take
    /// its predecessor's place (static membership) and rebalances after
    /// the session timeout instead; 10s elsewhere (Apache Kafka refuses
    /// less than 6s by default).
    #[arg(long, value_parser = humantime::parse_duration)]
    session_timeout: Option<Duration>,
    /// Folder of the outbox-relay, order-service and inventory-service
    /// binaries. Default: this program's own folder.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where logs and the report go. Default: target/order-inventory-demo/<time>.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Keep the databases afterwards.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary folder")?
            .to_owned(),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/order-inventory-demo/{stamp}")));
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    println!("run folder (logs, report): {}", dir.display());

    // Databases: one per service, fresh; the services create their tables.
    let db = |service: &str| {
        ScratchDb::builder()
            .admin_url(&args.admin_url)
            .prefix(format!("demo_{service}"))
            .keep(args.keep)
            .create()
    };
    let orders_db = db("orders").await.context("creating the orders database")?;
    let inventory_db = db("inventory")
        .await
        .context("creating the inventory database")?;
    let outcome = run(&args, &dir, &bin_dir, &orders_db, &inventory_db, started).await;
    let _ = orders_db.close().await;
    let _ = inventory_db.close().await;
    outcome
}

async fn run(
    args: &Args,
    dir: &Path,
    bin_dir: &Path,
    orders_db: &ScratchDb,
    inventory_db: &ScratchDb,
    started: Instant,
) -> anyhow::Result<()> {
    // A cluster of the user's may hold earlier runs' topics: this run
    // gets its own, as the mock cluster and tansu give it anyway.
    let prefix = match &args.brokers {
        Some(_) => format!(
            "demo-{}-",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("run")
        ),
        None => String::new(),
    };
    let names = Names::with_prefix(&prefix);
    let broker = DemoBroker::start(args, dir, &names).await?;
    let brokers = broker.addr();
    println!("broker: {}", broker.describe());
    let session_timeout = args.session_timeout.unwrap_or(match broker {
        DemoBroker::Mock(_) => Duration::from_secs(3),
        _ => Duration::from_secs(10),
    });

    let (orders_url, inventory_url) = (orders_db.url().to_owned(), inventory_db.url().to_owned());
    let stack = Stack {
        dir: dir.to_owned(),
        bin_dir: bin_dir.to_owned(),
        brokers: brokers.clone(),
        session_timeout,
        topic_prefix: prefix.clone(),
        orders_url: orders_url.clone(),
        inventory_url: inventory_url.clone(),
        order_http: format!("127.0.0.1:{}", free_port()?),
        inventory_http: format!("127.0.0.1:{}", free_port()?),
        order_relay_http: format!("127.0.0.1:{}", free_port()?),
        inventory_relay_http: format!("127.0.0.1:{}", free_port()?),
    };
    // Everything starts at once; orders are placed once both consumers
    // have joined their groups and both relays are up, as they would be
    // in a deployment that has been running.
    let mut order_service = stack.order_service()?;
    let mut inventory_service = stack.inventory_service()?;
    let mut order_relay = stack.order_relay()?;
    let mut inventory_relay = stack.inventory_relay()?;
    let ready = Duration::from_secs(60);
    tokio::try_join!(
        wait_for_path(&stack.order_http, "/ready", ready, &mut order_service),
        wait_for_path(
            &stack.inventory_http,
            "/ready",
            ready,
            &mut inventory_service
        ),
        wait_for_path(&stack.order_relay_http, "/healthz", ready, &mut order_relay),
        wait_for_path(
            &stack.inventory_relay_http,
            "/healthz",
            ready,
            &mut inventory_relay
        ),
    )?;
    println!(
        "services and relays ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let orders_pool = orders_db.pool().clone();
    let inventory_pool = inventory_db.pool().clone();
    let skus: Vec<String> = (1..=args.skus).map(|i| format!("SKU-{i}")).collect();
    for sku in &skus {
        sqlx::query("INSERT INTO stock (sku, available) VALUES ($1, $2)")
            .bind(sku)
            .bind(args.stock)
            .execute(&inventory_pool)
            .await?;
    }
    println!(
        "placing {} orders ({} clients, {}/s) against {} products x {} in stock{}",
        args.orders,
        args.concurrency,
        args.rate,
        args.skus,
        args.stock,
        if args.chaos { ", with crashes" } else { "" }
    );

    // Clients.
    let (placed, clients) = clients::start(args, &stack.order_http, &skus);

    // Progress, crashes, convergence.
    let mut killed_inventory = false;
    let mut killed_relay = false;
    let mut all_placed = false;
    let mut crash_log = Vec::new();
    // Each crashed process started again, and when the first crash came.
    let mut restarts: Vec<Restart> = Vec::new();
    let mut first_crash: Option<SystemTime> = None;
    let mut progress = Progress::new(args.orders, started);
    let deadline = loop {
        for p in [
            &mut order_service,
            &mut inventory_service,
            &mut order_relay,
            &mut inventory_relay,
        ] {
            p.check_alive()?;
        }
        let n = placed.load(Ordering::SeqCst);
        let counts = status_counts(&orders_pool).await.unwrap_or_default();
        progress.show(n, &counts, false);
        for r in &mut restarts {
            r.probe().await;
        }

        if args.chaos && !killed_inventory && n >= args.orders / 3 {
            inventory_service.kill();
            first_crash.get_or_insert_with(SystemTime::now);
            crash_log.push(format!("SIGKILL inventory-service after {n} orders placed"));
            // On the mock cluster the dead consumer stays a member for its
            // 3 s session; a new one joining a second after the crash had
            // the dead one elected leader and waited out two rebalances
            // (about 4 s). From 2 s on, the rebalance the new one starts
            // ends after the dead one has gone (docs/demo.md).
            progress.say("SIGKILL inventory-service; restarting it in 2s");
            tokio::time::sleep(Duration::from_secs(2)).await;
            inventory_service = stack.inventory_service()?;
            restarts.push(Restart::new(
                "inventory-service",
                Some(stack.inventory_http.clone()),
            ));
            killed_inventory = true;
        }
        if args.chaos && !killed_relay && n >= args.orders * 2 / 3 {
            order_relay.kill();
            first_crash.get_or_insert_with(SystemTime::now);
            crash_log.push(format!("SIGKILL order-relay after {n} orders placed"));
            progress.say("SIGKILL order-relay; restarting it in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            order_relay = stack.order_relay()?;
            restarts.push(Restart::new("order-relay", None));
            killed_relay = true;
        }
        if n >= args.orders && !all_placed {
            all_placed = true;
            if args.duplicates > 0 {
                let copied = replay_records(&brokers, &names.order_events, args.duplicates).await?;
                crash_log.push(format!(
                    "re-sent {copied} OrderPlaced records already delivered"
                ));
                progress.say(&format!(
                    "re-sent {copied} OrderPlaced records already delivered"
                ));
            }
        }
        if all_placed {
            let pending = counts.get("PENDING").copied().unwrap_or(0);
            if pending == 0 && counts.values().sum::<i64>() as usize == args.orders {
                // The last line shows the final counts.
                progress.show(n, &counts, true);
                break None;
            }
            if progress.since_all_placed() > args.timeout {
                progress.show(n, &counts, true);
                break Some(args.timeout);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(timeout) = deadline {
        bail!(
            "not converged {timeout:?} after the last order; logs in {}",
            dir.display()
        );
    }
    for c in clients {
        c.await?;
    }

    // Stop gracefully, then check.
    let stats_orders = http_get(&stack.order_http, "/stats")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    let stats_inventory = http_get(&stack.inventory_http, "/stats")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    stop(&mut order_relay).await;
    stop(&mut inventory_relay).await;
    stop(&mut order_service).await;
    stop(&mut inventory_service).await;

    let report = check(args, &orders_pool, &inventory_pool, &skus, &brokers, &names).await?;
    let timings = latency::milestones(&orders_pool, &inventory_pool).await?;
    let mut text = String::new();
    text.push_str("# order/inventory consistency report\n\n");
    text.push_str(&format!("- broker: {}\n", broker.describe()));
    text.push_str(&format!(
        "- orders: {} placed, {} confirmed, {} cancelled\n",
        args.orders, report.confirmed, report.cancelled
    ));
    text.push_str(&speed(&timings, &restarts));
    text.push_str(&format!(
        "- whole run: {:.1}s\n",
        started.elapsed().as_secs_f64()
    ));
    for c in &crash_log {
        text.push_str(&format!("- fault: {c}\n"));
    }
    text.push_str(&format!(
        "- on the wire: {} records, {} distinct messages: {} duplicates, absorbed by the inboxes\n",
        report.records,
        report.distinct,
        report.records - report.distinct
    ));
    text.push_str(&format!("- consumer stats (live processes): order-service {stats_orders}, inventory-service {stats_inventory}\n"));
    text.push_str(&latency_table(&timings, first_crash));
    text.push_str("\n| invariant | holds |\n| --- | --- |\n");
    for (name, ok, detail) in &report.invariants {
        text.push_str(&format!(
            "| {name} | {} {detail} |\n",
            if *ok { "yes" } else { "**NO**" }
        ));
    }
    println!("\n{text}");
    std::fs::write(dir.join("report.md"), &text)?;
    let failed: Vec<&str> = report
        .invariants
        .iter()
        .filter(|i| !i.1)
        .map(|i| i.0.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("invariants failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Seconds since the Unix epoch, the unit of the databases' timestamps
/// in [`Milestones`].
fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A crashed process started again: when (wall clock, to set beside the
/// databases' timestamps), and for a service, when its consumer had
/// partitions again (`GET /ready`), which is the broker's part of the
/// recovery.
struct Restart {
    what: &'static str,
    at: SystemTime,
    http: Option<String>,
    ready: Option<SystemTime>,
}

impl Restart {
    fn new(what: &'static str, http: Option<String>) -> Self {
        Restart {
            what,
            at: SystemTime::now(),
            http,
            ready: None,
        }
    }

    /// Asks `/ready` once, until it first answers 200.
    async fn probe(&mut self) {
        if let (None, Some(http)) = (self.ready, &self.http) {
            if matches!(http_get(http, "/ready").await, Ok((200, _))) {
                self.ready = Some(SystemTime::now());
            }
        }
    }
}

/// The report's lines on how soon the flow answered: the first decision
/// after the first order, the last decision after the last order, and
/// how soon after each restart the orders placed before it were all
/// decided (for a service, also when its consumer had partitions again).
fn speed(
    timings: &std::collections::HashMap<uuid::Uuid, Milestones>,
    restarts: &[Restart],
) -> String {
    let placed = || timings.values().map(|m| m.placed);
    let decided = || timings.values().filter_map(|m| m.decided);
    let (Some(first_placed), Some(first_decided)) = (
        placed().min_by(f64::total_cmp),
        decided().min_by(f64::total_cmp),
    ) else {
        return String::new();
    };
    let last_placed = placed().max_by(f64::total_cmp).unwrap_or(first_placed);
    let last_decided = decided().max_by(f64::total_cmp).unwrap_or(first_decided);
    let mut text = format!(
        "- first order decided {:.0} ms after the first was placed\n- last order decided {:.2}s after the last was placed\n",
        (first_decided - first_placed) * 1000.0,
        last_decided - last_placed
    );
    // A crash's backlog: the orders placed before the restart. When the
    // last of them was decided says how long the flow took to recover.
    for r in restarts {
        let at = epoch_secs(r.at);
        let Some(caught_up) = timings
            .values()
            .filter(|m| m.placed < at)
            .filter_map(|m| m.decided)
            .max_by(f64::total_cmp)
        else {
            continue;
        };
        text.push_str(&match r.ready {
            Some(ready) => format!(
                "- {} restarted: its consumer had partitions again {:.2}s later (the broker's group join); every order placed before the restart was decided {:.2}s after it ({:.2}s after the join)\n",
                r.what,
                epoch_secs(ready) - at,
                caught_up - at,
                caught_up - epoch_secs(ready),
            ),
            None => format!(
                "- {} restarted: every order placed before the restart was decided {:.2}s after it\n",
                r.what,
                caught_up - at
            ),
        });
    }
    text
}

/// The report's latency table: each milestone's time since the order was
/// placed, over all orders, and over those decided before the first crash
/// (the flow's pace with nothing down; orders caught in a crash wait for
/// the restart).
fn latency_table(
    timings: &std::collections::HashMap<uuid::Uuid, Milestones>,
    first_crash: Option<SystemTime>,
) -> String {
    let mut text = String::from(
        "\n| time since the order was placed (ms) | p50 | p99 | max |\n| --- | --- | --- | --- |\n",
    );
    type Pick = fn(&Milestones) -> Option<f64>;
    let rows: [(&str, Pick); 4] = [
        ("OrderPlaced published (broker acknowledged)", |m| {
            m.published
        }),
        ("stock reserved or rejected by inventory", |m| m.consumed),
        ("reply published", |m| m.replied),
        ("order confirmed or cancelled", |m| m.decided),
    ];
    for (name, pick) in rows {
        if let Some(s) = since_placed(timings.values(), pick) {
            text.push_str(&format!("| {name} | {} |\n", s.cells()));
        }
    }
    if let Some(crash) = first_crash {
        let before = epoch_secs(crash);
        let calm = since_placed(
            timings
                .values()
                .filter(|m| m.decided.is_some_and(|d| d < before)),
            |m| m.decided,
        );
        if let Some(s) = calm {
            text.push_str(&format!(
                "| order confirmed or cancelled, the {} orders decided before the first crash | {} |\n",
                s.n,
                s.cells()
            ));
        }
    }
    text
}

/// The live progress line: rewritten in place on a terminal, printed
/// every 2 s otherwise; always printed once more with the final counts.
struct Progress {
    orders: usize,
    started: Instant,
    interactive: bool,
    last_line: Option<Instant>,
    all_placed: Option<Instant>,
}

impl Progress {
    fn new(orders: usize, started: Instant) -> Self {
        Progress {
            orders,
            started,
            interactive: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            last_line: None,
            all_placed: None,
        }
    }

    fn show(&mut self, placed: usize, counts: &std::collections::HashMap<String, i64>, last: bool) {
        if placed >= self.orders {
            self.all_placed.get_or_insert_with(Instant::now);
        }
        let count = |s: &str| counts.get(s).copied().unwrap_or(0);
        let line = format!(
            "  placed {placed:>4}/{}  confirmed {:>4}  cancelled {:>4}  pending {:>4}  {:>5.1}s ",
            self.orders,
            count("CONFIRMED"),
            count("CANCELLED"),
            count("PENDING"),
            self.started.elapsed().as_secs_f64()
        );
        if self.interactive {
            use std::io::Write;
            print!("\r{line}");
            if last {
                println!();
            }
            let _ = std::io::stdout().flush();
        } else if last
            || self
                .last_line
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
        {
            println!("{line}");
            self.last_line = Some(Instant::now());
        }
    }

    /// A line of its own between progress lines.
    fn say(&self, what: &str) {
        if self.interactive {
            println!();
        }
        println!("  {what}");
    }

    /// How long ago the last order was placed (zero before that).
    fn since_all_placed(&self) -> Duration {
        self.all_placed.map_or(Duration::ZERO, |t| t.elapsed())
    }
}
