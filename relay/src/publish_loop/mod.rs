//! The publish loop: fetch a batch of the shards this relay holds, send
//! it, settle what the broker answered, repeat; wait when there is nothing
//! to do.
//!
//! Its parts each own their state: the [`Fetcher`] the fetch cursor and
//! the batch fetched ahead, the [`Pipeline`] the batches in flight and
//! being marked, [`Idle`] the waits and the wake-up mark, and
//! [`BrokerBackoff`] the pauses while the broker is away.

mod fetcher;
mod idle;
mod pipeline;
mod report;

use std::time::{Duration, Instant};

use crate::health::Health;
use crate::lease::ShardLeases;
use crate::publish::Publisher;
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::store::RelayStore;
use crate::wake::Waker;

use fetcher::Fetcher;
use idle::Idle;
use pipeline::Pipeline;

/// The loop's settings.
pub struct LoopSettings {
    /// Messages per batch.
    pub batch_size: usize,
    /// Batches sent and not yet acknowledged at once.
    pub in_flight: usize,
    /// Longest idle wait.
    pub poll_interval: Duration,
    /// A batch is started only while the shard lease has more than this
    /// left (see `RelayConfig::lease_margin`).
    pub lease_margin: Duration,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Keep published messages (until retention) instead of deleting them.
    pub keep_published: bool,
    /// Longest pause when the broker is unavailable: at most the lease
    /// renewal interval, so a pausing relay keeps its shards.
    pub max_broker_pause: Duration,
}

/// What the loop works with.
pub struct Parts<'a> {
    pub store: RelayStore,
    pub publisher: &'a Publisher,
    pub leases: &'a mut ShardLeases,
    pub waker: Waker,
    pub health: Health,
}

/// Runs until `shutdown` fires, then settles the batches in flight and
/// returns `Ok`. Database and broker errors are logged and retried. The
/// one error returned is a producer that cannot go on (a fatal error of
/// librdkafka's idempotent producer, or a producer fenced or whose epoch
/// or sequence the broker lost): the relay must exit and be restarted
/// (unmarked messages are then published again). `health` hears of every
/// acknowledged batch and of every look that found nothing to do.
///
/// Up to `in_flight` batches are on the wire while the next is fetched,
/// and acknowledged batches are marked meanwhile. Each fetch leaves out
/// the batches not yet settled and every key held or failed in them.
pub async fn run(
    parts: Parts<'_>,
    settings: LoopSettings,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let Parts {
        store,
        publisher,
        leases,
        waker,
        health,
    } = parts;
    let mut pipe = Pipeline::default();
    let mut fetcher = Fetcher::new();
    let mut idle = Idle::new(waker, settings.poll_interval);
    let mut backoff = BrokerBackoff::new(settings.max_broker_pause);
    idle.listen().await;
    while !shutdown.is_triggered() {
        while pipe.must_settle(settings.in_flight) {
            // The broker may take long to answer (messages never time out
            // by default): the leases are extended meanwhile.
            let settled = leases
                .keep_while(pipe.settle_oldest(&store, &settings, &shutdown))
                .await;
            let Some(settled) = settled else { break };
            if settled.acknowledged {
                health.progress();
            }
            let broken = publisher.fatal_error().or_else(|| {
                settled.producer_broken.then(|| {
                    format!(
                        "the producer can send nothing more: {}",
                        settled.first_error.as_deref().unwrap_or("")
                    )
                })
            });
            if let Some(reason) = broken {
                // Every later send fails the same way: stop, so that a new
                // producer (a restarted relay) takes over these keys.
                pipe.drain(leases, &store, &settings, &shutdown).await;
                return Err(reason);
            }
            if settled.broker_unavailable {
                pipe.drain(leases, &store, &settings, &shutdown).await;
                backoff.pause(settled.first_error, &mut shutdown).await;
            } else {
                backoff.reset();
            }
        }
        if shutdown.is_triggered() {
            break;
        }
        if leases.renewal_due() {
            // Renewing and taking shards is safe with batches in flight,
            // so the relay keeps publishing through it (a drain here
            // stalled every key for a round trip and a mark, every
            // renewal). Giving a shard back is not: nothing of it may be
            // in flight when another relay takes it.
            let mut renewed = leases.maintain(false).await;
            if renewed.must_give_back {
                pipe.drain(leases, &store, &settings, &shutdown).await;
                let again = leases.maintain(true).await;
                renewed.gained |= again.gained;
            }
            if renewed.gained {
                // New shards: their messages may lie below the cursor, and
                // a batch fetched ahead did not look at them.
                fetcher.restart();
                pipe.invalidate_fetched_ahead();
            }
        }
        let shards = leases.usable(settings.lease_margin).to_vec();
        if shards.is_empty() {
            pipe.drain(leases, &store, &settings, &shutdown).await;
            // Holding no keys is not a stall: another relay has them.
            health.progress();
            let until_renewal = leases
                .next_renewal()
                .saturating_duration_since(Instant::now());
            pause(&mut shutdown, until_renewal.max(Duration::from_millis(100))).await;
            continue;
        }

        let started = Instant::now();
        let limit = settings.batch_size;
        let batch = match fetcher
            .fetch(&store, &shards, limit, &mut pipe, leases)
            .await
        {
            Ok(Some(batch)) => batch,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch pending messages; retrying");
                pipe.drain(leases, &store, &settings, &shutdown).await;
                // Whatever happened to the database meanwhile (a restart,
                // a fail-over), look from the start again.
                fetcher.restart();
                pause(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        // The lease may have run out while the fetch ran (a slow
        // statement, a paused process): another relay may own these keys
        // now, so this batch must not be sent. It is fetched again by
        // whoever holds the shards.
        if leases.usable(settings.lease_margin) != shards.as_slice() {
            tracing::debug!("shard leases changed during the fetch; dropping the batch");
            continue;
        }
        if batch.is_empty() {
            idle.wait_for_work(&mut pipe, leases, &store, &health, &mut shutdown)
                .await;
            continue;
        }
        let full = batch.len() == limit;
        let last_seq = batch.last().map_or(0, |m| m.seq);
        if full {
            idle.busy(&store, leases).await;
            fetcher.fetch_ahead(&store, &shards, limit, last_seq, &pipe);
            // Let the fetch ahead send its statement before this batch is
            // formatted: the relay runs on one thread, and the database
            // should work on the next batch meanwhile, not after.
            tokio::task::yield_now().await;
        }
        let lowest_unsent = pipe.send(publisher, batch, started).await;
        if full {
            fetcher.advance(last_seq, lowest_unsent, pipe.cursor_limit());
        } else {
            // Caught up. Look again when the oldest batch is answered (a
            // few milliseconds), so that the commits arriving meanwhile go
            // out together. Fetching again at once sent a stream of tiny
            // batches under steady load, each with its own fetch and mark:
            // at 1,000 msg/s, 2.4 messages a batch, up to 4 in flight, and
            // the relay's statements competing with the writers for CPU.
            leases
                .keep_while(pipe.wait_for_oldest_answer(&mut shutdown))
                .await;
        }
    }
    pipe.drain(leases, &store, &settings, &shutdown).await;
    Ok(())
}

/// Longest pause after a batch failed entirely because the broker was
/// unavailable; pauses double from one second up to this.
const MAX_BROKER_PAUSE: Duration = Duration::from_secs(30);

/// The pauses while the broker is unavailable: from one second, doubling
/// up to the smaller of [`MAX_BROKER_PAUSE`] and the lease renewal
/// interval (a pausing relay must keep its shards).
struct BrokerBackoff {
    longest: Duration,
    current: Duration,
}

impl BrokerBackoff {
    fn new(max_broker_pause: Duration) -> Self {
        BrokerBackoff {
            longest: MAX_BROKER_PAUSE.min(max_broker_pause),
            current: Duration::ZERO,
        }
    }

    /// A whole batch failed for the broker's reasons: pause, longer each
    /// time in a row.
    async fn pause(&mut self, error: Option<String>, shutdown: &mut Shutdown) {
        let first = self.current.is_zero();
        self.current = (self.current * 2).clamp(Duration::from_secs(1), self.longest);
        // Once per outage: the producer's own outage log summarises the
        // rest (a finite message.timeout.ms fails a batch every few
        // seconds for as long as the broker is away).
        if first {
            tracing::warn!(
                error = error.as_deref().unwrap_or(""),
                pause = %humantime::format_duration(self.current),
                "broker unavailable: no message of the batch was delivered; pausing, then retrying with pauses up to {}",
                humantime::format_duration(self.longest)
            );
        } else {
            tracing::debug!(
                error = error.as_deref().unwrap_or(""),
                pause = %humantime::format_duration(self.current),
                "broker still unavailable; pausing"
            );
        }
        pause(shutdown, self.current).await;
    }

    /// A batch settled normally: the next pause starts from one second.
    fn reset(&mut self) {
        self.current = Duration::ZERO;
    }
}

/// Sleeps for `d` or until shutdown.
async fn pause(shutdown: &mut Shutdown, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::publish::Outcome;
    use crate::store::PendingMessage;

    pub fn msg(seq: i64, key: &str, attempts: i32) -> PendingMessage {
        crate::publish::tests::pending(seq, key, "t", attempts)
    }

    pub fn failed(permanent: bool) -> Outcome {
        Outcome::Failed {
            error: "boom".into(),
            permanent,
        }
    }
}
