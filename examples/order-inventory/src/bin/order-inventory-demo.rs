//! Runs the whole order/inventory flow on this machine and checks that it
//! converged: a tansu broker, both services with their own databases, one
//! outbox-relay per service, a few hundred orders against limited stock,
//! optionally with crashes (`--chaos`: the inventory service and the order
//! service's relay are SIGKILLed mid-run and restarted). Prints live
//! progress, then a consistency report; exits non-zero if an invariant
//! fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use order_inventory::*;
use outbox_testkit::{
    free_port, http_get, http_request, wait_for, Broker, ChildGuard, LogMode, ScratchDb,
};
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::ClientConfig;
use sqlx::{PgPool, Row};

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

/// Waits (`deadline` at most) until `GET http://ADDR/healthz` answers
/// 200, failing early if `proc` exits.
async fn wait_healthy(addr: &str, deadline: Duration, proc: &mut ChildGuard) -> anyhow::Result<()> {
    let what = format!("http://{addr}/healthz to answer 200");
    wait_for(&what, deadline, || {
        let alive = proc.check_alive();
        async move {
            alive?;
            let ok = matches!(http_get(addr, "/healthz").await, Ok((200, _)));
            Ok::<_, anyhow::Error>(ok.then_some(()))
        }
    })
    .await
}

/// SIGTERM, then SIGKILL if `proc` is still there after 5 s.
async fn stop(proc: &mut ChildGuard) {
    if let Err(outbox_testkit::Error::Timeout { .. }) = proc.terminate(Duration::from_secs(5)).await
    {
        eprintln!(
            "{} did not stop on SIGTERM within 5s; killed it",
            proc.name()
        );
    }
}

struct Stack {
    dir: PathBuf,
    bin_dir: PathBuf,
    brokers: String,
    orders_url: String,
    inventory_url: String,
    order_http: String,
    inventory_http: String,
}

impl Stack {
    fn relay(&self, which: &'static str, db: &str) -> anyhow::Result<ChildGuard> {
        // The same config files docker-compose.yml uses; only the addresses differ.
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/{which}.toml"));
        let mut cmd = Command::new(self.bin_dir.join("outbox-relay"));
        cmd.arg("--config").arg(config).args([
            "--database-url",
            db,
            "--brokers",
            &self.brokers,
            "--http-listen",
            "127.0.0.1:0",
        ]);
        spawn(which, cmd, &self.dir)
    }

    fn order_service(&self) -> anyhow::Result<ChildGuard> {
        let mut cmd = Command::new(self.bin_dir.join("order-service"));
        cmd.args([
            "--database-url",
            &self.orders_url,
            "--brokers",
            &self.brokers,
        ])
        .args(["--http-listen", &self.order_http]);
        spawn("order-service", cmd, &self.dir)
    }

    fn inventory_service(&self) -> anyhow::Result<ChildGuard> {
        let mut cmd = Command::new(self.bin_dir.join("inventory-service"));
        cmd.args([
            "--database-url",
            &self.inventory_url,
            "--brokers",
            &self.brokers,
        ])
        .args(["--http-listen", &self.inventory_http]);
        spawn("inventory-service", cmd, &self.dir)
    }
}

/// Starts `cmd` as `name`, its output appended to `DIR/<name>.log` (a
/// restarted process keeps its first run's output there).
fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<ChildGuard> {
    let log = dir.join(format!("{name}.log"));
    Ok(ChildGuard::spawn_logged(
        name,
        &mut cmd,
        &log,
        LogMode::Append,
    )?)
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
    let placed = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (placed, next, skus, addr, total) = (
            placed.clone(),
            next.clone(),
            skus.clone(),
            stack.order_http.clone(),
            args.orders,
        );
        let pace = Duration::from_secs_f64(args.concurrency as f64 / args.rate.max(0.1));
        clients.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(pace);
            while next.fetch_add(1, Ordering::SeqCst) < total {
                tick.tick().await;
                let items: Vec<Item> = {
                    let mut rng = rand::rng();
                    let n = rng.random_range(1..=2);
                    let mut chosen: Vec<&String> = Vec::new();
                    while chosen.len() < n {
                        let s = &skus[rng.random_range(0..skus.len())];
                        if !chosen.contains(&s) {
                            chosen.push(s);
                        }
                    }
                    chosen
                        .into_iter()
                        .map(|s| Item {
                            sku: s.clone(),
                            qty: rng.random_range(1..=4),
                        })
                        .collect()
                };
                let body = serde_json::json!({ "customer": "demo", "items": items }).to_string();
                loop {
                    match http_request(&addr, "POST", "/orders", Some(&body)).await {
                        Ok((201, _)) => break,
                        Ok((status, b)) => eprintln!("order rejected ({status}): {b}; retrying"),
                        Err(e) => eprintln!("order service unreachable: {e}; retrying"),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                placed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

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

async fn status_counts(pool: &PgPool) -> anyhow::Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

struct Report {
    confirmed: i64,
    cancelled: i64,
    records: usize,
    distinct: usize,
    invariants: Vec<(String, bool, String)>,
}

async fn check(
    args: &Args,
    orders: &PgPool,
    inventory: &PgPool,
    skus: &[String],
    brokers: &str,
) -> anyhow::Result<Report> {
    let mut inv = Vec::new();
    let counts = status_counts(orders).await?;
    let confirmed = counts.get("CONFIRMED").copied().unwrap_or(0);
    let cancelled = counts.get("CANCELLED").copied().unwrap_or(0);
    inv.push((
        "every order ended CONFIRMED or CANCELLED".to_string(),
        (confirmed + cancelled) as usize == args.orders,
        format!("({confirmed} + {cancelled} of {})", args.orders),
    ));

    // Reserved stock equals the quantities of confirmed orders (across the
    // two databases).
    let mut wanted: BTreeMap<String, i64> = skus.iter().map(|s| (s.clone(), 0)).collect();
    for row in sqlx::query("SELECT items FROM orders WHERE status = 'CONFIRMED'")
        .fetch_all(orders)
        .await?
    {
        let items: Vec<Item> = serde_json::from_value(row.get("items"))?;
        for i in items {
            *wanted.entry(i.sku).or_default() += i64::from(i.qty);
        }
    }
    let stock: BTreeMap<String, i32> =
        sqlx::query_as::<_, (String, i32)>("SELECT sku, available FROM stock")
            .fetch_all(inventory)
            .await?
            .into_iter()
            .collect();
    let mut mismatches = Vec::new();
    for (sku, qty) in &wanted {
        let reserved = i64::from(args.stock) - i64::from(*stock.get(sku).unwrap_or(&args.stock));
        if reserved != *qty {
            mismatches.push(format!(
                "{sku}: reserved {reserved}, confirmed orders want {qty}"
            ));
        }
    }
    inv.push((
        "stock reserved = quantities of confirmed orders".into(),
        mismatches.is_empty(),
        mismatches.join("; "),
    ));
    let negative = stock.values().filter(|a| **a < 0).count();
    inv.push(("no negative stock".into(), negative == 0, String::new()));

    // Each order affected stock exactly once, and agrees with its decision.
    let decisions: HashMap<uuid::Uuid, String> =
        sqlx::query_as::<_, (uuid::Uuid, String)>("SELECT order_id, status FROM reservation")
            .fetch_all(inventory)
            .await?
            .into_iter()
            .collect();
    let order_rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM orders")
        .fetch_all(orders)
        .await?;
    let disagree = order_rows
        .iter()
        .filter(|(id, status)| {
            let expected = if status == "CONFIRMED" {
                "RESERVED"
            } else {
                "REJECTED"
            };
            decisions.get(id).map(String::as_str) != Some(expected)
        })
        .count();
    inv.push((
        "each order decided exactly once by inventory, matching its status".into(),
        disagree == 0 && decisions.len() == order_rows.len(),
        format!(
            "({} decisions for {} orders, {disagree} disagree)",
            decisions.len(),
            order_rows.len()
        ),
    ));
    let unconfirmed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.message WHERE msg_type = 'OrderPlaced' AND status <> 'completed'",
    )
    .fetch_one(orders)
    .await?;
    inv.push((
        "every OrderPlaced confirmed end to end".into(),
        unconfirmed == 0,
        format!("({unconfirmed} not completed)"),
    ));
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.parked")
        .fetch_one(orders)
        .await?;
    let parked_inv: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.parked")
        .fetch_one(inventory)
        .await?;
    inv.push((
        "no message parked".into(),
        parked + parked_inv == 0,
        format!("({})", parked + parked_inv),
    ));

    let (records, distinct) = wire_counts(brokers)?;
    Ok(Report {
        confirmed,
        cancelled,
        records,
        distinct,
        invariants: inv,
    })
}

/// Produces copies (same key, value and headers) of up to `n` records
/// already in `topic`: duplicates on the wire, as at-least-once delivery
/// makes them.
async fn replay_records(brokers: &str, topic: &str, n: usize) -> anyhow::Result<usize> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("demo-replay-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut copies = Vec::new();
    let started = Instant::now();
    while copies.len() < n && started.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers: Vec<(String, Vec<u8>)> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            copies.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                headers,
            ));
        }
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    for (key, payload, headers) in &copies {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(h);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(copies.len())
}

/// Every record of both topics, and how many distinct outbox ids they carry.
fn wire_counts(brokers: &str) -> anyhow::Result<(usize, usize)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("demo-audit-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[ORDER_EVENTS, INVENTORY_EVENTS])?;
    let mut ids = HashSet::new();
    let mut records = 0;
    let mut quiet_since = Instant::now();
    let started = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3)
        && started.elapsed() < Duration::from_secs(60)
    {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                records += 1;
                quiet_since = Instant::now();
                if let Some(h) = m.headers() {
                    if let Some(id) = h
                        .iter()
                        .find(|h| h.key == outbox::headers::ID)
                        .and_then(|h| h.value)
                    {
                        ids.insert(id.to_vec());
                    }
                }
            }
            Some(Err(e)) => eprintln!("audit consumer: {e}"),
            None => {}
        }
    }
    Ok((records, ids.len()))
}
