use std::time::Duration;

use rand::Rng;

/// Default for [`RetryPolicy::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Default for [`RetryPolicy::base_delay`].
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_secs(1);
/// Default for [`RetryPolicy::max_delay`].
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(300);

/// When a message that failed to publish is tried again, and when it is
/// given up on.
///
/// After failed attempt `n` (1-based) the message waits a random time
/// between half and all of `base_delay * 2^(n-1)`, capped at `max_delay`.
/// With the defaults: about 1s, 2s, 4s, 8s, … 256s, then 300s, so the
/// ten attempts span roughly 8 minutes. A message whose failure is one the
/// broker will never accept (too large, unknown topic, not authorised) is
/// dead-lettered once it has failed `max_attempts` times; failures of the
/// broker itself (unreachable, timed out) retry forever, because the
/// message is not at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts before a message is dead-lettered. Default 10.
    pub max_attempts: u32,
    /// Delay after the first failure. Default 1 s.
    pub base_delay: Duration,
    /// Longest delay between attempts. Default 300 s.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the delay after failed attempt `attempt` (1-based),
    /// before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        self.base_delay
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The jittered delay after failed attempt `attempt`: uniformly
    /// between half and all of [`ceiling`](Self::ceiling), so relays that
    /// failed together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + ceiling.mul_f64(rand::rng().random_range(0.0..=0.5))
    }

    /// Whether a message that has now failed `attempts` times with an error
    /// the broker will never accept goes to the dead-letter state.
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_and_caps() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (1..=11).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(p.ceiling(1000), p.max_delay);
        for n in 1..12 {
            let d = p.delay(n);
            assert!(d >= p.ceiling(n) / 2 && d <= p.ceiling(n), "{n}: {d:?}");
        }
        assert!(!p.exhausted(9));
        assert!(p.exhausted(10));
    }
}
