//! The relay's statements: shard leases, fetching, marking, and the
//! sweeper's upkeep. Each is one round trip for a whole batch, never one
//! per message, and each lives in its own file under `queries/`, named
//! after what it does; the file's first line (`-- outbox-relay: NAME`)
//! travels with the statement, so `pg_stat_statements` shows which one
//! it is.

mod leases;
mod upkeep;

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox::schema::SHARD_COUNT;
use outbox::MessageId;
use sqlx::PgPool;
use uuid::Uuid;

pub use upkeep::Backlog;

/// The text of the statement in `queries/NAME.sql`.
macro_rules! statement {
    ($name:literal) => {
        include_str!(concat!("queries/", $name, ".sql"))
    };
}
pub(crate) use statement;

/// A committed message waiting to be published, as the relay fetched it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingMessage {
    /// Insertion order; per key, messages are published in this order.
    pub seq: i64,
    /// The message id (`outbox-id` header).
    #[sqlx(try_from = "Uuid")]
    pub id: MessageId,
    /// Destination topic.
    pub topic: String,
    /// Record key.
    #[sqlx(rename = "msg_key")]
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Header names, parallel to `header_values`.
    pub header_names: Vec<String>,
    /// Header values, parallel to `header_names`.
    pub header_values: Vec<Vec<u8>>,
    /// Message type (`outbox-type` header).
    #[sqlx(rename = "msg_type")]
    pub message_type: Option<String>,
    /// When it was enqueued (`outbox-created-at` header).
    pub created_at: DateTime<Utc>,
    /// Failed publish attempts so far.
    pub attempts: i32,
}

/// A failed publish, to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The message's `seq`.
    pub seq: i64,
    /// What went wrong, kept in `last_error`.
    pub error: String,
    /// How long until it may be tried again.
    pub retry_in: Duration,
    /// Move it to the dead-letter state instead.
    pub dead: bool,
}

/// The outbox table as the relay sees it. Cheap to clone (wraps a pool).
///
/// All methods are single statements or short transactions and are safe
/// to retry after an error.
#[derive(Debug, Clone)]
pub struct RelayStore {
    pool: PgPool,
}

impl RelayStore {
    /// A store over `pool`.
    pub fn new(pool: PgPool) -> Self {
        RelayStore { pool }
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Up to `limit` pending messages of `shards` that may be published now,
    /// oldest first. A message is left out while an earlier pending message
    /// of the same key is waiting (delay or retry backoff), so a key is
    /// never published out of order and a failing key blocks only itself.
    ///
    /// `exclude_seqs` and `exclude_keys` leave out the batches whose
    /// results are not written yet, and every key that had a failure in
    /// them: until its backoff is recorded, nothing may overtake it.
    ///
    /// `after` skips messages with `seq <= after`: a caller draining a
    /// backlog passes the last `seq` it fetched, so each fetch starts where
    /// the last ended instead of walking again over the index entries of
    /// everything it already published (dead until vacuumed). Order per key
    /// does not depend on it (waiting keys are found wherever they are), but
    /// a message committed late with a lower `seq` is only seen by a fetch
    /// from 0, so callers go back to 0 regularly.
    pub async fn fetch_pending(
        &self,
        shards: &[i16],
        limit: i64,
        after: i64,
        exclude_seqs: &[i64],
        exclude_keys: &[Vec<u8>],
    ) -> sqlx::Result<Vec<PendingMessage>> {
        // `delayed`: keys with a message that was made to wait (delay or
        // backoff) and is still pending, and from where. Such a message
        // holds back the later ones of its key even once it is due, until it is
        // itself published: it may lie below `after`, where this fetch does
        // not look.
        // `delayed` asks for the order of the small message_waiting index
        // (msg_key, seq), so only that index can serve it without a sort
        // (the relay's connections rule sorts out). Written as
        // `min(seq) ... GROUP BY msg_key`, the planner preferred scanning
        // every pending row once the table had statistics (it estimates
        // `available_at > created_at` at a third of the rows): on a
        // 1,000,000-message backlog each fetch then read the whole backlog,
        // for seconds, and the relay lost its leases while it waited.
        // The availability test on `c` is written so no index can serve it:
        // the scan must follow message_pending_seq in seq order and stop at
        // LIMIT, however large the backlog.
        // Shards go in as a 256-bit mask tested with get_bit: O(1) per row,
        // where `shard = ANY(array)` compared each row with every shard held.
        let mut mask = vec![0_u8; (SHARD_COUNT / 8) as usize];
        for &s in shards {
            if (0..SHARD_COUNT).contains(&s) {
                mask[s as usize / 8] |= 1 << (s % 8);
            }
        }
        // Only excluded messages above `after` can be met by this scan; the
        // rest would cost a comparison per row for nothing (`<> ALL` is a
        // linear search).
        let exclude_seqs: Vec<i64> = exclude_seqs
            .iter()
            .copied()
            .filter(|&s| s > after)
            .collect();
        sqlx::query_as::<_, PendingMessage>(statement!("fetch_pending"))
            .bind(mask)
            .bind(limit)
            .bind(&exclude_seqs)
            .bind(exclude_keys)
            .bind(after)
            .fetch_all(&self.pool)
            .await
    }

    /// Writes a settled batch back in one transaction: the messages with
    /// the `published` seqs are kept as published when `keep`, deleted
    /// otherwise (a delete is about three times cheaper: no new row
    /// version, no index entries), or marked awaiting when they wait for
    /// an end-to-end confirmation; each of the `failures` gets its attempt
    /// counted and its retry scheduled, or is dead-lettered.
    ///
    /// The commit does not wait for the WAL flush (`synchronous_commit =
    /// off` for this transaction only). Losing it takes a crash of the
    /// database server itself within the WAL writer's delay (200 ms by
    /// default), and costs only duplicates: the messages are still
    /// pending, so they are published again, which consumers skip by id;
    /// a key's effects keep their order, since its earlier messages were
    /// consumed first. Waiting for the flush made a quarter of the
    /// relay's statement time while draining a backlog its COMMIT
    /// (docs/benchmarks.md). Leases, and everything else the relay
    /// writes, still commit synchronously: a lost lease renewal could let
    /// two relays publish one key.
    pub async fn settle_batch(
        &self,
        published: &[i64],
        failures: &[Failure],
        keep: bool,
    ) -> sqlx::Result<()> {
        if published.is_empty() && failures.is_empty() {
            return Ok(());
        }
        // One round trip for both: BEGIN and the setting go as one simple
        // query.
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await?;
        mark_published(&mut tx, published, keep).await?;
        record_failures(&mut tx, failures).await?;
        tx.commit().await
    }
}

/// Marks published, deletes or marks awaiting (see
/// [`RelayStore::settle_batch`]), in one statement in the usual case.
async fn mark_published(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    seqs: &[i64],
    keep: bool,
) -> sqlx::Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    if keep {
        sqlx::query(statement!("mark_published"))
            .bind(seqs)
            .execute(&mut **tx)
            .await?;
        return Ok(());
    }
    // Delete what needs no confirmation, then (rarely needed, so only
    // when the delete left some) mark the rest awaiting.
    let runs = SeqRuns::new(seqs);
    let delete = if runs.worth_it() {
        sqlx::query(statement!("delete_published_runs"))
            .bind(&runs.first)
            .bind(&runs.last)
    } else {
        sqlx::query(statement!("delete_published")).bind(seqs)
    };
    let deleted = delete.execute(&mut **tx).await?.rows_affected();
    if (deleted as usize) < runs.messages() {
        sqlx::query(statement!("mark_awaiting"))
            .bind(seqs)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A set of seqs as runs of consecutive numbers: `first[i] ..= last[i]`
/// holds every seq of run `i` and nothing else.
///
/// A draining relay that holds every shard fetches consecutive seqs, so a
/// batch of 1,000 is usually one run: deleting it by range walks the
/// index once instead of 1,000 times (about 40% less database time per
/// delete, docs/benchmarks.md). Relays sharing the shards fetch
/// interleaved seqs, runs of one or two, where the range scan's start-up
/// per run costs more than a lookup per seq: [`SeqRuns::worth_it`] picks.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqRuns {
    pub first: Vec<i64>,
    pub last: Vec<i64>,
}

impl SeqRuns {
    /// The runs of `seqs`, in any order, duplicates counted once.
    pub fn new(seqs: &[i64]) -> Self {
        // Batches come in seq order: sorting a copy is the exception.
        let mut sorted = Vec::new();
        let seqs = if seqs.is_sorted() {
            seqs
        } else {
            sorted.extend_from_slice(seqs);
            sorted.sort_unstable();
            &sorted
        };
        let mut runs = SeqRuns::default();
        for &seq in seqs {
            match runs.last.last_mut() {
                // The run's next seq, or a duplicate of its last.
                Some(last) if seq <= *last + 1 => *last = seq,
                _ => {
                    runs.first.push(seq);
                    runs.last.push(seq);
                }
            }
        }
        runs
    }

    /// Distinct seqs in all runs.
    pub fn messages(&self) -> usize {
        self.first
            .iter()
            .zip(&self.last)
            .map(|(first, last)| (last - first + 1) as usize)
            .sum()
    }

    /// Whether deleting by range is the cheaper statement: runs of three
    /// messages on average or longer. Measured on a 1,000,000-message
    /// outbox, 1,000 seqs a delete: one run took 3.7 ms against 6.2 ms by
    /// seq; 1,000 runs of one took 10 ms against 7.5 ms.
    pub fn worth_it(&self) -> bool {
        self.first.len() * 3 <= self.messages()
    }
}

/// Records failed attempts in one statement: bumps `attempts`, keeps the
/// error, and either schedules the retry or dead-letters the message.
async fn record_failures(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    failures: &[Failure],
) -> sqlx::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
    let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
    let delays: Vec<f64> = failures.iter().map(|f| f.retry_in.as_secs_f64()).collect();
    let dead: Vec<bool> = failures.iter().map(|f| f.dead).collect();
    sqlx::query(statement!("record_failures"))
        .bind(&seqs)
        .bind(&errors)
        .bind(&delays)
        .bind(&dead)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod database;
#[cfg(test)]
mod tests;
