//! The broker side of the demo: duplicates put on the wire on purpose,
//! and an audit of every record the run produced.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use order_inventory::{INVENTORY_EVENTS, ORDER_EVENTS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::ClientConfig;

/// Produces copies (same key, value and headers) of up to `n` records
/// already in `topic`: duplicates on the wire, as at-least-once delivery
/// makes them.
pub async fn replay_records(brokers: &str, topic: &str, n: usize) -> anyhow::Result<usize> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("demo-replay-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut copies = Vec::new();
    let started = Instant::now();
    while copies.len() < n && started.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
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
        }
    }
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
pub fn wire_counts(brokers: &str) -> anyhow::Result<(usize, usize)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("demo-audit-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[ORDER_EVENTS, INVENTORY_EVENTS])?;
    let mut ids = HashSet::new();
    let mut records = 0;
    let mut quiet_since = Instant::now();
    let started = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3)
        && started.elapsed() < Duration::from_secs(60)
    {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                records += 1;
                quiet_since = Instant::now();
                if let Some(h) = m.headers() {
                    if let Some(id) = h
                        .iter()
                        .find(|h| h.key == outbox::headers::ID)
                        .and_then(|h| h.value)
                    {
                        ids.insert(id.to_vec());
                    }
                }
            }
            Some(Err(e)) => eprintln!("audit consumer: {e}"),
            None => {}
        }
    }
    Ok((records, ids.len()))
}
