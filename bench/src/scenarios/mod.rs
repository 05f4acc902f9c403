//! The measurements. Each creates what it needs (a fresh database, a fresh
//! topic, a relay process), measures, checks that nothing went missing,
//! and cleans up. A failed check is an error, never a low number.

mod ceiling;
mod drain;
mod health;
mod latency;
mod limits;
mod overhead;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};

use crate::db::Server;
use crate::kafka;
use crate::relay::RelaySpec;

pub use ceiling::{ceiling, CeilingResult};
pub use drain::{drain, DrainResult};
pub use health::{health, HealthResult};
pub use latency::{broker_latency, latency, LatencyLoad, LatencyResult, ProbeResult};
pub use limits::{limits, LimitsResult};
pub use overhead::{overhead, OverheadResult};

/// What every scenario shares.
pub struct Ctx {
    pub server: Server,
    pub brokers: String,
    pub partitions: i32,
    pub relay: RelaySpec,
    pub run_id: String,
    pub log_dir: PathBuf,
    /// How long a drain may take before it counts as failed.
    pub drain_timeout: Duration,
}

impl Ctx {
    /// A fresh topic name for `what`.
    fn topic(&self, what: &str) -> String {
        format!("bench-{}-{what}", self.run_id)
    }

    async fn fresh_topic(&self, what: &str) -> Result<String> {
        let topic = self.topic(what);
        kafka::create_topic(&self.brokers, &topic, self.partitions).await?;
        Ok(topic)
    }

    /// Reads `topic` back and fails unless it holds `n` distinct messages.
    async fn verify_on_broker(&self, topic: &str, n: u64, what: &str) -> Result<usize> {
        let found = kafka::distinct_ids(
            &self.brokers,
            topic,
            self.partitions,
            n as usize,
            Duration::from_secs(10),
        )
        .await?;
        ensure!(
            found >= n as usize,
            "{what}: reading the topic back found {found} of {n} messages"
        );
        Ok(found)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    fn spec(&self, wakeup: &'static str, extra: &[&str]) -> RelaySpec {
        let mut spec = self.relay.clone();
        spec.wakeup = wakeup;
        spec.args.extend(extra.iter().map(|s| s.to_string()));
        spec
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("   {}", msg.as_ref());
}
