//! The comparison run: the same order workload with the outbox, 2PC and
//! 3PC, then the fault scenarios, each run for real; a markdown report.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use outbox_coordinator::{
    Agent, AgentClient, DecisionLog, Faults, Gid, Participant, ScratchDatabases, StockApplier,
    ThreePhase, TwoPhase, Work,
};
use outbox_testkit::ChildGuard;
use sqlx::mysql::MySqlPoolOptions;
use uuid::Uuid;

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
/// How long a fault scenario watches a blocked row before giving up.
const OBSERVE: Duration = Duration::from_secs(4);

#[derive(Default)]
struct Samples {
    place: Vec<Duration>,
    reserved: Vec<Duration>,
    lock: Vec<Duration>,
    failed: usize,
    wall: Duration,
}

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

async fn seed(db: &ScratchDatabases, args: &Args) -> anyhow::Result<()> {
    for i in 0..args.skus {
        db.seed_stock(&sku(i, args.skus), (args.orders * 2) as i32)
            .await?;
    }
    Ok(())
}

async fn workload(name: &str, db: &ScratchDatabases, args: &Args) -> anyhow::Result<Samples> {
    seed(db, args).await?;
    let samples = Arc::new(Mutex::new(Samples::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let started: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();

    // Protocol-specific state.
    let outbox = outbox::Outbox::new();
    let mut applier = None;
    let mut agents = Vec::new();
    let mut tpc = None;
    match name {
        "outbox" => {
            outbox::migrate(&db.orders).await?;
            let a = StockApplier::new(db.orders.clone(), db.inventory.clone());
            let (samples, started, total) = (samples.clone(), started.clone(), args.orders);
            applier = Some(tokio::spawn(async move {
                let mut done = 0;
                let deadline = Instant::now() + Duration::from_secs(120);
                while done < total && Instant::now() < deadline {
                    let applied = a.apply_batch(50).await?;
                    if applied.is_empty() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let starts = started.lock().unwrap();
                    let mut s = samples.lock().unwrap();
                    for x in applied {
                        done += 1;
                        if let Some(t0) = starts.get(&x.order_id) {
                            s.reserved.push(x.reserved_at - *t0);
                        }
                        s.lock.push(x.lock_held);
                    }
                }
                anyhow::Ok(())
            }));
        }
        "2PC" => {
            let log = DecisionLog::new(db.coordinator.clone());
            log.migrate().await?;
            tpc = Some(TwoPhase::new(db.name(), log)?);
        }
        _ => {
            let timeout = Duration::from_millis(args.agent_timeout_ms);
            agents.push(Agent::start(db.orders_participant(), timeout, "127.0.0.1:0").await?);
            agents.push(Agent::start(db.inventory_participant(), timeout, "127.0.0.1:0").await?);
        }
    }
    let agents = Arc::new(agents);
    let tpc3 = ThreePhase::new(db.name())?;

    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (next, samples, started, db_orders) = (
            next.clone(),
            samples.clone(),
            started.clone(),
            db.orders.clone(),
        );
        let (outbox, tpc, tpc3, agents) =
            (outbox.clone(), tpc.clone(), tpc3.clone(), agents.clone());
        let (orders_p, inventory_p) = (db.orders_participant(), db.inventory_participant());
        let (total, skus, name) = (args.orders, args.skus, name.to_owned());
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let (order_id, sku) = (Uuid::now_v7(), sku(i, skus));
                let start = Instant::now();
                started.lock().unwrap().insert(order_id, start);
                let result: Result<Option<Duration>, outbox_coordinator::Error> =
                    match name.as_str() {
                        "outbox" => outbox_coordinator::place_order_outbox(
                            &db_orders, &outbox, order_id, &sku, QTY,
                        )
                        .await
                        .map(|()| None),
                        "2PC" => tpc
                            .as_ref()
                            .unwrap()
                            .run(&[
                                (
                                    orders_p.clone(),
                                    Work::InsertOrder {
                                        order_id,
                                        sku: sku.clone(),
                                        qty: QTY,
                                    },
                                ),
                                (
                                    inventory_p.clone(),
                                    Work::ReserveStock {
                                        order_id,
                                        sku,
                                        qty: QTY,
                                    },
                                ),
                            ])
                            .await
                            .map(|o| o.lock_held),
                        _ => tpc3
                            .run(&[
                                (
                                    agents[0].client(AGENT_REQUEST_TIMEOUT),
                                    Work::InsertOrder {
                                        order_id,
                                        sku: sku.clone(),
                                        qty: QTY,
                                    },
                                ),
                                (
                                    agents[1].client(AGENT_REQUEST_TIMEOUT),
                                    Work::ReserveStock {
                                        order_id,
                                        sku,
                                        qty: QTY,
                                    },
                                ),
                            ])
                            .await
                            .map(|gid| agents[1].resolution(&gid).and_then(|r| r.lock_held)),
                    };
                let elapsed = start.elapsed();
                let mut s = samples.lock().unwrap();
                match result {
                    Ok(lock) => {
                        s.place.push(elapsed);
                        s.lock.extend(lock);
                    }
                    Err(e) => {
                        eprintln!("order failed: {e}");
                        s.failed += 1;
                    }
                }
            }
        }));
    }
    for c in clients {
        c.await?;
    }
    let wall = t0.elapsed();
    if let Some(a) = applier {
        a.await??;
    }
    if !agents.is_empty() {
        // Agents resolve in the DoCommit request; nothing should be pending.
        let deadline = Instant::now() + Duration::from_secs(10);
        while agents.iter().any(|a| a.in_flight() > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut s = std::mem::take(&mut *samples.lock().unwrap());
    s.wall = wall;
    Ok(s)
}

/// Tries to update the stock row with a 1 s lock wait; true if it got the lock.
async fn probe(db: &ScratchDatabases, sku: &str) -> anyhow::Result<bool> {
    let mut conn = db.inventory.acquire().await?;
    sqlx::Executor::execute(&mut *conn, "SET SESSION innodb_lock_wait_timeout = 1").await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let r = sqlx::query("UPDATE stock SET available = available WHERE sku = ?")
        .bind(sku)
        .execute(&mut *tx)
        .await;
    tx.rollback().await?;
    match r {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.message().contains("Lock wait timeout") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Probes until the row is free or `limit` passes; returns how long it
/// stayed blocked (None: still blocked at `limit`).
async fn blocked_for(
    db: &ScratchDatabases,
    sku: &str,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    while since.elapsed() < limit {
        if probe(db, sku).await? {
            return Ok(Some(since.elapsed()));
        }
    }
    Ok(None)
}

/// Starts this binary with `args` and waits (30 s at most) for a stdout
/// line starting with `marker`; returns the child, still running and
/// killed when dropped, and the line.
async fn spawn_child(args: &[String], marker: &str) -> anyhow::Result<(ChildGuard, String)> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args).stdout(Stdio::piped());
    let mut child = ChildGuard::spawn("coordinator child", &mut cmd)?;
    let line = child
        .wait_for_line(marker, Duration::from_secs(30))
        .await
        .context("child did not reach its stop point")?;
    Ok((child, line))
}

async fn order_exists(db: &ScratchDatabases, sku: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE sku = $1")
            .bind(sku)
            .fetch_one(&db.orders)
            .await?
            > 0,
    )
}

fn show(r: Option<outbox_coordinator::Resolved>) -> String {
    match r {
        Some(r) => format!(
            "{}{}",
            if r.committed { "commit" } else { "abort" },
            if r.by_timeout {
                " by its own timeout"
            } else {
                " on the coordinator's message"
            }
        ),
        None => "unresolved".into(),
    }
}

async fn fault_scenarios(db: &ScratchDatabases, args: &Args) -> anyhow::Result<String> {
    let mut r = String::new();
    let log = DecisionLog::new(db.coordinator.clone());
    log.migrate().await?;
    let participants = [db.orders_participant(), db.inventory_participant()];
    let tpc = TwoPhase::new(db.name(), log)?;

    writeln!(
        r,
        "## Fault (a): coordinator SIGKILLed after the participants prepared\n"
    )?;
    writeln!(
        r,
        "A coordinator child process places one order and is SIGKILLed at the point given. A probe transaction then \
         tries to `UPDATE` the same stock row with a 1 s lock wait, repeatedly, for up to {} s.\n",
        OBSERVE.as_secs()
    )?;
    writeln!(r, "| protocol | killed after | stock row blocked | decision | resolved by | order / stock after |\n| --- | --- | --- | --- | --- | --- |")?;
    for (stop, marker) in [("prepare", "PREPARED"), ("decision", "DECIDED")] {
        let s = format!("A{stop}");
        db.seed_stock(&s, 10).await?;
        let child_args: Vec<String> = [
            "child2pc",
            "--orders-url",
            &db.orders_url(),
            "--inventory-url",
            &db.inventory_url(),
            "--coordinator-url",
            &db.coordinator_url(),
            "--prefix",
            db.name(),
            "--sku",
            &s,
            "--stop-after",
            stop,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        let (mut child, _) = spawn_child(&child_args, marker).await?;
        child.kill();
        let killed = Instant::now();
        let blocked = blocked_for(db, &s, killed, OBSERVE).await?;
        let t = Instant::now();
        let rec = loop {
            let rec = tpc.recover(&participants).await?;
            if rec.is_complete() || t.elapsed() > Duration::from_secs(20) {
                break rec;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let after = blocked_for(db, &s, Instant::now(), Duration::from_secs(3)).await?;
        writeln!(
            r,
            "| 2PC | {} | {} | {} | recovery (restarted coordinator), {} after it started; row free afterwards: {} | order {}, stock {} |",
            if stop == "prepare" { "prepare (no decision logged)" } else { "commit decision logged" },
            match blocked {
                Some(d) => format!("{:.1} s", d.as_secs_f64()),
                None => format!("still blocked after {} s (until recovery)", OBSERVE.as_secs()),
            },
            if !rec.committed.is_empty() { "commit (logged)" } else { "abort (presumed: not logged)" },
            ms(t.elapsed()),
            if after.is_some() { "yes" } else { "NO" },
            if order_exists(db, &s).await? { "committed" } else { "absent" },
            db.stock(&s).await?,
        )?;
    }
    let timeout = Duration::from_millis(args.agent_timeout_ms);
    let orders_agent = Agent::start(db.orders_participant(), timeout, "127.0.0.1:0").await?;
    let inventory_agent = Agent::start(db.inventory_participant(), timeout, "127.0.0.1:0").await?;
    for (stop, marker) in [
        ("can-commit", "CANCOMMITTED"),
        ("pre-commit", "PRECOMMITTED"),
    ] {
        let s = format!("B{stop}");
        db.seed_stock(&s, 10).await?;
        let child_args: Vec<String> = [
            "child3pc",
            "--orders-agent",
            orders_agent.url(),
            "--inventory-agent",
            inventory_agent.url(),
            "--prefix",
            db.name(),
            "--sku",
            &s,
            "--stop-after",
            stop,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        let (mut child, line) = spawn_child(&child_args, marker).await?;
        let gid = Gid::parse(line.split_whitespace().nth(1).context("gid")?)?;
        child.kill();
        let killed = Instant::now();
        let blocked = blocked_for(db, &s, killed, OBSERVE + timeout).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while (orders_agent.resolution(&gid).is_none()
            || inventory_agent.resolution(&gid).is_none())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writeln!(
            r,
            "| 3PC | {} | {} | orders: {}, inventory: {} | agents' timers ({} ms), no coordinator needed | order {}, stock {} |",
            if stop == "can-commit" { "CanCommit (both voted yes, prepared)" } else { "PreCommit (both acknowledged)" },
            match blocked {
                Some(d) => format!("{:.1} s", d.as_secs_f64()),
                None => "still blocked".into(),
            },
            show(orders_agent.resolution(&gid)),
            show(inventory_agent.resolution(&gid)),
            args.agent_timeout_ms,
            if order_exists(db, &s).await? { "committed" } else { "absent" },
            db.stock(&s).await?,
        )?;
    }
    writeln!(
        r,
        "| outbox | after the local commit | never blocked by the order service: the only stock lock is the applier's own local transaction | the order committed alone; stock follows | the applier, whenever it runs | – |"
    )?;

    writeln!(r, "\n## Fault (b): inventory database unreachable\n")?;
    writeln!(r, "20 orders each, with the inventory side pointed at a closed port (2PC: the MariaDB participant; 3PC: the inventory agent; outbox: the applier).\n")?;
    let closed = outbox_testkit::free_port()?;
    let s = "Cdown".to_string();
    db.seed_stock(&s, 100).await?;
    let dead_pool = MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy(&format!("mysql://root@127.0.0.1:{closed}/nothing"))?;
    let dead = Participant::mariadb("inventory", dead_pool);
    let mut accepted = [0usize; 3];
    let mut fail_latency = [Duration::ZERO; 3];
    let outbox = outbox::Outbox::new();
    outbox::migrate(&db.orders).await?;
    let dead_agent = AgentClient::new(format!("http://127.0.0.1:{closed}"), AGENT_REQUEST_TIMEOUT);
    let tpc3 = ThreePhase::new(db.name())?;
    for _ in 0..20 {
        let order_id = Uuid::now_v7();
        let t = Instant::now();
        if outbox_coordinator::place_order_outbox(&db.orders, &outbox, order_id, &s, 1)
            .await
            .is_ok()
        {
            accepted[0] += 1;
        }
        fail_latency[0] = fail_latency[0].max(t.elapsed());
        let order_id = Uuid::now_v7();
        let t = Instant::now();
        let shares = [
            (
                db.orders_participant(),
                Work::InsertOrder {
                    order_id,
                    sku: s.clone(),
                    qty: 1,
                },
            ),
            (
                dead.clone(),
                Work::ReserveStock {
                    order_id,
                    sku: s.clone(),
                    qty: 1,
                },
            ),
        ];
        if tpc.run(&shares).await.is_ok() {
            accepted[1] += 1;
        }
        fail_latency[1] = fail_latency[1].max(t.elapsed());
        let order_id = Uuid::now_v7();
        let t = Instant::now();
        let shares = [
            (
                orders_agent.client(AGENT_REQUEST_TIMEOUT),
                Work::InsertOrder {
                    order_id,
                    sku: s.clone(),
                    qty: 1,
                },
            ),
            (
                dead_agent.clone(),
                Work::ReserveStock {
                    order_id,
                    sku: s.clone(),
                    qty: 1,
                },
            ),
        ];
        if tpc3.run(&shares).await.is_ok() {
            accepted[2] += 1;
        }
        fail_latency[2] = fail_latency[2].max(t.elapsed());
    }
    // The inventory database comes back: the outbox backlog drains.
    let t = Instant::now();
    let applier = StockApplier::new(db.orders.clone(), db.inventory.clone());
    let mut drained = 0;
    while drained < accepted[0] && t.elapsed() < Duration::from_secs(30) {
        drained += applier
            .apply_batch(50)
            .await?
            .iter()
            .filter(|a| a.reserved)
            .count();
    }
    writeln!(
        r,
        "| protocol | orders accepted | slowest attempt | afterwards |\n| --- | --- | --- | --- |"
    )?;
    writeln!(
        r,
        "| outbox | {}/20 | {} | inventory back: {drained} reservations applied in {}; stock {} |",
        accepted[0],
        ms(fail_latency[0]),
        ms(t.elapsed()),
        db.stock(&s).await?
    )?;
    writeln!(r, "| 2PC | {}/20 | {} | nothing to catch up: the orders were refused (PostgreSQL branch rolled back) |", accepted[1], ms(fail_latency[1]))?;
    writeln!(r, "| 3PC | {}/20 | {} | refused; the orders agent aborted its branch on the coordinator's Abort |", accepted[2], ms(fail_latency[2]))?;

    writeln!(
        r,
        "\n## Fault (c): a participant cut off from the coordinator during PreCommit (3PC)\n"
    )?;
    let s = "Dsplit".to_string();
    db.seed_stock(&s, 10).await?;
    orders_agent.set_faults(Faults {
        deaf_after_pre_commit: true,
        ..Faults::default()
    });
    inventory_agent.set_faults(Faults {
        lose_pre_commit: true,
        ..Faults::default()
    });
    let order_id = Uuid::now_v7();
    let shares = [
        (
            orders_agent.client(AGENT_REQUEST_TIMEOUT),
            Work::InsertOrder {
                order_id,
                sku: s.clone(),
                qty: 1,
            },
        ),
        (
            inventory_agent.client(AGENT_REQUEST_TIMEOUT),
            Work::ReserveStock {
                order_id,
                sku: s.clone(),
                qty: 1,
            },
        ),
    ];
    let outcome = tpc3.run(&shares).await;
    let in_doubt = db.orders_participant().prepared(db.name()).await?;
    let gid = in_doubt.first().cloned();
    let deadline = Instant::now() + Duration::from_secs(10);
    if let Some(gid) = &gid {
        while (orders_agent.resolution(gid).is_none() || inventory_agent.resolution(gid).is_none())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (o, i) = match &gid {
        Some(g) => (orders_agent.resolution(g), inventory_agent.resolution(g)),
        None => (None, None),
    };
    let order = order_exists(db, &s).await?;
    let stock = db.stock(&s).await?;
    writeln!(
        r,
        "The orders agent acknowledges PreCommit and then hears nothing more; the inventory agent's PreCommit is lost, \
         so the coordinator decides **abort** (`{}`) and sends Abort to both; only inventory receives it.\n",
        outcome.err().map(|e| e.to_string()).unwrap_or_else(|| "it committed?".into())
    )?;
    writeln!(r, "| participant | outcome |\n| --- | --- |")?;
    writeln!(r, "| orders agent | {} |", show(o))?;
    writeln!(r, "| inventory agent | {} |", show(i))?;
    writeln!(
        r,
        "\nResult: order {}, stock {} (of 10). **{}**. 2PC would not guess here: a participant that prepared and lost \
         the coordinator stays prepared (locks held) until it hears the decision, which is the blocking 3PC set out \
         to remove; 3PC's timer trades it for this disagreement. The outbox has no cross-database decision to get \
         wrong: the order commits locally and the stock is reserved (or the order compensated) by the consumer.",
        if order { "committed" } else { "absent" },
        stock,
        if order && stock == 10 { "The participants disagree: an order exists with no stock reserved" } else { "No disagreement this time" }
    )?;
    orders_agent.stop().await;
    inventory_agent.stop().await;
    Ok(r)
}
