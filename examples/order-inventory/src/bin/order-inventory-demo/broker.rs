//! The Kafka the run talks to: librdkafka's mock cluster hosted by this
//! program (the default: nothing to install), the pinned tansu broker, or
//! a cluster of the user's own. Every service and relay reaches it over
//! TCP through its bootstrap address, as it would reach Apache Kafka.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use order_inventory::Names;
use outbox_testkit::{kafka, Broker, MockBroker};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::Args;

/// Partitions of each of the demo's topics.
pub const PARTITIONS: i32 = 6;

/// Which broker `--broker` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    /// librdkafka's mock cluster (3 brokers), in this process.
    Mock,
    /// The tansu broker (`--tansu-bin`), as a child process.
    Tansu,
}

/// The running broker; dropping it stops a broker this program started.
pub enum DemoBroker {
    /// The mock cluster.
    Mock(MockBroker),
    /// A tansu process.
    Tansu(Box<Broker>),
    /// The user's cluster (`--brokers`).
    External(String),
}

impl DemoBroker {
    /// Starts (or, with `--brokers`, reaches) the broker and makes sure
    /// both topics of `names` exist with [`PARTITIONS`] partitions.
    pub async fn start(args: &Args, dir: &Path, names: &Names) -> anyhow::Result<Self> {
        let topics = [names.order_events.as_str(), names.inventory_events.as_str()];
        let broker = if let Some(brokers) = &args.brokers {
            kafka::wait_for_metadata(brokers, Duration::from_secs(30))
                .await
                .with_context(|| format!("reaching the Kafka cluster at {brokers}"))?;
            create_topics(brokers, &topics).await?;
            DemoBroker::External(brokers.clone())
        } else {
            match args.broker {
                BrokerKind::Mock => {
                    let specs: Vec<(&str, i32)> = topics.iter().map(|t| (*t, PARTITIONS)).collect();
                    DemoBroker::Mock(MockBroker::start(3, &specs)?)
                }
                BrokerKind::Tansu => {
                    let tansu = Broker::builder()
                        .bin(&args.tansu_bin)
                        .data_dir(dir.join("tansu"))
                        .log_file(dir.join("tansu.log"))
                        // tansu logs every request at RUST_LOG=info; keep it quiet.
                        .env_remove("RUST_LOG")
                        .start_timeout(Duration::from_secs(20))
                        .start()
                        .await?;
                    for topic in topics {
                        tansu.create_topic(topic, PARTITIONS as u32).await?;
                    }
                    DemoBroker::Tansu(Box::new(tansu))
                }
            }
        };
        for topic in topics {
            kafka::wait_for_partitions(
                &broker.addr(),
                topic,
                PARTITIONS as u32,
                Duration::from_secs(30),
            )
            .await?;
        }
        Ok(broker)
    }

    /// `bootstrap.servers` for the services and relays.
    pub fn addr(&self) -> String {
        match self {
            DemoBroker::Mock(m) => m.bootstrap().to_owned(),
            DemoBroker::Tansu(t) => t.addr(),
            DemoBroker::External(b) => b.clone(),
        }
    }

    /// What the report calls it.
    pub fn describe(&self) -> String {
        match self {
            DemoBroker::Mock(m) => format!(
                "librdkafka's mock Kafka cluster ({} brokers, in the demo runner) at {}",
                m.broker_count(),
                m.bootstrap()
            ),
            DemoBroker::Tansu(t) => format!("tansu at {}", t.addr()),
            DemoBroker::External(b) => format!("the Kafka cluster at {b}"),
        }
    }
}

/// Creates the topics on a cluster of the user's (the broker's default
/// replication factor); one that exists already is left as it is.
async fn create_topics(brokers: &str, topics: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating a Kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(-1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .context("creating the demo's topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}
