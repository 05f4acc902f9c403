//! Reads every partition of the topic from offset 0 with a plain rdkafka
//! consumer (explicit assignment, no group commits, read_committed) until
//! end-of-partition on all of them.
//!
//! tansu 0.6.0 answers `ListOffsets(latest)` with 1 for every partition,
//! so watermarks cannot tell where a partition ends; the consumer's
//! end-of-partition event (from the fetch's high watermark) does.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::check::{parse_payload, Seen};

/// Reads `topic` (`partitions` partitions) on `brokers` to the end; fails
/// after `timeout` naming the partitions that never reached their end.
pub fn read_all(
    brokers: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Seen>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("outbox-chaos-{}", outbox_testkit::random_suffix()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .context("creating the verification consumer")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    let mut eof: BTreeSet<i32> = BTreeSet::new();
    let mut seen = Vec::new();
    let mut errors = 0u32;
    while eof.len() < partitions as usize {
        if Instant::now() > deadline {
            let missing: Vec<i32> = (0..partitions).filter(|p| !eof.contains(p)).collect();
            bail!(
                "reading {topic}: partitions {missing:?} did not reach their end within {timeout:?} ({} records read)",
                seen.len()
            );
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(m)) => {
                // A record after an end-of-partition: that partition is not
                // at its end after all.
                eof.remove(&m.partition());
                let mut id = None;
                if let Some(headers) = m.headers() {
                    for h in headers.iter() {
                        if h.key == outbox::headers::ID {
                            id = h
                                .value
                                .and_then(|v| std::str::from_utf8(v).ok())
                                .and_then(|v| Uuid::parse_str(v).ok());
                        }
                    }
                }
                seen.push(Seen {
                    partition: m.partition(),
                    offset: m.offset(),
                    record_key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    id,
                    payload: m.payload().and_then(parse_payload),
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => {
                errors += 1;
                if errors <= 20 {
                    eprintln!("chaos: verification consumer: {e}");
                }
            }
        }
    }
    Ok(seen)
}
