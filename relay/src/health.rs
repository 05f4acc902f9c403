//! Liveness: whether the publish loop makes progress, as `/healthz`, a
//! metric and the log see it, and the watchdog that stops a relay that
//! holds keys without publishing them.
//!
//! A relay that only looks alive is worse than a dead one: a dead relay's
//! leases expire and another relay takes its keys, a stuck one keeps
//! renewing them. So "alive" means "acknowledged by the broker, or had
//! nothing to do", not "the process answers".

use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock, so the tests can pause time.
use tokio::time::Instant;

/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Shared between the publish loop (which reports progress), the watchdog
/// and `/healthz`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    last_progress: Instant,
    /// Why the relay is unhealthy, if it is: shown by `/healthz`.
    problem: Option<String>,
    /// Set by the watchdog when it gave up on the loop.
    stalled: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            inner: Arc::new(Mutex::new(State {
                last_progress: Instant::now(),
                problem: None,
                stalled: None,
            })),
        }
    }
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state invalid
        // (plain values), so a poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loop moved: the broker acknowledged a batch, or there was
    /// nothing to publish. Clears a stall warning.
    pub fn progress(&self) {
        let mut s = self.state();
        s.last_progress = Instant::now();
        if s.stalled.is_none() && s.problem.take().is_some() {
            metrics::gauge!(crate::metrics::STALLED).set(0.0);
            tracing::info!("publishing again");
        }
    }

    /// Marks the relay unhealthy for `reason` (shown by `/healthz`).
    pub fn set_problem(&self, reason: String) {
        self.state().problem = Some(reason);
    }

    /// Why the relay is unhealthy, if it is.
    pub fn problem(&self) -> Option<String> {
        self.state().problem.clone()
    }

    /// Why the watchdog stopped the relay, if it did.
    pub fn stalled(&self) -> Option<String> {
        self.state().stalled.clone()
    }

    /// How long since the loop last moved.
    fn idle_for(&self) -> Duration {
        self.state().last_progress.elapsed()
    }
}

/// Watches `health`: after `limit / 2` without progress it warns, sets
/// `outbox_relay_stalled` and turns `/healthz` to 503 with the reason;
/// after `limit` it records the stall (see [`Health::stalled`]) and
/// completes, so the caller stops the relay, which gives its keys back and
/// exits non-zero for its supervisor to restart it. Runs until then.
pub async fn watch(health: Health, limit: Duration) {
    let mut warned = false;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let idle = health.idle_for();
        if idle < limit / 2 {
            warned = false;
            continue;
        }
        let reason = format!(
            "no message acknowledged for {} while messages wait (limit --stall-timeout {})",
            humantime::format_duration(Duration::from_secs(idle.as_secs())),
            humantime::format_duration(limit)
        );
        if !warned {
            tracing::warn!(reason = %reason, "the relay is not making progress");
            metrics::gauge!(crate::metrics::STALLED).set(1.0);
            warned = true;
        }
        health.set_problem(reason.clone());
        if idle >= limit {
            tracing::error!(
                reason = %reason,
                "giving up: releasing the shard leases and exiting so a supervisor restarts the relay"
            );
            health.state().stalled = Some(reason);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_without_progress_is_reported_then_stopped() {
        let health = Health::default();
        let watcher = tokio::spawn(watch(health.clone(), Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(health.problem(), None, "healthy before half the limit");
        health.progress();
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(
            health.problem().is_some(),
            "unhealthy after half the limit without progress"
        );
        assert!(!watcher.is_finished());
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(watcher.is_finished(), "stopped at the limit");
        assert!(health.stalled().is_some());
        watcher.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn progress_clears_the_warning() {
        let health = Health::default();
        let watcher = tokio::spawn(watch(health.clone(), Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(health.problem().is_some());
        health.progress();
        assert_eq!(health.problem(), None);
        assert!(!watcher.is_finished(), "must not stop");
        watcher.abort();
    }
}
