//! The sweeper's statements: confirmation re-sends, clean-up, the
//! backlog's gauges, and the dead-letter replay.

use std::time::Duration;

use uuid::Uuid;

use super::{statement, RelayStore};

/// Messages by state, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Messages waiting to be published.
    pub pending: i64,
    /// Messages given up on, waiting for a replay.
    pub dead: i64,
    /// Age of the first pending message in publishing order, in seconds (0
    /// when none).
    pub oldest_pending_secs: f64,
    /// Published messages waiting for their end-to-end confirmation.
    pub awaiting: i64,
    /// Of those, the ones past their confirmation deadline.
    pub overdue: i64,
    /// Confirmed messages still kept (until retention).
    pub completed: i64,
}

impl RelayStore {
    /// Sends overdue messages again: those still `awaiting` a confirmation
    /// past their deadline go back to pending (ahead of their key, as the
    /// oldest), unless they were already re-sent `max_resends` times, in
    /// which case they are dead-lettered. Returns (re-sent, dead-lettered).
    pub async fn resend_overdue(&self, max_resends: i32) -> sqlx::Result<(u64, u64)> {
        let dead = sqlx::query(statement!("dead_letter_unconfirmed"))
            .bind(max_resends)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let resent = sqlx::query(statement!("resend_unconfirmed"))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok((resent, dead))
    }

    /// Deletes published messages older than `retention`, at most `batch`
    /// rows per statement so no statement holds locks for long, until none
    /// are left. Returns how many were deleted.
    pub async fn delete_published(&self, retention: Duration, batch: i64) -> sqlx::Result<u64> {
        self.delete_in_batches(statement!("clean_up_published"), retention, batch)
            .await
    }

    /// Deletes inbox entries older than `retention`, in bounded batches.
    /// Keep them longer than any redelivery can take (broker retention and
    /// consumer lag), or a very late duplicate would be processed again.
    pub async fn delete_inbox_entries(&self, retention: Duration, batch: i64) -> sqlx::Result<u64> {
        self.delete_in_batches(statement!("clean_up_inbox"), retention, batch)
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
    ) -> sqlx::Result<u64> {
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

    /// Counts messages by state, and the age of the first pending message
    /// in publishing order (the relay's lag). Uses the partial indexes, so
    /// it stays cheap however many published rows the table keeps, and
    /// counts pending messages from their index alone where it can (the
    /// sweeper and every metrics scrape ask, whatever the backlog).
    pub async fn backlog(&self) -> sqlx::Result<Backlog> {
        let (pending, oldest): (i64, Option<f64>) = sqlx::query_as(statement!("count_pending"))
            .fetch_one(&self.pool)
            .await?;
        let dead: i64 = sqlx::query_scalar(statement!("count_dead"))
            .fetch_one(&self.pool)
            .await?;
        let (awaiting, overdue): (i64, i64) = sqlx::query_as(statement!("count_awaiting"))
            .fetch_one(&self.pool)
            .await?;
        let completed: i64 = sqlx::query_scalar(statement!("count_completed"))
            .fetch_one(&self.pool)
            .await?;
        Ok(Backlog {
            pending,
            dead,
            oldest_pending_secs: oldest.unwrap_or(0.0).max(0.0),
            awaiting,
            overdue,
            completed,
        })
    }

    /// Returns dead-lettered messages to pending with a fresh retry budget:
    /// those with the given ids, or all of them when `ids` is `None`.
    /// Returns how many were replayed. They keep their place in their key's
    /// order, behind nothing that was published meanwhile.
    pub async fn replay_dead(&self, ids: Option<&[Uuid]>) -> sqlx::Result<u64> {
        let done = sqlx::query(statement!("replay_dead"))
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
