//! Fault (b): 20 orders per protocol with the inventory side pointed at a
//! closed port; which orders are accepted, how slow a refusal is, and
//! what catches up when the inventory comes back.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use outbox_coordinator::{
    Agent, AgentClient, Participant, ScratchDatabases, StockApplier, ThreePhase, TwoPhase, Work,
};
use sqlx::mysql::MySqlPoolOptions;
use uuid::Uuid;

use crate::compare::{ms, AGENT_REQUEST_TIMEOUT};

/// Writes the section.
pub(super) async fn run(
    r: &mut String,
    db: &ScratchDatabases,
    tpc: &TwoPhase,
    tpc3: &ThreePhase,
    orders_agent: &Agent,
) -> anyhow::Result<()> {
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
    Ok(())
}
