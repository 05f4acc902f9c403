//! The broker: a tansu process (memory or SQLite storage; the process
//! itself is `outbox_testkit::Broker`) or librdkafka's mock cluster hosted
//! in this process (`outbox_testkit::MockBroker`).

use std::time::Duration;

use anyhow::{Context, Result};
use outbox_testkit::{kafka, Storage};

/// How tansu keeps its data (`--broker-storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerStorage {
    /// In memory: lost on a restart, so broker faults are pauses.
    Memory,
    /// A SQLite file in the broker's folder: broker faults are SIGKILL and
    /// restart.
    Sqlite,
}

impl From<BrokerStorage> for Storage {
    fn from(s: BrokerStorage) -> Storage {
        match s {
            BrokerStorage::Memory => Storage::Memory,
            BrokerStorage::Sqlite => Storage::Sqlite,
        }
    }
}

/// Waits (up to `timeout`) until the broker at `brokers` answers a
/// metadata request; `alive` is asked before each attempt and fails the
/// wait when the broker process died.
pub async fn wait_ready(
    brokers: &str,
    timeout: Duration,
    alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    kafka::wait_for_metadata_while(brokers, timeout, alive).await
}

/// Waits (30 s at most) until `topic` shows `partitions` partitions in
/// the metadata.
pub async fn wait_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let partitions = u32::try_from(partitions).context("partitions")?;
    kafka::wait_for_partitions(brokers, topic, partitions, Duration::from_secs(30)).await?;
    Ok(())
}
