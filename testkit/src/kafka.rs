//! Kafka-level readiness (feature `kafka`): a broker whose port accepts
//! connections may still fail Kafka requests for a moment, and a topic
//! just created may not show in the metadata yet. These waits ask the way
//! a client would, with a librdkafka metadata request.
//!
//! Every function here only reads metadata, so all of them are safe to
//! repeat. `brokers` is a `bootstrap.servers` list (`host:port,...`).

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use tokio::net::TcpStream;

use crate::{wait_for, Error, Result};

/// How long one metadata request in [`wait_for_metadata`] may take before
/// it counts as "not yet".
pub const METADATA_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`partition_count`]'s metadata request may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection attempt to the first broker may take before a
/// probe counts as "not yet" without asking librdkafka (which would spend
/// its whole request timeout on a closed port).
const CONNECT_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// Waits until the broker at `brokers` answers a metadata request, asking
/// every 50 ms. Fails with [`Error::Timeout`] after `timeout`.
pub async fn wait_for_metadata(brokers: &str, timeout: Duration) -> Result<()> {
    wait_for_metadata_while(brokers, timeout, || Ok(())).await
}

/// [`wait_for_metadata`], asking `alive` before each attempt and failing
/// with its error as soon as it returns one (say, because the broker
/// process exited, which no amount of waiting mends). The error type is
/// the caller's, as with [`wait_for`].
pub async fn wait_for_metadata_while<E, F>(
    brokers: &str,
    timeout: Duration,
    mut alive: F,
) -> Result<(), E>
where
    E: From<Error>,
    F: FnMut() -> Result<(), E>,
{
    let what = format!("the broker at {brokers} to answer metadata");
    wait_for(&what, timeout, || {
        let alive = alive();
        async move {
            alive?;
            Ok(answers_metadata(brokers).await.then_some(()))
        }
    })
    .await
}

/// Waits until `topic` shows exactly `partitions` partitions in the
/// metadata of `brokers`, asking every 50 ms; a failed request counts as
/// "not yet". Fails with [`Error::Timeout`] after `timeout`, saying what
/// the last request found.
pub async fn wait_for_partitions(
    brokers: &str,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<()> {
    let last = Mutex::new(String::from("no answer"));
    let what = format!("topic {topic} to show {partitions} partitions on {brokers}");
    let result = wait_for(&what, timeout, || {
        let last = &last;
        async move {
            let found = partition_count(brokers, topic).await;
            let done = matches!(found, Ok(n) if n == partitions as usize);
            *last.lock().unwrap_or_else(|e| e.into_inner()) = match found {
                Ok(n) => format!("{n} partitions"),
                Err(e) => e.to_string(),
            };
            Ok(done.then_some(()))
        }
    })
    .await;
    match result {
        Err(Error::Timeout { what, after, log }) => {
            let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
            Err(Error::Timeout {
                what: format!("{what} (last: {last})"),
                after,
                log,
            })
        }
        other => other,
    }
}

/// How many partitions `topic` has on `brokers`: 0 when the topic does not
/// exist (or the broker reports an error for it). One metadata request,
/// waiting [`METADATA_TIMEOUT`] (5 s) at most; fails with
/// [`Error::Metadata`].
pub async fn partition_count(brokers: &str, topic: &str) -> Result<usize> {
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    let count = tokio::task::spawn_blocking(move || blocking_partition_count(&b, &t))
        .await
        .map_err(|e| Error::io("asking for metadata")(e.into()))?;
    count.map_err(|source| Error::Metadata {
        brokers: brokers.to_owned(),
        source,
    })
}

/// One probe: the first broker accepts a connection and the cluster
/// answers a metadata request within [`METADATA_PROBE_TIMEOUT`].
async fn answers_metadata(brokers: &str) -> bool {
    // A broker that is not listening yet is told quickly by a refused
    // connection; librdkafka would wait out its request timeout instead.
    // A name that is not `ip:port` is left to librdkafka.
    if let Some(Ok(addr)) = brokers
        .split(',')
        .next()
        .map(str::parse::<std::net::SocketAddr>)
    {
        let connect = tokio::time::timeout(CONNECT_PROBE_TIMEOUT, TcpStream::connect(addr));
        if !matches!(connect.await, Ok(Ok(_))) {
            return false;
        }
    }
    let b = brokers.to_owned();
    tokio::task::spawn_blocking(move || blocking_metadata(&b).is_ok())
        .await
        .unwrap_or(false)
}

fn producer(brokers: &str) -> Result<BaseProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("reconnect.backoff.max.ms", "200")
        .create()
}

fn blocking_metadata(brokers: &str) -> Result<(), KafkaError> {
    producer(brokers)?
        .client()
        .fetch_metadata(None, METADATA_PROBE_TIMEOUT)
        .map(drop)
}

fn blocking_partition_count(brokers: &str, topic: &str) -> Result<usize, KafkaError> {
    let metadata = producer(brokers)?
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len()))
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    #[tokio::test]
    async fn waits_for_a_mock_cluster() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let limit = Duration::from_secs(10);
        wait_for_metadata(&brokers, limit).await.unwrap();
        wait_for_partitions(&brokers, "orders", 3, limit)
            .await
            .unwrap();
        let wrong = wait_for_partitions(&brokers, "orders", 4, Duration::from_millis(100)).await;
        let e = wrong.unwrap_err().to_string();
        assert!(e.contains("(last: 3 partitions)"), "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_times_out_and_a_dead_broker_fails_at_once() {
        let brokers = format!("127.0.0.1:{}", crate::free_port().unwrap());
        let closed = wait_for_metadata(&brokers, Duration::from_millis(100)).await;
        assert!(matches!(closed, Err(Error::Timeout { .. })), "{closed:?}");
        let dead = wait_for_metadata_while(&brokers, Duration::from_secs(30), || {
            Err(Error::NotRunning("tansu".into()))
        })
        .await;
        assert!(matches!(dead, Err(Error::NotRunning(_))), "{dead:?}");
    }
}
