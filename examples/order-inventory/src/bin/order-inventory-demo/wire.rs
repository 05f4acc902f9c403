//! The broker side of the demo: duplicates put on the wire on purpose,
//! and an audit of every record the run produced.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use order_inventory::Names;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Each partition's end offset, by (topic, partition).
type Ends = HashMap<(String, i32), i64>;

/// How long one metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer outside any group, assigned every partition of `topics`
/// from the beginning (a group would first wait for its join, 3 s on a
/// new group), and each partition's end offset when it started: reading
/// up to those offsets reads everything there was.
fn read_all(brokers: &str, topics: &[&str]) -> anyhow::Result<(BaseConsumer, Ends)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Required by librdkafka for a consumer, though no group is joined.
        .set("group.id", "order-inventory-demo-audit")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .with_context(|| format!("metadata of {topic}"))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == *topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        for p in 0..partitions as i32 {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
            let (_, high) = consumer
                .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .with_context(|| format!("end offset of {topic}/{p}"))?;
            if high > 0 {
                ends.insert(((*topic).to_owned(), p), high);
            }
        }
    }
    consumer.assign(&assignment)?;
    Ok((consumer, ends))
}

/// Polls `consumer` until every partition in `ends` reached its end
/// offset, handing each record to `each` (which returns false to stop
/// early); fails after 60 s.
fn drain(
    consumer: &BaseConsumer,
    mut ends: Ends,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !ends.is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "reading the topics back took over 60 s ({} partitions unfinished)",
            ends.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = (m.topic().to_owned(), m.partition());
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
                if !each(&m) {
                    return Ok(());
                }
            }
            Some(Err(e)) => eprintln!("audit consumer: {e}"),
            None => {}
        }
    }
    Ok(())
}

/// Produces copies (same key, value and headers) of up to `n` records
/// already in `topic`: duplicates on the wire, as at-least-once delivery
/// makes them.
pub async fn replay_records(brokers: &str, topic: &str, n: usize) -> anyhow::Result<usize> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (consumer, ends) = read_all(brokers, &[topic])?;
    let mut copies = Vec::new();
    drain(&consumer, ends, |m| {
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        copies.push((
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
            headers,
        ));
        copies.len() < n
    })?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    for (key, payload, headers) in &copies {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(h);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(copies.len())
}

/// Every record of both topics, and how many distinct outbox ids they carry.
pub fn wire_counts(brokers: &str, names: &Names) -> anyhow::Result<(usize, usize)> {
    let (consumer, ends) = read_all(brokers, &[&names.order_events, &names.inventory_events])?;
    let mut ids = HashSet::new();
    let mut records = 0;
    drain(&consumer, ends, |m| {
        records += 1;
        if let Some(id) = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == outbox::headers::ID))
            .and_then(|h| h.value)
        {
            ids.insert(id.to_vec());
        }
        true
    })?;
    Ok((records, ids.len()))
}
