//! The sweeper: scheduled maintenance of the outbox table, run inside the
//! relay by tokio-cron-scheduler. Every relay runs it; each step is a
//! single idempotent statement, so overlapping sweeps of several relays do
//! no harm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::RelayStore;
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::error::{Error, Result};

/// Checks that `schedule` is a cron expression the scheduler accepts
/// (6 fields, seconds first: `*/10 * * * * *`).
pub fn validate_schedule(schedule: &str) -> Result<()> {
    Job::new_async(schedule, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| {
            Error::config(
                "sweep-schedule",
                format!("{schedule:?} is not a cron expression (6 fields, seconds first, e.g. \"*/10 * * * * *\"): {e}"),
            )
        })
}

/// What one sweep does.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Shard lease length: relays silent for longer are forgotten.
    pub lease: Duration,
    /// How long published messages are kept.
    pub retention: Duration,
    /// Rows deleted per cleanup statement.
    pub cleanup_batch: i64,
    /// Re-sends of an unconfirmed message before it is dead-lettered.
    pub max_resends: i32,
    /// How long inbox entries are kept.
    pub inbox_retention: Duration,
}

/// One sweep: frees the shards of relays whose lease expired, sends again
/// the messages whose end-to-end confirmation is overdue, deletes
/// published and completed messages past retention and old inbox entries
/// in bounded batches, refreshes the backlog gauges, and logs what it did.
pub async fn sweep_once(store: &RelayStore, settings: &SweepSettings) -> sqlx::Result<()> {
    let started = Instant::now();
    let freed = store.expire_leases(settings.lease).await?;
    let (resent, unconfirmed_dead) = store.resend_overdue(settings.max_resends).await?;
    metrics::counter!(crate::metrics::RESENT).increment(resent);
    metrics::counter!(crate::metrics::DEAD).increment(unconfirmed_dead);
    let inbox_deleted = store
        .delete_inbox_entries(settings.inbox_retention, settings.cleanup_batch)
        .await?;
    let deleted = store
        .delete_published(settings.retention, settings.cleanup_batch)
        .await?;
    metrics::counter!(crate::metrics::CLEANED).increment(deleted);
    let backlog = store.backlog().await?;
    crate::http::set_backlog_gauges(&backlog);
    if freed + resent + unconfirmed_dead + deleted + inbox_deleted > 0 {
        tracing::info!(
            expired_shard_leases = freed,
            resent_unconfirmed = resent,
            dead_unconfirmed = unconfirmed_dead,
            deleted_published = deleted,
            deleted_inbox = inbox_deleted,
            pending = backlog.pending,
            dead = backlog.dead,
            ms = started.elapsed().as_millis() as u64,
            "sweep done"
        );
    } else {
        tracing::debug!(
            pending = backlog.pending,
            dead = backlog.dead,
            "sweep: nothing to do"
        );
    }
    if backlog.dead > 0 {
        tracing::warn!(dead = backlog.dead, "dead-lettered messages are waiting: inspect outbox.message WHERE status = 'dead', then `outbox-relay replay-dead`");
    }
    Ok(())
}

/// Starts the sweeper on `schedule`. A sweep still running when the next
/// is due is not doubled: the later one is skipped.
pub async fn start(
    store: RelayStore,
    schedule: &str,
    settings: SweepSettings,
) -> Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let running = Arc::new(Mutex::new(()));
    let job = Job::new_async(schedule, move |_, _| {
        let store = store.clone();
        let settings = settings.clone();
        let running = running.clone();
        Box::pin(async move {
            let Ok(_guard) = running.try_lock() else {
                tracing::debug!("previous sweep still running; skipping this one");
                return;
            };
            if let Err(e) = sweep_once(&store, &settings).await {
                tracing::warn!(error = %e, "sweep failed; the next one will try again");
            }
        })
    })
    .map_err(|e| Error::config("sweep-schedule", e.to_string()))?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    Ok(scheduler)
}
