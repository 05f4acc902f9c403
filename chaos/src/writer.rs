//! The writer: transactions of 1–4 messages on random keys through the
//! library, each message also recorded in `chaos_committed` in the same
//! transaction; 5% rolled back on purpose. Survives database restarts:
//! a transaction that failed before COMMIT is retried, one whose COMMIT
//! failed is resolved by looking its ids up after reconnecting.
//!
//! Each writer task owns a disjoint set of keys and runs one transaction at
//! a time, so per key, commit order is `n` order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// What the writers did.
#[derive(Debug, Default, Clone)]
pub struct WriterStats {
    /// Messages in committed transactions.
    pub committed: u64,
    /// Committed transactions.
    pub committed_tx: u64,
    /// Transactions rolled back on purpose.
    pub rolled_back_tx: u64,
    /// Messages in transactions rolled back on purpose.
    pub rolled_back: u64,
    /// Transactions that failed before COMMIT and were retried.
    pub retried_tx: u64,
    /// COMMITs whose outcome had to be looked up.
    pub unknown_commits: u64,
    /// Of those, how many had committed.
    pub unknown_committed: u64,
    /// The last error seen, for the log.
    pub last_error: Option<String>,
}

/// One writer's configuration.
#[derive(Debug, Clone)]
pub struct WriterSpec {
    /// Writer index (for messages).
    pub index: usize,
    /// Topic to write to.
    pub topic: String,
    /// The key numbers this writer owns.
    pub keys: Vec<u32>,
    /// Messages per second for this writer.
    pub rate: f64,
    /// Share of transactions rolled back on purpose.
    pub rollback_share: f64,
    /// RNG seed.
    pub seed: u64,
}

enum TxError {
    /// Failed before COMMIT was sent: nothing committed.
    Before(anyhow::Error),
    /// COMMIT itself failed: the outcome is unknown. The ids it wrote.
    AtCommit(anyhow::Error, Vec<Uuid>),
}

/// The `key-{k}` of key number `k`.
pub fn key_name(k: u32) -> String {
    format!("key-{k}")
}

/// Runs one writer until `stop` turns true; a transaction in progress is
/// finished (or, if it cannot commit, dropped: nothing of it committed).
pub async fn run_writer(
    pool: PgPool,
    spec: WriterSpec,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Mutex<WriterStats>>,
) -> Result<()> {
    let outbox = outbox::Outbox::new();
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut next: HashMap<u32, i64> = spec.keys.iter().map(|&k| (k, 1)).collect();
    let mut next_at = Instant::now();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let now = Instant::now();
        // Never try to catch up more than a second after an outage.
        if next_at + Duration::from_secs(1) < now {
            next_at = now - Duration::from_secs(1);
        }
        if next_at > now {
            tokio::select! {
                _ = tokio::time::sleep_until(next_at.into()) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
        let size = rng.random_range(1..=4usize);
        let rollback = rng.random_bool(spec.rollback_share);
        let mut keys = Vec::with_capacity(size);
        let mut ns = Vec::with_capacity(size);
        let mut in_tx: HashMap<u32, i64> = HashMap::new();
        for _ in 0..size {
            let k = spec.keys[rng.random_range(0..spec.keys.len())];
            let offset = in_tx.entry(k).or_insert(0);
            ns.push(next[&k] + *offset);
            *offset += 1;
            keys.push(k);
        }
        next_at += Duration::from_secs_f64(size as f64 / spec.rate);

        // Attempt until the transaction is decided.
        let mut failing_since: Option<Instant> = None;
        loop {
            let attempt = try_tx(&pool, &outbox, &spec.topic, &keys, &ns, rollback).await;
            let outcome = match attempt {
                Ok(outcome) => Some(outcome),
                Err(TxError::Before(e)) => {
                    let mut s = stats.lock().expect("stats lock");
                    s.retried_tx += 1;
                    s.last_error = Some(format!("{e:#}"));
                    None
                }
                Err(TxError::AtCommit(e, ids)) => {
                    tracing::info!(writer = spec.index, "COMMIT failed ({e:#}); looking it up");
                    stats.lock().expect("stats lock").unknown_commits += 1;
                    let committed = resolve(&pool, &ids).await?;
                    let mut s = stats.lock().expect("stats lock");
                    s.last_error = Some(format!("COMMIT: {e:#}"));
                    if committed {
                        s.unknown_committed += 1;
                        Some(Outcome::Committed)
                    } else {
                        s.retried_tx += 1;
                        None
                    }
                }
            };
            match outcome {
                Some(Outcome::Committed) => {
                    for (&k, &n) in keys.iter().zip(&ns) {
                        next.insert(k, n + 1);
                    }
                    let mut s = stats.lock().expect("stats lock");
                    s.committed += size as u64;
                    s.committed_tx += 1;
                    break;
                }
                Some(Outcome::RolledBack) => {
                    let mut s = stats.lock().expect("stats lock");
                    s.rolled_back += size as u64;
                    s.rolled_back_tx += 1;
                    break;
                }
                None => {
                    // Nothing committed. At the end of the run, give up on
                    // it rather than wait for the database.
                    if *stop.borrow() {
                        return Ok(());
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(120) {
                        bail!(
                            "writer {}: transactions kept failing for 2 minutes; last error: {:?}",
                            spec.index,
                            stats.lock().expect("stats lock").last_error
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

enum Outcome {
    Committed,
    RolledBack,
}

async fn try_tx(
    pool: &PgPool,
    outbox: &outbox::Outbox,
    topic: &str,
    keys: &[u32],
    ns: &[i64],
    rollback: bool,
) -> std::result::Result<Outcome, TxError> {
    let before = |e: anyhow::Error| TxError::Before(e);
    let mut tx = pool.begin().await.map_err(|e| before(e.into()))?;
    let names: Vec<String> = keys.iter().map(|&k| key_name(k)).collect();
    let messages = names
        .iter()
        .zip(ns)
        .map(|(key, n)| outbox::Message::new(topic, format!("{key}:{n}")).key(key.as_str()));
    let ids: Vec<Uuid> = outbox
        .enqueue_all(&mut *tx, messages)
        .await
        .map_err(|e| before(e.into()))?
        .into_iter()
        .map(|id| id.0)
        .collect();
    sqlx::query(
        "INSERT INTO chaos_committed (key, n, id) \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::uuid[])",
    )
    .bind(&names)
    .bind(ns)
    .bind(&ids)
    .execute(&mut *tx)
    .await
    .map_err(|e| before(e.into()))?;
    if rollback {
        // Whatever the rollback's own result, nothing of it committed.
        let _ = tx.rollback().await;
        return Ok(Outcome::RolledBack);
    }
    if let Err(e) = tx.commit().await {
        return Err(TxError::AtCommit(e.into(), ids));
    }
    Ok(Outcome::Committed)
}

/// Whether the transaction that wrote `ids` committed, asked again and
/// again until the database answers (2 minutes at most). A committed
/// transaction's rows are all there; a failed one's none.
async fn resolve(pool: &PgPool, ids: &[Uuid]) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM chaos_committed WHERE id = ANY($1)")
                .bind(ids)
                .fetch_one(pool)
                .await;
        match found {
            Ok(0) => return Ok(false),
            Ok(n) if n == ids.len() as i64 => return Ok(true),
            Ok(n) => bail!(
                "{n} of {} rows of one transaction are in chaos_committed: not atomic?",
                ids.len()
            ),
            Err(e) => {
                if Instant::now() > deadline {
                    bail!("could not resolve a COMMIT's outcome within 2 minutes: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
