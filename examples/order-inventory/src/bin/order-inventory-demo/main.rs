//! Runs the whole order/inventory flow on this machine and checks that it
//! converged: a tansu broker, both services with their own databases, one
//! outbox-relay per service, a few hundred orders against limited stock,
//! optionally with crashes (`--chaos`: the inventory service and the order
//! service's relay are SIGKILLed mid-run and restarted). Prints live
//! progress, then a consistency report; exits non-zero if an invariant
//! fails.

mod check;
mod clients;
mod stack;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use order_inventory::{INVENTORY_EVENTS, ORDER_EVENTS};
use outbox_testkit::{free_port, http_get, Broker, ScratchDb};

use check::{check, status_counts};
use stack::{stop, wait_healthy, Stack};
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
    /// The tansu broker binary.
    #[arg(long, env = "TANSU_BIN", default_value = "tansu")]
    tansu_bin: PathBuf,
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
    // Broker.
    let tansu = Broker::builder()
        .bin(&args.tansu_bin)
        .data_dir(dir.join("tansu"))
        .log_file(dir.join("tansu.log"))
        // tansu logs every request at RUST_LOG=info; keep it quiet.
        .env_remove("RUST_LOG")
        .start_timeout(Duration::from_secs(20))
        .start()
        .await?;
    let brokers = tansu.addr();
    for topic in [ORDER_EVENTS, INVENTORY_EVENTS] {
        tansu.create_topic(topic, 6).await?;
    }

    let (orders_url, inventory_url) = (orders_db.url().to_owned(), inventory_db.url().to_owned());
    let stack = Stack {
        dir: dir.to_owned(),
        bin_dir: bin_dir.to_owned(),
        brokers: brokers.clone(),
        orders_url: orders_url.clone(),
        inventory_url: inventory_url.clone(),
        order_http: format!("127.0.0.1:{}", free_port()?),
        inventory_http: format!("127.0.0.1:{}", free_port()?),
    };
    let mut order_service = stack.order_service()?;
    let mut inventory_service = stack.inventory_service()?;
    let ready = Duration::from_secs(60);
    wait_healthy(&stack.order_http, ready, &mut order_service).await?;
    wait_healthy(&stack.inventory_http, ready, &mut inventory_service).await?;
    let mut order_relay = stack.relay("order-relay", &orders_url)?;
    let mut inventory_relay = stack.relay("inventory-relay", &inventory_url)?;

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
        "placing {} orders ({} clients) against {} products x {} in stock{}",
        args.orders,
        args.concurrency,
        args.skus,
        args.stock,
        if args.chaos { ", with crashes" } else { "" }
    );

    // Clients.
    let (placed, clients) = clients::start(args, &stack.order_http, &skus);

    // Progress, crashes, convergence.
    let mut killed_inventory = false;
    let mut killed_relay = false;
    let mut placed_at: Option<Instant> = None;
    let mut crash_log = Vec::new();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last_line = Instant::now();
    let converged_at = loop {
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
        let pending = counts.get("PENDING").copied().unwrap_or(0);
        let line = format!(
            "  placed {n:>4}/{}  confirmed {:>4}  cancelled {:>4}  pending {:>4}  {:>5.1}s ",
            args.orders,
            counts.get("CONFIRMED").copied().unwrap_or(0),
            counts.get("CANCELLED").copied().unwrap_or(0),
            pending,
            started.elapsed().as_secs_f64()
        );
        if interactive {
            use std::io::Write;
            print!("\r{line}");
            let _ = std::io::stdout().flush();
        } else if last_line.elapsed() >= Duration::from_secs(2) {
            println!("{line}");
            last_line = Instant::now();
        }

        if args.chaos && !killed_inventory && n >= args.orders / 3 {
            inventory_service.kill();
            crash_log.push(format!("SIGKILL inventory-service after {n} orders placed"));
            println!("\n  SIGKILL inventory-service; restarting it in 2s");
            tokio::time::sleep(Duration::from_secs(2)).await;
            inventory_service = stack.inventory_service()?;
            killed_inventory = true;
        }
        if args.chaos && !killed_relay && n >= args.orders * 2 / 3 {
            order_relay.kill();
            crash_log.push(format!("SIGKILL order-relay after {n} orders placed"));
            println!("\n  SIGKILL order-relay; restarting it in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            order_relay = stack.relay("order-relay", &orders_url)?;
            killed_relay = true;
        }
        if n >= args.orders && placed_at.is_none() {
            placed_at = Some(Instant::now());
            if args.duplicates > 0 {
                let copied = replay_records(&brokers, ORDER_EVENTS, args.duplicates).await?;
                crash_log.push(format!(
                    "re-sent {copied} OrderPlaced records already delivered"
                ));
                println!("\n  re-sent {copied} OrderPlaced records already delivered");
            }
        }
        if let Some(at) = placed_at {
            if pending == 0 && counts.values().sum::<i64>() as usize == args.orders {
                break Instant::now();
            }
            if at.elapsed() > args.timeout {
                println!();
                bail!(
                    "not converged {:?} after the last order; logs in {}",
                    args.timeout,
                    dir.display()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!();
    for c in clients {
        c.await?;
    }
    let converge = converged_at - placed_at.expect("all placed");

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

    let report = check(args, &orders_pool, &inventory_pool, &skus, &brokers).await?;
    let mut text = String::new();
    text.push_str("# order/inventory consistency report\n\n");
    text.push_str(&format!(
        "- orders: {} placed, {} confirmed, {} cancelled\n",
        args.orders, report.confirmed, report.cancelled
    ));
    text.push_str(&format!(
        "- time from last order to convergence: {:.2}s\n",
        converge.as_secs_f64()
    ));
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
