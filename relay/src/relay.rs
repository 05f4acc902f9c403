//! The publish loop: fetch a batch of the shards this relay holds, publish
//! it, mark it, repeat; wait for a notification when there is nothing to do.

use std::time::{Duration, Instant};

use outbox::{Failure, PendingMessage, RelayStore, RetryPolicy};

use crate::lease::ShardLeases;
use crate::publish::{Outcome, Publisher};
use crate::shutdown::Shutdown;
use crate::wake::Waker;
use tokio::task::JoinHandle;

/// Longest pause after a batch failed entirely because the broker was
/// unavailable; pauses double from one second up to this.
const MAX_BROKER_PAUSE: Duration = Duration::from_secs(30);

/// Longest a relay draining a backlog goes without looking below its
/// cursor (see `run`).
const CURSOR_RESET: Duration = Duration::from_secs(10);

/// The loop's settings.
pub struct LoopSettings {
    /// Messages per batch.
    pub batch_size: usize,
    /// Longest idle wait.
    pub poll_interval: Duration,
    /// A batch is started only while the shard lease has more than this
    /// left: the message timeout plus a second.
    pub lease_margin: Duration,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Keep published messages (until retention) instead of deleting them.
    pub keep_published: bool,
    /// Longest pause when the broker is unavailable: at most the lease
    /// renewal interval, so a pausing relay keeps its shards.
    pub max_broker_pause: Duration,
}

/// Runs until `shutdown` fires, then finishes the batch in flight and
/// returns `Ok`. Database and broker errors are logged and retried: the
/// loop keeps going until told to stop. The one error returned is a fatal
/// producer error, after which librdkafka's idempotent producer cannot go
/// on: the relay must exit and be restarted (unmarked messages are then
/// published again).
///
/// Batches are pipelined: while batch N's results are written, batch N+1
/// is fetched (leaving out N's messages and every key that failed in N)
/// and published. N+1 is sent only after every delivery report of N came
/// back, so the broker sees each key in order.
pub async fn run(
    store: RelayStore,
    publisher: &Publisher,
    leases: &mut ShardLeases,
    mut waker: Waker,
    settings: LoopSettings,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let mut broker_pause = Duration::ZERO;
    let mut marking: Option<(JoinHandle<()>, Exclusions)> = None;
    // Where the next fetch starts (see RelayStore::fetch_pending); back to
    // 0 whenever the relay catches up, and at least every CURSOR_RESET while
    // it drains a backlog, so a late commit with a lower seq waits at most
    // that long. Not more often: right after a large drain, a fetch from 0
    // walks every dead index entry until vacuum removes them.
    let mut cursor = 0_i64;
    let mut cursor_reset = Instant::now();
    waker.listen().await;
    while !shutdown.is_triggered() {
        leases.maintain().await;
        let shards = leases.usable(settings.lease_margin).to_vec();
        if shards.is_empty() {
            finish(&mut marking).await;
            let until_renewal = leases
                .next_renewal()
                .saturating_duration_since(Instant::now());
            idle(&mut shutdown, until_renewal.max(Duration::from_millis(100))).await;
            continue;
        }

        let started = Instant::now();
        if cursor_reset.elapsed() >= CURSOR_RESET {
            cursor = 0;
            cursor_reset = started;
        }
        let no_exclusions = Exclusions::default();
        let exclude = marking.as_ref().map_or(&no_exclusions, |(_, e)| e);
        let fetched = store
            .fetch_pending(
                &shards,
                settings.batch_size as i64,
                cursor,
                &exclude.seqs,
                &exclude.keys,
            )
            .await;
        let batch = match fetched {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch pending messages; retrying");
                finish(&mut marking).await;
                idle(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let full = batch.len() == settings.batch_size;
        if !full && cursor != 0 {
            // Caught up from the cursor: look once more from the start
            // before waiting.
            cursor = 0;
            cursor_reset = started;
            if batch.is_empty() {
                continue;
            }
        }
        if batch.is_empty() {
            if marking.is_some() {
                // The previous batch's keys may have more behind them.
                finish(&mut marking).await;
                continue;
            }
            let wait = settings.poll_interval.min(
                leases
                    .next_renewal()
                    .saturating_duration_since(Instant::now()),
            );
            tokio::select! {
                _ = waker.wait(wait) => {}
                _ = shutdown.wait() => {}
            }
            continue;
        }

        let fetch_time = started.elapsed();
        let outcomes = publisher.publish(&batch).await;
        let publish_time = started.elapsed() - fetch_time;
        let report = Report::new(&batch, &outcomes, &settings.retry);
        if full {
            // Never move past a held message: nothing marks it as waiting,
            // so only a fetch that sees it again keeps its key in order.
            let held = batch
                .iter()
                .zip(&outcomes)
                .find(|(_, o)| **o == Outcome::Held);
            cursor = match held {
                Some((m, _)) => m.seq - 1,
                None => batch.last().map_or(0, |m| m.seq),
            };
        }
        report.record_metrics(started.elapsed());
        tracing::trace!(
            messages = batch.len(),
            fetch_ms = fetch_time.as_secs_f64() * 1e3,
            publish_ms = publish_time.as_secs_f64() * 1e3,
            "batch sent"
        );
        let broker_unavailable = report.broker_unavailable;
        let first_error = report.first_error.clone();
        if let Some(fatal) = publisher.fatal_error() {
            finish(&mut marking).await;
            settle(
                store.clone(),
                report,
                settings.keep_published,
                shutdown.clone(),
            )
            .await;
            return Err(fatal);
        }

        // At most one batch is being marked at a time.
        finish(&mut marking).await;
        let exclusions = report.exclusions(&batch);
        let task = tokio::spawn(settle(
            store.clone(),
            report,
            settings.keep_published,
            shutdown.clone(),
        ));
        marking = Some((task, exclusions));

        if broker_unavailable {
            finish(&mut marking).await;
            broker_pause = (broker_pause * 2).clamp(
                Duration::from_secs(1),
                MAX_BROKER_PAUSE.min(settings.max_broker_pause),
            );
            tracing::warn!(
                error = first_error.as_deref().unwrap_or(""),
                pause = %humantime::format_duration(broker_pause),
                "broker unavailable: no message of the batch was delivered; pausing"
            );
            idle(&mut shutdown, broker_pause).await;
        } else {
            broker_pause = Duration::ZERO;
        }
    }
    finish(&mut marking).await;
    Ok(())
}

/// What the next fetch must leave out while a batch is being marked.
#[derive(Default)]
struct Exclusions {
    seqs: Vec<i64>,
    keys: Vec<Vec<u8>>,
}

/// Waits for the batch being marked, if any.
async fn finish(marking: &mut Option<(JoinHandle<()>, Exclusions)>) {
    if let Some((task, _)) = marking.take() {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "marking task failed; its messages will be published again");
        }
    }
}

/// What a published batch comes to, ready to be written back.
struct Report {
    published: Vec<i64>,
    failures: Vec<Failure>,
    transient: u64,
    permanent: u64,
    dead: u64,
    held: u64,
    /// Every message failed for reasons that are not its own: the broker is
    /// down. The messages are left untouched (no attempt is counted) and
    /// the whole relay pauses instead.
    broker_unavailable: bool,
    first_error: Option<String>,
    /// Keys with a failed or held message in this batch.
    blocked_keys: Vec<Vec<u8>>,
}

impl Report {
    fn new(batch: &[PendingMessage], outcomes: &[Outcome], retry: &RetryPolicy) -> Self {
        let mut r = Report {
            published: Vec::with_capacity(batch.len()),
            failures: Vec::new(),
            transient: 0,
            permanent: 0,
            dead: 0,
            held: 0,
            broker_unavailable: false,
            first_error: None,
            blocked_keys: Vec::new(),
        };
        for (m, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::Published => r.published.push(m.seq),
                Outcome::Held => {
                    r.held += 1;
                    r.blocked_keys.extend(m.key.clone());
                }
                Outcome::Failed { error, permanent } => {
                    r.blocked_keys.extend(m.key.clone());
                    let attempts = u32::try_from(m.attempts).unwrap_or(0) + 1;
                    let dead = *permanent && retry.exhausted(attempts);
                    if *permanent {
                        r.permanent += 1;
                    } else {
                        r.transient += 1;
                    }
                    r.dead += u64::from(dead);
                    r.first_error.get_or_insert_with(|| error.clone());
                    r.failures.push(Failure {
                        seq: m.seq,
                        error: error.clone(),
                        retry_in: retry.delay(attempts),
                        dead,
                    });
                }
            }
        }
        if r.published.is_empty() && r.permanent == 0 && r.transient > 0 {
            r.broker_unavailable = true;
            r.failures.clear();
        }
        r
    }

    /// The batch's messages, and the keys that failed or were held back.
    fn exclusions(&self, batch: &[PendingMessage]) -> Exclusions {
        let mut keys: Vec<Vec<u8>> = self.blocked_keys.clone();
        keys.sort_unstable();
        keys.dedup();
        Exclusions {
            seqs: batch.iter().map(|m| m.seq).collect(),
            keys,
        }
    }

    fn record_metrics(&self, elapsed: Duration) {
        metrics::counter!(crate::metrics::PUBLISHED).increment(self.published.len() as u64);
        metrics::counter!(crate::metrics::FAILED, "kind" => "transient").increment(self.transient);
        metrics::counter!(crate::metrics::FAILED, "kind" => "permanent").increment(self.permanent);
        metrics::counter!(crate::metrics::DEAD).increment(self.dead);
        metrics::histogram!(crate::metrics::BATCH_SECONDS).record(elapsed.as_secs_f64());
        metrics::histogram!(crate::metrics::BATCH_SIZE)
            .record((self.published.len() + self.failures.len()) as f64 + self.held as f64);
        if self.permanent > 0 || (self.transient > 0 && !self.broker_unavailable) {
            tracing::warn!(
                published = self.published.len(),
                transient = self.transient,
                permanent = self.permanent,
                dead = self.dead,
                held = self.held,
                error = self.first_error.as_deref().unwrap_or(""),
                "some messages of the batch failed; they will be retried"
            );
        } else {
            tracing::debug!(
                published = self.published.len(),
                ms = elapsed.as_millis() as u64,
                "batch published"
            );
        }
    }
}

/// Writes the batch's results back. Retries while the database is away,
/// because every message not marked now is published again later (a
/// duplicate, not a loss); gives up only on shutdown.
async fn settle(store: RelayStore, report: Report, keep_published: bool, mut shutdown: Shutdown) {
    let mut delay = Duration::from_millis(100);
    loop {
        let marked = async {
            store
                .mark_published(&report.published, keep_published)
                .await?;
            store.record_failures(&report.failures).await
        };
        match marked.await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    published = report.published.len(),
                    "cannot mark the batch; retrying (unmarked messages would be published again)"
                );
                if shutdown.is_triggered() {
                    return;
                }
                idle(&mut shutdown, delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sleeps for `d` or until shutdown.
async fn idle(shutdown: &mut Shutdown, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox::MessageId;

    fn msg(seq: i64, key: &str, attempts: i32) -> PendingMessage {
        PendingMessage {
            seq,
            id: MessageId::new(),
            topic: "t".into(),
            key: Some(key.as_bytes().to_vec()),
            payload: Some(vec![]),
            header_names: vec![],
            header_values: vec![],
            message_type: None,
            created_at: chrono::Utc::now(),
            attempts,
        }
    }

    fn failed(permanent: bool) -> Outcome {
        Outcome::Failed {
            error: "boom".into(),
            permanent,
        }
    }

    #[test]
    fn permanent_failure_is_dead_only_when_the_budget_is_spent() {
        let retry = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let batch = [msg(1, "a", 1), msg(2, "b", 2), msg(3, "c", 0)];
        let r = Report::new(
            &batch,
            &[failed(true), failed(true), Outcome::Published],
            &retry,
        );
        assert_eq!(r.published, vec![3]);
        let dead: Vec<(i64, bool)> = r.failures.iter().map(|f| (f.seq, f.dead)).collect();
        assert_eq!(dead, vec![(1, false), (2, true)]);
        assert!(!r.broker_unavailable);
    }

    #[test]
    fn transient_failures_never_dead_letter() {
        let retry = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let batch = [msg(1, "a", 50), msg(2, "b", 0)];
        let r = Report::new(&batch, &[failed(false), Outcome::Published], &retry);
        assert_eq!(r.failures.len(), 1);
        assert!(!r.failures[0].dead);
    }

    #[test]
    fn a_batch_that_failed_entirely_for_broker_reasons_pauses_without_counting() {
        let batch = [msg(1, "a", 0), msg(2, "b", 0)];
        let r = Report::new(
            &batch,
            &[failed(false), failed(false)],
            &RetryPolicy::default(),
        );
        assert!(r.broker_unavailable);
        assert!(
            r.failures.is_empty(),
            "no attempt is counted against the messages"
        );
    }

    #[test]
    fn failed_and_held_keys_are_excluded_from_the_next_fetch() {
        let batch = [
            msg(1, "a", 0),
            msg(2, "a", 0),
            msg(3, "b", 0),
            msg(4, "c", 0),
        ];
        let outcomes = [
            failed(true),
            Outcome::Held,
            Outcome::Published,
            failed(false),
        ];
        let r = Report::new(&batch, &outcomes, &RetryPolicy::default());
        let e = r.exclusions(&batch);
        assert_eq!(e.seqs, vec![1, 2, 3, 4]);
        assert_eq!(e.keys, vec![b"a".to_vec(), b"c".to_vec()]);
    }
}
