//! librdkafka's mock Kafka cluster (feature `kafka`), hosted in this
//! process: real brokers speaking the Kafka protocol on real TCP ports of
//! 127.0.0.1, so other processes (relays, services) connect to it as to
//! any Kafka. It keeps records, consumer groups, committed offsets and
//! idempotent-producer state in memory, and lives until its
//! [`MockBroker`] drops. Nothing to install: librdkafka is already built
//! into every client here.
//!
//! What it does not do (librdkafka 2.12's `rdkafka_mock_cgrp.c`): a
//! restarted consumer with the same `group.instance.id` is not put in its
//! predecessor's place, as Apache Kafka does with static membership; the
//! group rebalances instead and waits up to the session timeout less one
//! second for the old member. The first join of a group waits 3 s (the
//! broker's `group.initial.rebalance.delay.ms`).

use std::sync::mpsc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::{Error, Result};

/// An operation on a running [`MockBroker`].
#[derive(Debug, Clone)]
pub enum MockOp {
    /// Moves the leadership of a partition of `topic` to a broker.
    SetLeader {
        /// Topic.
        topic: String,
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

type Reply = mpsc::Sender<std::result::Result<(), String>>;

/// librdkafka's mock cluster, owned by a thread of its own (its handle is
/// not `Send`); [`apply`](Self::apply) sends operations to that thread.
/// The cluster and its ports close when this drops.
#[derive(Debug)]
pub struct MockBroker {
    bootstrap: String,
    brokers: i32,
    ops: Option<mpsc::Sender<(MockOp, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockBroker {
    /// A mock cluster of `brokers` brokers with each `(topic, partitions)`
    /// created, replicated on every broker. Fails with
    /// [`Error::Mock`] if librdkafka cannot create it.
    pub fn start(brokers: i32, topics: &[(&str, i32)]) -> Result<Self> {
        let (ops_tx, ops_rx) = mpsc::channel::<(MockOp, Reply)>();
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<String, String>>();
        let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| ((*t).into(), *p)).collect();
        let thread = std::thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("creating the cluster: {e}")));
                        return;
                    }
                };
                for (topic, partitions) in &topics {
                    if let Err(e) = cluster.create_topic(topic, *partitions, brokers) {
                        let _ = ready_tx.send(Err(format!("creating topic {topic}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                for (op, reply) in ops_rx {
                    let result = match op {
                        MockOp::SetLeader {
                            topic,
                            partition,
                            broker,
                        } => cluster
                            .partition_leader(&topic, partition, Some(broker))
                            .map_err(|e| format!("partition_leader: {e}")),
                        MockOp::ProduceErrors(errors) => {
                            cluster.request_errors(RDKafkaApiKey::Produce, &errors);
                            Ok(())
                        }
                        MockOp::Rtt { broker, rtt } => cluster
                            .broker_round_trip_time(broker, rtt)
                            .map_err(|e| format!("broker_round_trip_time: {e}")),
                    };
                    let _ = reply.send(result);
                }
            })
            .map_err(Error::io("spawning the mock cluster's thread"))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| Error::Mock("its thread died at start".into()))?
            .map_err(Error::Mock)?;
        Ok(MockBroker {
            bootstrap,
            brokers,
            ops: Some(ops_tx),
            thread: Some(thread),
        })
    }

    /// The cluster's `bootstrap.servers` (`127.0.0.1:PORT,...`).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// How many brokers the cluster has.
    pub fn broker_count(&self) -> i32 {
        self.brokers
    }

    /// Applies `op` and waits until it is applied; [`Error::Mock`] if
    /// librdkafka refused it or the cluster is gone.
    pub fn apply(&self, op: MockOp) -> Result<()> {
        let gone = || Error::Mock("the cluster's thread is gone".into());
        let (tx, rx) = mpsc::channel();
        self.ops
            .as_ref()
            .ok_or_else(gone)?
            .send((op, tx))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?.map_err(Error::Mock)
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop, which drops the
        // cluster (and closes its ports) on the thread that made it.
        self.ops.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{partition_count, wait_for_metadata};

    #[tokio::test]
    async fn serves_its_topics_until_dropped() {
        let mock = MockBroker::start(3, &[("a", 6), ("b", 2)]).unwrap();
        let brokers = mock.bootstrap().to_owned();
        assert_eq!(brokers.split(',').count(), 3, "{brokers}");
        wait_for_metadata(&brokers, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(partition_count(&brokers, "a").await.unwrap(), 6);
        assert_eq!(partition_count(&brokers, "b").await.unwrap(), 2);
        mock.apply(MockOp::SetLeader {
            topic: "a".into(),
            partition: 0,
            broker: 2,
        })
        .unwrap();
        let refused = mock.apply(MockOp::SetLeader {
            topic: "a".into(),
            partition: 99,
            broker: 2,
        });
        assert!(matches!(refused, Err(Error::Mock(_))), "{refused:?}");
        drop(mock);
        let first = brokers.split(',').next().unwrap();
        assert!(
            std::net::TcpStream::connect(first).is_err(),
            "the port should be closed once the mock is dropped"
        );
    }
}
