//! What a batch came to once the broker answered, and writing that back.

use std::time::Duration;

use crate::publish::Outcome;
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::store::{Failure, PendingMessage, RelayStore};

use super::pause;

/// What a published batch comes to, ready to be written back.
pub(super) struct Report {
    pub published: Vec<i64>,
    pub failures: Vec<Failure>,
    transient: u64,
    permanent: u64,
    dead: u64,
    held: u64,
    /// Every message failed for reasons that are not its own: the broker is
    /// down. The messages are left untouched (no attempt is counted) and
    /// the whole relay pauses instead.
    pub broker_unavailable: bool,
    /// Some message failed because the producer can send nothing more
    /// (fenced, epoch or sequence lost): the relay must stop.
    pub producer_broken: bool,
    pub first_error: Option<String>,
    /// Keys with a message of this batch that was not published (failed or
    /// held): nothing later of theirs may be fetched until it is marked.
    pub unpublished_keys: Vec<Vec<u8>>,
    /// The lowest message of the batch that was not published, if any.
    /// Failures recorded with a backoff keep their key waiting wherever
    /// the cursor stands; the others (broker unavailable, held, producer
    /// broken) are found again only by a fetch that starts below them.
    pub lowest_unpublished: Option<i64>,
}

impl Report {
    pub fn new(batch: &[PendingMessage], outcomes: &[Outcome], retry: &RetryPolicy) -> Self {
        let mut r = Report {
            published: Vec::with_capacity(batch.len()),
            failures: Vec::new(),
            transient: 0,
            permanent: 0,
            dead: 0,
            held: 0,
            broker_unavailable: false,
            producer_broken: false,
            first_error: None,
            unpublished_keys: Vec::new(),
            lowest_unpublished: None,
        };
        for (m, outcome) in batch.iter().zip(outcomes) {
            if *outcome != Outcome::Published && r.lowest_unpublished.is_none() {
                // The batch is in seq order: the first is the lowest.
                r.lowest_unpublished = Some(m.seq);
            }
            match outcome {
                Outcome::Published => r.published.push(m.seq),
                Outcome::Held => {
                    r.held += 1;
                    r.unpublished_keys.extend(m.key.clone());
                }
                Outcome::ProducerBroken { error } => {
                    // Not the message's fault: nothing is recorded against
                    // it, and the relay stops.
                    r.producer_broken = true;
                    r.held += 1;
                    r.unpublished_keys.extend(m.key.clone());
                    r.first_error.get_or_insert_with(|| error.clone());
                }
                Outcome::Failed { error, permanent } => {
                    r.unpublished_keys.extend(m.key.clone());
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

    /// What the next fetch must leave out while this batch is marked: its
    /// messages, and the keys that failed or were held back.
    pub fn exclusions(&self, batch: &[PendingMessage]) -> Exclusions {
        let mut keys: Vec<Vec<u8>> = self.unpublished_keys.clone();
        keys.sort_unstable();
        keys.dedup();
        Exclusions {
            seqs: batch.iter().map(|m| m.seq).collect(),
            keys,
            lowest_unpublished: self.lowest_unpublished,
        }
    }

    pub fn record_metrics(&self, elapsed: Duration) {
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

/// What a fetch must leave out.
#[derive(Default)]
pub(super) struct Exclusions {
    pub seqs: Vec<i64>,
    pub keys: Vec<Vec<u8>>,
    /// The lowest message not published of a batch being marked, which
    /// the fetch cursor must not pass until it is marked.
    pub lowest_unpublished: Option<i64>,
}

/// Writes a batch's results back. Retries while the database is away,
/// because every message not marked now is published again later (a
/// duplicate, not a loss); gives up only on shutdown.
pub(super) async fn mark(
    store: RelayStore,
    report: Report,
    keep_published: bool,
    mut shutdown: Shutdown,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store
            .settle_batch(&report.published, &report.failures, keep_published)
            .await
        {
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
                pause(&mut shutdown, delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish_loop::tests::{failed, msg};

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
    fn the_cursor_goes_back_below_what_a_batch_did_not_publish() {
        let batch = [msg(5, "a", 0), msg(6, "b", 0), msg(7, "a", 0)];
        let retry = RetryPolicy::default();
        let published = [Outcome::Published, Outcome::Published, Outcome::Published];
        let all = Report::new(&batch, &published, &retry);
        assert_eq!(all.lowest_unpublished, None);
        // The whole batch failed for broker reasons: nothing is recorded
        // against the messages, so only a fetch from below finds them.
        let down = Report::new(
            &batch,
            &[failed(false), failed(false), failed(false)],
            &retry,
        );
        assert!(down.broker_unavailable);
        assert_eq!(down.lowest_unpublished, Some(5));
        let held = Report::new(
            &batch,
            &[Outcome::Published, failed(true), Outcome::Held],
            &retry,
        );
        assert_eq!(held.lowest_unpublished, Some(6));
        let broken = Report::new(
            &batch,
            &[
                Outcome::Published,
                Outcome::ProducerBroken {
                    error: "fenced".into(),
                },
                Outcome::Published,
            ],
            &retry,
        );
        assert!(broken.producer_broken);
        assert!(broken.failures.is_empty(), "no attempt is counted");
        assert_eq!(broken.lowest_unpublished, Some(6));
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
