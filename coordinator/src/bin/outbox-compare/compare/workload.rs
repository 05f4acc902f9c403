//! The workload: `--orders` orders placed by `--clients` concurrent
//! clients with one protocol, timed from the client's start to the order
//! committing, to the stock being reserved, and for how long the stock
//! row stayed locked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_coordinator::{
    Agent, DecisionLog, ScratchDatabases, StockApplier, ThreePhase, TwoPhase, Work,
};
use uuid::Uuid;

use super::{sku, Args, AGENT_REQUEST_TIMEOUT, QTY};

/// What one protocol's workload measured.
#[derive(Default)]
pub struct Samples {
    /// Client start to the order committed, per order placed.
    pub place: Vec<Duration>,
    /// Client start to the stock reserved (outbox only: 2PC and 3PC
    /// reserve it as they place the order).
    pub reserved: Vec<Duration>,
    /// How long the stock row stayed locked.
    pub lock: Vec<Duration>,
    /// Orders that failed.
    pub failed: usize,
    /// The whole workload.
    pub wall: Duration,
}

async fn seed(db: &ScratchDatabases, args: &Args) -> anyhow::Result<()> {
    for i in 0..args.skus {
        db.seed_stock(&sku(i, args.skus), (args.orders * 2) as i32)
            .await?;
    }
    Ok(())
}

/// Places `--orders` orders with the protocol `name` (`outbox`, `2PC` or
/// `3PC`) on fresh databases and returns the timings.
pub async fn workload(name: &str, db: &ScratchDatabases, args: &Args) -> anyhow::Result<Samples> {
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
