//! Reading a topic back: every record with its headers, from the
//! beginning, as a consumer of the published messages sees it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use outbox_testkit::{kafka, random_suffix};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

/// One record read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers in record order (names may repeat); a null value is `None`.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The headers as a map (the last value wins on repeated names).
    pub fn header_map(&self) -> BTreeMap<String, Option<Vec<u8>>> {
        self.headers.iter().cloned().collect()
    }

    /// Headers that are not the relay's own `outbox-*` ones, in order.
    pub fn user_headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.headers
            .iter()
            .filter(|(n, _)| !n.starts_with(outbox::headers::RESERVED_PREFIX))
            .cloned()
            .collect()
    }

    /// The `outbox-id` header as a UUID.
    pub fn outbox_id(&self) -> Result<Uuid> {
        let raw = self.header(outbox::headers::ID).ok_or_else(|| {
            anyhow!(
                "record {}/{} has no outbox-id header",
                self.partition,
                self.offset
            )
        })?;
        Ok(Uuid::parse_str(std::str::from_utf8(raw)?)?)
    }
}

/// Reads a topic from the beginning of every partition.
pub struct TopicReader {
    consumer: StreamConsumer,
    topic: String,
    /// Everything read so far, in arrival order (offset order within a
    /// partition).
    pub records: Vec<Record>,
}

impl TopicReader {
    /// A reader of `topic` (which must exist) on `brokers`.
    pub async fn new(brokers: &str, topic: &str) -> Result<Self> {
        let partitions = kafka::partition_count(brokers, topic).await?;
        Self::assigned(consumer_config(brokers, &[]), brokers, topic, partitions)
    }

    /// [`new`](Self::new) with extra librdkafka settings over the reader's
    /// own (say `security.protocol=SSL` and `ssl.ca.location`); the
    /// partitions are looked up with the same settings.
    pub async fn with_settings(
        brokers: &str,
        topic: &str,
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        let config = consumer_config(brokers, settings);
        let (lookup, t) = (config.clone(), topic.to_owned());
        let partitions = tokio::task::spawn_blocking(move || -> Result<usize> {
            let consumer: BaseConsumer = lookup.create()?;
            let metadata = consumer.fetch_metadata(Some(&t), kafka::METADATA_TIMEOUT)?;
            Ok(metadata
                .topics()
                .iter()
                .find(|m| m.name() == t && m.error().is_none())
                .map_or(0, |m| m.partitions().len()))
        })
        .await?
        .with_context(|| format!("asking {brokers} for the partitions of {topic}"))?;
        Self::assigned(config, brokers, topic, partitions)
    }

    fn assigned(
        config: ClientConfig,
        brokers: &str,
        topic: &str,
        partitions: usize,
    ) -> Result<Self> {
        if partitions == 0 {
            bail!("topic {topic} does not exist on {brokers}");
        }
        let consumer: StreamConsumer = config.create().context("creating the test consumer")?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(TopicReader {
            consumer,
            topic: topic.to_owned(),
            records: Vec::new(),
        })
    }

    /// Reads until `done(&records)` holds or `timeout` passes; returns
    /// whether `done` held. What was read stays in `self.records` either way.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.records) {
                return Ok(true);
            }
            let next = tokio::time::timeout_at(deadline, self.consumer.recv()).await;
            let Ok(next) = next else {
                return Ok(done(&self.records));
            };
            match next {
                Ok(m) => {
                    let headers = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default();
                    self.records.push(Record {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
                // Transient consumer errors (broker restarting) are retried
                // by librdkafka; keep reading.
                Err(e) => eprintln!("test consumer on {}: {e}", self.topic),
            }
        }
    }

    /// Reads until every id in `ids` was seen at least once, or `timeout`.
    pub async fn read_ids(
        &mut self,
        ids: &std::collections::HashSet<Uuid>,
        timeout: Duration,
    ) -> Result<bool> {
        let mut seen = std::collections::HashSet::new();
        let mut counted = 0;
        self.read_until(timeout, |records| {
            for r in &records[counted..] {
                if let Ok(id) = r.outbox_id() {
                    if ids.contains(&id) {
                        seen.insert(id);
                    }
                }
            }
            counted = records.len();
            seen.len() == ids.len()
        })
        .await
    }
}

/// The reader's consumer settings, `extra` over them.
fn consumer_config(brokers: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("outbox-test-{}", random_suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("reconnect.backoff.max.ms", "500");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config
}

/// Counts how often each `outbox-id` occurs in `records`; fails on a record
/// without one.
pub fn id_counts(records: &[Record]) -> Result<BTreeMap<Uuid, usize>> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.outbox_id()?).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Prints how many records were re-sends of an id already read.
pub fn report_duplicates(test: &str, records: &[Record]) -> Result<usize> {
    let counts = id_counts(records)?;
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let ids_twice = counts.values().filter(|c| **c > 1).count();
    eprintln!(
        "{test}: {} records, {} distinct ids, {duplicates} duplicate records ({ids_twice} ids delivered more than once)",
        records.len(),
        counts.len()
    );
    Ok(duplicates)
}
