//! The statements the relay and the sweeper run. Each is one round trip
//! for a whole batch, never one per message.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;
use crate::message::MessageId;

/// Number of shards keys are spread over (fixed by the schema).
pub const SHARD_COUNT: i64 = 256;

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

/// Extends the leases `relay` holds by `lease_secs`; returns their shards.
async fn extend_held(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    relay: Uuid,
    lease_secs: f64,
) -> Result<Vec<i16>> {
    Ok(sqlx::query_scalar(
        "UPDATE outbox.shard_lease SET lease_until = now() + make_interval(secs => $2) \
         WHERE owner = $1 RETURNING shard",
    )
    .bind(relay)
    .bind(lease_secs)
    .fetch_all(&mut **tx)
    .await?)
}

impl From<Uuid> for MessageId {
    fn from(id: Uuid) -> Self {
        MessageId(id)
    }
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

/// Messages by state, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Messages waiting to be published.
    pub pending: i64,
    /// Messages given up on, waiting for a replay.
    pub dead: i64,
    /// Age of the oldest pending message, in seconds (0 when none).
    pub oldest_pending_secs: f64,
    /// Published messages waiting for their end-to-end confirmation.
    pub awaiting: i64,
    /// Of those, the ones past their confirmation deadline.
    pub overdue: i64,
    /// Confirmed messages still kept (until retention).
    pub completed: i64,
}

/// The outbox store as the relay sees it: shard leases, fetching, marking,
/// and the sweeper's maintenance. Cheap to clone (wraps a pool).
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

    /// Records that relay `relay` is alive, renews the shard leases it
    /// holds for `lease`, and takes or gives back shards so that each live
    /// relay holds its fair share. Returns the shards it now holds, each
    /// valid for `lease` from just before this call started.
    pub async fn renew_shards(&self, relay: Uuid, name: &str, lease: Duration) -> Result<Vec<i16>> {
        let lease_secs = lease.as_secs_f64();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO outbox.relay AS r (id, name) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), \
                 waiting_until = CASE WHEN r.waiting_until IS NULL THEN NULL \
                                      ELSE now() + make_interval(secs => $3) END",
        )
        .bind(relay)
        .bind(name)
        .bind(lease_secs)
        .execute(&mut *tx)
        .await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox.relay \
             WHERE heartbeat_at > now() - make_interval(secs => $1)",
        )
        .bind(lease_secs)
        .fetch_one(&mut *tx)
        .await?;
        let fair = (SHARD_COUNT + live.max(1) - 1) / live.max(1);

        let mut held = extend_held(&mut tx, relay, lease_secs).await?;
        held.sort_unstable();

        let held_len = held.len() as i64;
        if held_len > fair {
            // Give back the highest shards; the caller renews between
            // batches, so none of them has a message in flight.
            let give: Vec<i16> = held.split_off(fair as usize);
            sqlx::query(
                "UPDATE outbox.shard_lease SET owner = NULL, lease_until = NULL \
                 WHERE owner = $1 AND shard = ANY($2)",
            )
            .bind(relay)
            .bind(&give)
            .execute(&mut *tx)
            .await?;
        } else if held_len < fair {
            let taken: Vec<i16> = sqlx::query_scalar(
                "UPDATE outbox.shard_lease SET owner = $1, \
                     lease_until = now() + make_interval(secs => $2) \
                 WHERE shard IN ( \
                     SELECT shard FROM outbox.shard_lease \
                     WHERE owner IS NULL OR lease_until < now() \
                     ORDER BY shard LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING shard",
            )
            .bind(relay)
            .bind(lease_secs)
            .bind(fair - held_len)
            .fetch_all(&mut *tx)
            .await?;
            held.extend(taken);
            held.sort_unstable();
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Extends the leases of the shards `relay` still owns by `lease` and
    /// records that it is alive, without taking or giving back any.
    /// Returns the shards it still owns, each valid for `lease` from just
    /// before this call started.
    pub async fn extend_shards(&self, relay: Uuid, lease: Duration) -> Result<Vec<i16>> {
        let lease_secs = lease.as_secs_f64();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE outbox.relay SET heartbeat_at = now(), \
                 waiting_until = CASE WHEN waiting_until IS NULL THEN NULL \
                                      ELSE now() + make_interval(secs => $2) END \
             WHERE id = $1",
        )
        .bind(relay)
        .bind(lease_secs)
        .execute(&mut *tx)
        .await?;
        let held = extend_held(&mut tx, relay, lease_secs).await?;
        tx.commit().await?;
        Ok(held)
    }

    /// Marks relay `relay` as waiting for work for `lease` (renewed by
    /// [`renew_shards`](Self::renew_shards) while it lasts), or as busy
    /// (`None`). While any relay waits, every insert into `outbox.message`
    /// notifies the `outbox_message` channel at commit; while none does,
    /// inserts do not notify at all (a notifying commit holds a
    /// database-wide lock until it is flushed, so notifying writers commit
    /// one at a time).
    pub async fn set_waiting(&self, relay: Uuid, lease: Option<Duration>) -> Result<()> {
        sqlx::query(
            "UPDATE outbox.relay \
             SET waiting_until = now() + make_interval(secs => $2) WHERE id = $1",
        )
        .bind(relay)
        .bind(lease.map(|l| l.as_secs_f64()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives back every shard `relay` holds and forgets the relay, so other
    /// relays take over at once instead of waiting for the leases to expire.
    pub async fn release_shards(&self, relay: Uuid) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE outbox.shard_lease SET owner = NULL, lease_until = NULL WHERE owner = $1",
        )
        .bind(relay)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outbox.relay WHERE id = $1")
            .bind(relay)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` pending messages of `shards` that may be published now,
    /// oldest first. A message is left out while an earlier pending message
    /// of the same key is waiting (delay or retry backoff), so a key is
    /// never published out of order and a failing key blocks only itself.
    ///
    /// `exclude_seqs` and `exclude_keys` leave out the previous batch, whose
    /// results are still being written, and every key that had a failure
    /// in it: until its backoff is recorded, nothing may overtake it.
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
    ) -> Result<Vec<PendingMessage>> {
        // `blocked`: keys with a message that was made to wait (delay or
        // backoff) and is still pending, and from where. Such a message
        // blocks the later ones of its key even once it is due, until it is
        // itself published: it may lie below `after`, where this fetch does
        // not look.
        // `blocked` asks for the order of the small message_waiting index
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
            if (0..SHARD_COUNT as i16).contains(&s) {
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
        let rows = sqlx::query_as::<_, PendingMessage>(
            "WITH blocked AS MATERIALIZED ( \
                 SELECT DISTINCT ON (msg_key) msg_key, seq AS from_seq \
                 FROM outbox.message \
                 WHERE status = 'pending' AND available_at > created_at \
                   AND msg_key IS NOT NULL \
                 ORDER BY msg_key, seq) \
             SELECT c.seq, c.id, c.topic, c.msg_key, c.payload, c.header_names, \
                    c.header_values, c.msg_type, c.created_at, c.attempts \
             FROM outbox.message c \
             WHERE c.status = 'pending' AND get_bit($1, c.shard) = 1 \
               AND c.available_at - now() <= interval '0' \
               AND NOT EXISTS ( \
                   SELECT 1 FROM blocked b \
                   WHERE b.msg_key = c.msg_key AND b.from_seq < c.seq) \
               AND c.seq > $5 \
               AND c.seq <> ALL($3) \
               AND (c.msg_key IS NULL OR c.msg_key <> ALL($4)) \
             ORDER BY c.seq \
             LIMIT $2",
        )
        .bind(mask)
        .bind(limit)
        .bind(&exclude_seqs)
        .bind(exclude_keys)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Marks the messages with these `seq`s published, one statement in the
    /// usual case:
    /// keeps them as `published` (for the retention period) when `keep`,
    /// deletes them otherwise (about three times cheaper: a delete writes no
    /// new row version and no index entries). Returns how many rows changed.
    pub async fn mark_published(&self, seqs: &[i64], keep: bool) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        // Messages waiting for an end-to-end confirmation are always kept.
        if keep {
            let done = sqlx::query(
                "UPDATE outbox.message \
                 SET status = CASE WHEN confirm_within IS NULL THEN 'published' ELSE 'awaiting' END, \
                     confirm_by = now() + confirm_within, \
                     published_at = now(), last_error = NULL \
                 WHERE seq = ANY($1) AND status = 'pending'",
            )
            .bind(seqs)
            .execute(&self.pool)
            .await?;
            return Ok(done.rows_affected());
        }
        // Delete what needs no confirmation, then (rarely needed, so only
        // when the delete left some) mark the rest awaiting.
        let deleted = sqlx::query(
            "DELETE FROM outbox.message \
             WHERE seq = ANY($1) AND status = 'pending' AND confirm_within IS NULL",
        )
        .bind(seqs)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if deleted as usize == seqs.len() {
            return Ok(deleted);
        }
        let awaiting = sqlx::query(
            "UPDATE outbox.message \
             SET status = 'awaiting', confirm_by = now() + confirm_within, \
                 published_at = now(), last_error = NULL \
             WHERE seq = ANY($1) AND status = 'pending' AND confirm_within IS NOT NULL",
        )
        .bind(seqs)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted + awaiting)
    }

    /// Records failed attempts in one statement: bumps `attempts`, keeps the
    /// error, and either schedules the retry or dead-letters the message.
    pub async fn record_failures(&self, failures: &[Failure]) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let delays: Vec<f64> = failures.iter().map(|f| f.retry_in.as_secs_f64()).collect();
        let dead: Vec<bool> = failures.iter().map(|f| f.dead).collect();
        sqlx::query(
            "UPDATE outbox.message m \
             SET attempts = m.attempts + 1, last_error = f.error, \
                 available_at = now() + make_interval(secs => f.delay), \
                 status = CASE WHEN f.dead THEN 'dead' ELSE 'pending' END \
             FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::bool[]) \
                  AS f(seq, error, delay, dead) \
             WHERE m.seq = f.seq AND m.status = 'pending'",
        )
        .bind(&seqs)
        .bind(&errors)
        .bind(&delays)
        .bind(&dead)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Frees the shards of relays whose lease ran out (crashed or cut off)
    /// and forgets relays silent for longer than `lease`. Returns the
    /// number of shards freed.
    pub async fn expire_leases(&self, lease: Duration) -> Result<u64> {
        let freed = sqlx::query(
            "UPDATE outbox.shard_lease SET owner = NULL, lease_until = NULL \
             WHERE owner IS NOT NULL AND lease_until < now()",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM outbox.relay WHERE heartbeat_at < now() - make_interval(secs => $1)",
        )
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(freed)
    }

    /// Sends overdue messages again: those still `awaiting` a confirmation
    /// past their deadline go back to pending (ahead of their key, as the
    /// oldest), unless they were already re-sent `max_resends` times, in
    /// which case they are dead-lettered. Returns (re-sent, dead-lettered).
    pub async fn resend_overdue(&self, max_resends: i32) -> Result<(u64, u64)> {
        let dead = sqlx::query(
            "UPDATE outbox.message \
             SET status = 'dead', \
                 last_error = format('no confirmation after %s re-sends', resends) \
             WHERE status = 'awaiting' AND confirm_by < now() AND resends >= $1",
        )
        .bind(max_resends)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let resent = sqlx::query(
            "UPDATE outbox.message \
             SET status = 'pending', resends = resends + 1, confirm_by = NULL, \
                 available_at = now() \
             WHERE status = 'awaiting' AND confirm_by < now()",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((resent, dead))
    }

    /// Deletes published messages older than `retention`, at most `batch`
    /// rows per statement so no statement holds locks for long, until none
    /// are left. Returns how many were deleted.
    pub async fn delete_published(&self, retention: Duration, batch: i64) -> Result<u64> {
        self.delete_in_batches(
            "DELETE FROM outbox.message WHERE seq IN ( \
                 SELECT seq FROM outbox.message \
                 WHERE status IN ('published', 'completed') \
                   AND published_at < now() - make_interval(secs => $1) \
                 LIMIT $2)",
            retention,
            batch,
        )
        .await
    }

    /// Deletes inbox entries older than `retention`, in bounded batches.
    /// Keep them longer than any redelivery can take (broker retention and
    /// consumer lag), or a very late duplicate would be processed again.
    pub async fn delete_inbox_entries(&self, retention: Duration, batch: i64) -> Result<u64> {
        self.delete_in_batches(
            "DELETE FROM outbox.inbox WHERE (consumer, message_id) IN ( \
                 SELECT consumer, message_id FROM outbox.inbox \
                 WHERE received_at < now() - make_interval(secs => $1) LIMIT $2)",
            retention,
            batch,
        )
        .await
    }

    /// Runs `statement` (a DELETE of at most `$2` rows older than `$1`
    /// seconds) until it deletes fewer than `batch`, so no statement holds
    /// its locks for long. Returns the total deleted.
    async fn delete_in_batches(
        &self,
        statement: &'static str,
        retention: Duration,
        batch: i64,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(statement)
                .bind(retention.as_secs_f64())
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Counts pending and dead messages and the age of the oldest pending
    /// one. Uses the partial indexes, so it stays cheap however many
    /// published rows the table keeps.
    pub async fn backlog(&self) -> Result<Backlog> {
        let (pending, oldest): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
             FROM outbox.message WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        let dead: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE status = 'dead'")
                .fetch_one(&self.pool)
                .await?;
        let (awaiting, overdue): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE confirm_by < now()) \
             FROM outbox.message WHERE status = 'awaiting'",
        )
        .fetch_one(&self.pool)
        .await?;
        let completed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE status = 'completed'")
                .fetch_one(&self.pool)
                .await?;
        Ok(Backlog {
            completed,
            pending,
            dead,
            oldest_pending_secs: oldest.unwrap_or(0.0).max(0.0),
            awaiting,
            overdue,
        })
    }

    /// Returns dead-lettered messages to pending with a fresh retry budget:
    /// those with the given ids, or all of them when `ids` is `None`.
    /// Returns how many were replayed. They keep their place in their key's
    /// order, behind nothing that was published meanwhile.
    pub async fn replay_dead(&self, ids: Option<&[Uuid]>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE outbox.message \
             SET status = 'pending', attempts = 0, available_at = now() \
             WHERE status = 'dead' AND ($1::uuid[] IS NULL OR id = ANY($1))",
        )
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
