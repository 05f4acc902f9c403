//! The publish loop: fetch a batch of the shards this relay holds, publish
//! it, mark it, repeat; wait for a notification when there is nothing to do.

use std::time::{Duration, Instant};

use outbox::{Failure, PendingMessage, RelayStore, RetryPolicy};

use crate::lease::ShardLeases;
use crate::publish::{Outcome, Publisher};
use crate::shutdown::Shutdown;
use crate::wake::Waker;

/// Longest pause after a batch failed entirely because the broker was
/// unavailable; pauses double from one second up to this.
const MAX_BROKER_PAUSE: Duration = Duration::from_secs(30);

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
}

/// Runs until `shutdown` fires, then finishes the batch in flight and
/// returns. Database and broker errors are logged and retried, never
/// returned: the loop keeps going until told to stop.
pub async fn run(
    store: RelayStore,
    publisher: &Publisher,
    leases: &mut ShardLeases,
    mut waker: Waker,
    settings: LoopSettings,
    mut shutdown: Shutdown,
) {
    let mut broker_pause = Duration::ZERO;
    waker.listen().await;
    while !shutdown.is_triggered() {
        leases.maintain().await;
        let shards = leases.usable(settings.lease_margin).to_vec();
        if shards.is_empty() {
            let until_renewal = leases
                .next_renewal()
                .saturating_duration_since(Instant::now());
            idle(&mut shutdown, until_renewal.max(Duration::from_millis(100))).await;
            continue;
        }

        let started = Instant::now();
        let batch = match store
            .fetch_pending(&shards, settings.batch_size as i64)
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch pending messages; retrying");
                idle(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
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

        let outcomes = publisher.publish(&batch).await;
        let report = Report::new(&batch, &outcomes, &settings.retry);
        settle(&store, &report, &mut shutdown).await;
        report.record_metrics(started.elapsed());

        if report.broker_unavailable {
            broker_pause = (broker_pause * 2).clamp(Duration::from_secs(1), MAX_BROKER_PAUSE);
            tracing::warn!(
                error = report.first_error.as_deref().unwrap_or(""),
                pause = %humantime::format_duration(broker_pause),
                "broker unavailable: no message of the batch was delivered; pausing"
            );
            idle(&mut shutdown, broker_pause).await;
        } else {
            broker_pause = Duration::ZERO;
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
        };
        for (m, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::Published => r.published.push(m.seq),
                Outcome::Held => r.held += 1,
                Outcome::Failed { error, permanent } => {
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
async fn settle(store: &RelayStore, report: &Report, shutdown: &mut Shutdown) {
    let mut delay = Duration::from_millis(100);
    loop {
        let marked = async {
            store.mark_published(&report.published).await?;
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
                idle(shutdown, delay).await;
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
