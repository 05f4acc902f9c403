//! The broker: a tansu process (memory or SQLite storage; the process
//! itself is `outbox_testkit::Broker`) or librdkafka's mock cluster hosted
//! in this process.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use outbox_testkit::{kafka, Storage};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

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

// ---------------------------------------------------------------------------
// librdkafka's mock cluster
// ---------------------------------------------------------------------------

/// An operation on the mock cluster.
#[derive(Debug, Clone)]
pub enum MockOp {
    /// Moves the leadership of a partition to a broker.
    SetLeader {
        /// Partition.
        partition: i32,
        /// New leader (1-based broker id).
        broker: i32,
    },
    /// Makes the next Produce requests fail with these errors, in order.
    ProduceErrors(Vec<RDKafkaRespErr>),
    /// Sets a broker's round-trip time (zero to clear).
    Rtt {
        /// Broker id.
        broker: i32,
        /// Added delay.
        rtt: Duration,
    },
}

/// librdkafka's mock cluster, owned by a thread of its own (the handle is
/// not `Send`); operations are sent to it over a channel. The cluster
/// lives until this handle drops.
#[derive(Debug)]
pub struct MockBroker {
    bootstrap: String,
    brokers: i32,
    ops: Option<mpsc::Sender<(MockOp, mpsc::Sender<Result<()>>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockBroker {
    /// A mock cluster of `brokers` brokers with `topic` (`partitions`
    /// partitions, replication factor `brokers`).
    pub fn start(brokers: i32, topic: &str, partitions: i32) -> Result<Self> {
        let (ops_tx, ops_rx) = mpsc::channel::<(MockOp, mpsc::Sender<Result<()>>)>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String>>();
        let topic = topic.to_owned();
        let thread = std::thread::Builder::new()
            .name("mock-cluster".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("creating the mock cluster: {e}")));
                        return;
                    }
                };
                if let Err(e) = cluster.create_topic(&topic, partitions, brokers) {
                    let _ = ready_tx.send(Err(anyhow!("creating {topic} on the mock: {e}")));
                    return;
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                for (op, reply) in ops_rx {
                    let result = match op {
                        MockOp::SetLeader { partition, broker } => cluster
                            .partition_leader(&topic, partition, Some(broker))
                            .map_err(|e| anyhow!("partition_leader: {e}")),
                        MockOp::ProduceErrors(errors) => {
                            cluster.request_errors(RDKafkaApiKey::Produce, &errors);
                            Ok(())
                        }
                        MockOp::Rtt { broker, rtt } => cluster
                            .broker_round_trip_time(broker, rtt)
                            .map_err(|e| anyhow!("broker_round_trip_time: {e}")),
                    };
                    let _ = reply.send(result);
                }
            })
            .context("spawning the mock cluster thread")?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow!("the mock cluster thread died at start"))??;
        Ok(MockBroker {
            bootstrap,
            brokers,
            ops: Some(ops_tx),
            thread: Some(thread),
        })
    }

    /// The bootstrap servers of the mock cluster.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// How many brokers the cluster has.
    pub fn broker_count(&self) -> i32 {
        self.brokers
    }

    /// Applies `op` and waits for it to be applied.
    pub fn apply(&self, op: MockOp) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.ops
            .as_ref()
            .context("mock cluster stopped")?
            .send((op, tx))
            .map_err(|_| anyhow!("the mock cluster thread is gone"))?;
        rx.recv()
            .map_err(|_| anyhow!("the mock cluster thread is gone"))?
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        self.ops.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
