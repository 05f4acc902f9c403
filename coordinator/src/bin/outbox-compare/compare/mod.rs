//! The comparison run: the same order workload with the outbox, 2PC and
//! 3PC, then the fault scenarios, each run for real; a markdown report.

mod faults;
mod workload;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use outbox_coordinator::ScratchDatabases;

use faults::fault_scenarios;
use workload::workload;

/// Arguments of `outbox-compare run`.
#[derive(clap::Args)]
pub struct Args {
    /// PostgreSQL server (orders and coordinator databases are created on it).
    #[arg(
        long,
        env = "OUTBOX_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg_url: String,
    /// MariaDB server (the inventory database is created on it).
    #[arg(
        long,
        env = "OUTBOX_TEST_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306/test"
    )]
    mysql_url: String,
    /// Orders per protocol.
    #[arg(long, default_value_t = 300)]
    orders: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Distinct stock rows (few = hot rows).
    #[arg(long, default_value_t = 2)]
    skus: usize,
    /// The 3PC agents' timeout, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    agent_timeout_ms: u64,
    /// Where to write the report.
    #[arg(long, default_value = "target/compare/report.md")]
    out: PathBuf,
}

const QTY: i32 = 1;
const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
fn pct(v: &[Duration], p: f64) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let mut v = v.to_vec();
    v.sort();
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    ms(v[i])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn sku(i: usize, skus: usize) -> String {
    format!("S{}", i % skus)
}

/// Runs the whole comparison and writes the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut report = String::new();
    let started = Instant::now();
    writeln!(
        report,
        "# Outbox vs 2PC vs 3PC: order/inventory\n\n{} orders per protocol, {} concurrent clients, {} hot stock rows, \
         1 unit per order. Orders: PostgreSQL; inventory: MariaDB (XA); 2PC decision log: PostgreSQL. 3PC agents: \
         HTTP (axum) on 127.0.0.1, timeout {} ms. Outbox: the stock decrement is applied by a loop that reads \
         `outbox.message` directly (no relay, no Kafka), one local MariaDB transaction per message.\n",
        args.orders, args.clients, args.skus, args.agent_timeout_ms
    )?;

    let mut rows = Vec::new();
    for name in ["outbox", "2PC", "3PC"] {
        eprintln!("==> workload: {name}");
        let db = ScratchDatabases::create(
            &args.pg_url,
            &args.mysql_url,
            "cmp",
            (args.clients + 2) as u32,
        )
        .await?;
        let result = workload(name, &db, &args).await;
        let check = consistency(&db, &args).await;
        db.drop_all().await?;
        rows.push((name, result?, check?));
    }
    writeln!(report, "## Placing an order\n")?;
    writeln!(
        report,
        "| protocol | orders/s | p50 place | p99 place | p50 until stock reserved | p99 until stock reserved | p50 stock lock held | p99 stock lock held | failed | consistent |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    for (name, s, check) in &rows {
        let tput = (s.place.len() as f64) / s.wall.as_secs_f64();
        let (r50, r99) = if s.reserved.is_empty() {
            ("= place".to_string(), "= place".to_string())
        } else {
            (pct(&s.reserved, 50.0), pct(&s.reserved, 99.0))
        };
        writeln!(
            report,
            "| {name} | {tput:.0} | {} | {} | {r50} | {r99} | {} | {} | {} | {check} |",
            pct(&s.place, 50.0),
            pct(&s.place, 99.0),
            pct(&s.lock, 50.0),
            pct(&s.lock, 99.0),
            s.failed
        )?;
    }
    writeln!(
        report,
        "\n\"place\": from the client's start to the order being committed (outbox: the local transaction; 2PC/3PC: \
         the whole protocol). \"Stock lock held\": from the stock `UPDATE` returning to `COMMIT PREPARED`/`XA COMMIT` \
         (2PC, 3PC) or the applier's local commit (outbox). \"Consistent\": orders = reservations and stock = initial − \
         reserved.\n"
    )?;

    eprintln!("==> faults");
    let db = ScratchDatabases::create(&args.pg_url, &args.mysql_url, "cmpf", 4).await?;
    let faults = fault_scenarios(&db, &args).await;
    let left = prepared_left(&db).await;
    db.drop_all().await?;
    report.push_str(&faults?);
    writeln!(
        report,
        "\nPrepared transactions left behind after the run: {left}. Run time: {:.0} s.",
        started.elapsed().as_secs_f64()
    )?;
    if left != 0 {
        bail!("prepared transactions left behind");
    }

    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report)?;
    println!("{report}");
    eprintln!("==> report written to {}", args.out.display());
    Ok(())
}

async fn prepared_left(db: &ScratchDatabases) -> usize {
    let mut n = 0;
    for p in [db.orders_participant(), db.inventory_participant()] {
        n += p
            .prepared(db.name())
            .await
            .map(|v| v.len())
            .unwrap_or(usize::MAX / 4);
    }
    n
}

async fn consistency(db: &ScratchDatabases, args: &Args) -> anyhow::Result<String> {
    let orders = db.order_count().await?;
    let reserved = db.reservation_count().await?;
    let mut stock = 0;
    for i in 0..args.skus {
        stock += db.stock(&sku(i, args.skus)).await?;
    }
    let initial = (args.skus * args.orders * 2) as i64;
    let ok = orders == reserved && stock == initial - reserved * QTY as i64;
    Ok(if ok {
        "yes".into()
    } else {
        format!("NO (orders {orders}, reservations {reserved}, stock {stock})")
    })
}
