//! (3) Write overhead: the order transaction alone, with one outbox
//! message, with one while a relay waits (every commit notifies), and with
//! a plain second row of the same width.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use outbox::{Message, Outbox};
use serde::Serialize;

use super::{progress, Ctx};
use crate::db::Db;
use crate::workload;

#[derive(Debug, Clone, Serialize)]
pub struct OverheadResult {
    pub clients: usize,
    pub seconds_per_variant: f64,
    pub rounds: usize,
    pub alone_tx: u64,
    pub with_outbox_tx: u64,
    pub alone_rate: f64,
    pub with_outbox_rate: f64,
    /// alone / with outbox: how much slower the outbox makes the write.
    pub ratio: f64,
    /// Diagnostic: with the outbox message while a relay waits for work,
    /// so every commit notifies (the worst case for writers).
    pub waiting_tx: u64,
    pub waiting_rate: f64,
    pub waiting_ratio: f64,
    /// Floor: the order plus a second INSERT of the same width into a
    /// table with only a primary key: what any second statement costs.
    pub floor_tx: u64,
    pub floor_rate: f64,
    pub floor_ratio: f64,
}

/// The write-overhead comparison on a fresh database (dropped after),
/// `clients` connections, `secs` per variant.
pub async fn overhead(ctx: &Ctx, clients: usize, secs: f64) -> Result<OverheadResult> {
    let db = ctx
        .server
        .fresh_db("outbox_bench_overhead", clients as u32)
        .await?;
    let result = overhead_in(ctx, &db, clients, secs).await;
    ctx.server.drop_db(db).await;
    result
}

/// Registers (or removes) a relay that waits for work, as an idle relay in
/// `--wakeup notify` mode does: while it is there, every insert notifies.
async fn set_relay_waiting(db: &Db, waiting: bool) -> Result<()> {
    let id = uuid::Uuid::nil();
    if waiting {
        sqlx::query(
            "INSERT INTO outbox.relay (id, name, waiting_until) \
             VALUES ($1, 'bench', now() + interval '1 hour')",
        )
        .bind(id)
        .execute(db.pool())
        .await?;
    } else {
        sqlx::query("DELETE FROM outbox.relay WHERE id = $1")
            .bind(id)
            .execute(db.pool())
            .await?;
    }
    Ok(())
}

/// What each client's transaction writes besides its order row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Extra {
    Nothing,
    OutboxMessage,
    PlainRow,
}

async fn overhead_in(ctx: &Ctx, db: &Db, clients: usize, secs: f64) -> Result<OverheadResult> {
    sqlx::query(
        "CREATE TABLE bench_order (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         customer bigint NOT NULL, sku text NOT NULL, qty int NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(db.pool())
    .await?;
    sqlx::query(
        "CREATE TABLE bench_plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         topic text NOT NULL, msg_key bytea, payload bytea, \
         created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(db.pool())
    .await?;
    let topic = ctx.topic("orders");
    // Alternate the variants in rounds, so drift from other work on the
    // machine hits all alike.
    let rounds = 3;
    let slice = Duration::from_secs_f64(secs / rounds as f64);
    // Warm up (connections, prepared statements, caches).
    let warm = Duration::from_secs_f64((secs / 10.0).clamp(0.2, 1.0));
    for extra in [Extra::Nothing, Extra::OutboxMessage, Extra::PlainRow] {
        write_load(db, &topic, clients, extra, warm).await?;
    }
    // [alone, with outbox, with outbox while a relay waits, plain second row]:
    // (transactions, seconds)
    let variants = [
        (Extra::Nothing, false),
        (Extra::OutboxMessage, false),
        (Extra::OutboxMessage, true),
        (Extra::PlainRow, false),
    ];
    let mut totals = [(0u64, 0f64); 4];
    for _ in 0..rounds {
        for ((extra, waiting), total) in variants.iter().zip(totals.iter_mut()) {
            if *waiting {
                set_relay_waiting(db, true).await?;
            }
            let (n, t) = write_load(db, &topic, clients, *extra, slice).await?;
            if *waiting {
                set_relay_waiting(db, false).await?;
            }
            total.0 += n;
            total.1 += t;
        }
    }
    let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.message")
        .fetch_one(db.pool())
        .await?;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_order")
        .fetch_one(db.pool())
        .await?;
    let [alone, with, waiting, floor] = totals;
    // Every committed transaction wrote its order, and its message when it
    // had one (the warm-up wrote some more of both).
    ensure!(
        outbox_rows >= (with.0 + waiting.0) as i64
            && orders >= (alone.0 + with.0 + waiting.0 + floor.0) as i64,
        "write overhead: {outbox_rows} messages and {orders} orders for {totals:?} transactions"
    );
    let rate = |(n, t): (u64, f64)| n as f64 / t;
    let r = OverheadResult {
        clients,
        seconds_per_variant: secs,
        rounds,
        alone_tx: alone.0,
        with_outbox_tx: with.0,
        alone_rate: rate(alone),
        with_outbox_rate: rate(with),
        ratio: rate(alone) / rate(with),
        waiting_tx: waiting.0,
        waiting_rate: rate(waiting),
        waiting_ratio: rate(alone) / rate(waiting),
        floor_tx: floor.0,
        floor_rate: rate(floor),
        floor_ratio: rate(alone) / rate(floor),
    };
    progress(format!(
        "write overhead: {:.0} tx/s alone, {:.0} with the outbox (ratio {:.3}), \
         {:.0} while a relay waits (ratio {:.3}), {:.0} with a plain second row (ratio {:.3})",
        r.alone_rate,
        r.with_outbox_rate,
        r.ratio,
        r.waiting_rate,
        r.waiting_ratio,
        r.floor_rate,
        r.floor_ratio
    ));
    Ok(r)
}

/// `clients` connections commit business transactions (one order row,
/// plus `extra`) back to back for `d`. Returns the transactions committed
/// and the seconds it took.
async fn write_load(
    db: &Db,
    topic: &str,
    clients: usize,
    extra: Extra,
    d: Duration,
) -> Result<(u64, f64)> {
    let committed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + d;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let pool = db.pool().clone();
        let topic = topic.to_owned();
        let committed = committed.clone();
        tasks.push(tokio::spawn(async move {
            let outbox = Outbox::new();
            let mut i = c as u64;
            while Instant::now() < deadline {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO bench_order (customer, sku, qty) VALUES ($1, $2, $3)")
                    .bind((i % workload::KEYS) as i64)
                    .bind(format!("SKU-{}", i % 97))
                    .bind(1 + (i % 5) as i32)
                    .execute(&mut *tx)
                    .await?;
                match extra {
                    Extra::Nothing => {}
                    Extra::OutboxMessage => {
                        outbox
                            .enqueue(
                                &mut *tx,
                                Message::new(&topic, workload::payload(i)).key(workload::key(i)),
                            )
                            .await?;
                    }
                    Extra::PlainRow => {
                        sqlx::query(
                            "INSERT INTO bench_plain (topic, msg_key, payload) VALUES ($1, $2, $3)",
                        )
                        .bind(&topic)
                        .bind(workload::key(i).into_bytes())
                        .bind(workload::payload(i).into_bytes())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                committed.fetch_add(1, Ordering::Relaxed);
                i += clients as u64;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((
        committed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}
