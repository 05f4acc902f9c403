//! What the loop does when a fetch found nothing: wait for the broker's
//! answer, a mark, a commit notification or the poll interval, and ask for
//! notifications only while there is nothing to do.

use std::time::{Duration, Instant};

use crate::health::Health;
use crate::lease::ShardLeases;
use crate::shutdown::Shutdown;
use crate::store::RelayStore;
use crate::wake::Waker;

use super::pipeline::Pipeline;

/// The idle waits, and whether this relay's row says it waits for work
/// (so that inserts notify; see [`RelayStore::set_waiting`]). The mark is
/// set when the relay runs out of work and cleared when it falls a full
/// batch behind: a busy relay needs no wake-up, and writers that notify
/// commit one at a time.
pub(super) struct Idle {
    waker: Waker,
    poll_interval: Duration,
    waiting: bool,
}

impl Idle {
    pub fn new(waker: Waker, poll_interval: Duration) -> Self {
        Idle {
            waker,
            poll_interval,
            waiting: false,
        }
    }

    /// Starts listening for commit notifications, if the relay uses them.
    pub async fn listen(&mut self) {
        self.waker.listen().await;
    }

    /// Nothing new was fetched: waits until there may be.
    pub async fn wait_for_work(
        &mut self,
        pipe: &mut Pipeline,
        leases: &mut ShardLeases,
        store: &RelayStore,
        health: &Health,
        shutdown: &mut Shutdown,
    ) {
        // Look again when the oldest batch is acknowledged (a few
        // milliseconds), not on every commit notification, so that commits
        // arriving meanwhile go out together instead of as a stream of
        // one-message batches, each with its own marking statement.
        if !pipe.flights.is_empty() {
            leases
                .keep_while(pipe.wait_for_oldest_answer(shutdown))
                .await;
            return;
        }
        // Nothing to publish and nothing in flight: not a stall.
        health.progress();
        // The keys of a batch being marked may have more behind them: look
        // again once it is marked, or on a commit, whichever comes first (a
        // mark can wait on a slow WAL flush; new commits need not wait with
        // it).
        let poll = self.poll_interval;
        let waker = &mut self.waker;
        let commit_or_stop = async {
            tokio::select! {
                _ = waker.wait(poll) => {}
                _ = shutdown.wait() => {}
            }
        };
        if pipe.wait_oldest_mark_or(commit_or_stop).await {
            return;
        }
        if self.waker.listens() && !self.waiting {
            let lease = Some(leases.lease());
            if let Err(e) = store.set_waiting(leases.relay_id(), lease).await {
                tracing::warn!(error = %e, "cannot ask for wake-up notifications; polling");
            }
            self.waiting = true;
            // One more look: a commit from before this did not notify.
            return;
        }
        let wait = self.poll_interval.min(
            leases
                .next_renewal()
                .saturating_duration_since(Instant::now()),
        );
        tokio::select! {
            _ = self.waker.wait(wait) => {}
            _ = shutdown.wait() => {}
        }
    }

    /// The relay fetched a full batch: there is likely more, so it stops
    /// asking for notifications.
    pub async fn busy(&mut self, store: &RelayStore, leases: &ShardLeases) {
        if !self.waiting {
            return;
        }
        if let Err(e) = store.set_waiting(leases.relay_id(), None).await {
            tracing::debug!(error = %e, "cannot stop wake-up notifications");
        }
        self.waiting = false;
    }
}
