//! Per-key order under at-least-once, shared by the tests that check it.
//!
//! What "in order" must mean: a crash between the broker's ack and the
//! mark makes the next owner of the key publish the unmarked messages
//! again, so a key's stream may repeat a stretch it already had
//! (1 2 3 4 | 3 4 5 6). A consumer that de-duplicates on the message id
//! processes each message at its first occurrence, so the guarantee is:
//! for every key, the first occurrences of its messages come in enqueue
//! order, none is missing, and all of them are on one partition. A message
//! overtaking an earlier one of its key (1 3 2) or a gap (1 2 4) breaks it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use outbox::{Message, Outbox};
use rand::Rng;
use uuid::Uuid;

use super::{Record, TopicReader};

/// Commits 1 to 4 messages per transaction on random keys `key-0` ..
/// `key-{keys-1}`, about a hundred transactions a second, until `stop`;
/// each message's payload is its key's next number (1, 2, ...). Returns
/// the last number committed per key. A failed transaction (the database
/// restarting) is retried; nothing is counted that did not commit.
pub async fn write_numbered(
    pool: sqlx::PgPool,
    topic: String,
    keys: usize,
    stop: Arc<AtomicBool>,
) -> Result<Vec<u64>> {
    let outbox = Outbox::new();
    let mut last = vec![0u64; keys];
    while !stop.load(Ordering::Relaxed) {
        let mut next = last.clone();
        let batch: Vec<Message> = (0..rand::rng().random_range(1..=4))
            .map(|_| {
                let k = rand::rng().random_range(0..keys);
                next[k] += 1;
                Message::new(topic.clone(), next[k].to_string()).key(format!("key-{k}"))
            })
            .collect();
        let mut tx = pool.begin().await?;
        outbox.enqueue_all(&mut *tx, batch).await?;
        tx.commit().await?;
        last = next;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(last)
}

/// Reads `topic` until every key's last number (`last[k]` for `key-{k}`)
/// arrived, or `timeout`; returns the records read and whether all came.
pub async fn read_numbered(
    brokers: &str,
    topic: &str,
    last: &[u64],
    timeout: Duration,
) -> Result<(Vec<Record>, bool)> {
    let mut reader = TopicReader::new(brokers, topic).await?;
    let mut newest: HashMap<String, u64> = HashMap::new();
    let mut counted = 0;
    let complete = reader
        .read_until(timeout, |records| {
            for r in &records[counted..] {
                let key =
                    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
                let seq = std::str::from_utf8(r.payload.as_deref().unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let e = newest.entry(key).or_default();
                *e = (*e).max(seq);
            }
            counted = records.len();
            last.iter()
                .enumerate()
                .all(|(k, &l)| newest.get(&format!("key-{k}")).copied().unwrap_or(0) >= l)
        })
        .await?;
    Ok((reader.records, complete))
}

/// What [`check_numbered`] found.
#[derive(Debug, Default)]
pub struct OrderReport {
    /// Records that repeated an earlier one of their key.
    pub resent: usize,
    /// Keys whose stream ends on a re-sent older message.
    pub last_not_newest: usize,
    /// One line per key that broke the rule.
    pub violations: Vec<String>,
}

/// Checks every key's records (in partition offset order) against the
/// rule in the module docs. Records of keys other than `key-0` ..
/// `key-{n}` are violations too.
pub fn check_numbered(records: &[Record], last: &[u64]) -> OrderReport {
    let mut by_key: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in records {
        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
        by_key.entry(key).or_default().push(r);
    }
    let mut report = OrderReport::default();
    for (k, &last_seq) in last.iter().enumerate() {
        let key = format!("key-{k}");
        let mut records = by_key.remove(&key).unwrap_or_default();
        records.sort_by_key(|r| r.offset);
        match check_key(&key, &records, last_seq) {
            Ok(resent) => report.resent += resent,
            Err(e) => report.violations.push(e.to_string()),
        }
        let tail = records.last().and_then(|r| r.payload.as_deref());
        if last_seq > 0 && tail != Some(last_seq.to_string().as_bytes()) {
            report.last_not_newest += 1;
        }
    }
    for key in by_key.keys() {
        report.violations.push(format!("unexpected key {key}"));
    }
    report
}

/// Checks one key's records (in partition offset order) against the rule
/// in the module docs; returns how many were re-sends.
pub fn check_key(key: &str, records: &[&Record], last: u64) -> Result<usize> {
    let partitions: Vec<i32> = records.iter().map(|r| r.partition).collect();
    if partitions.windows(2).any(|w| w[0] != w[1]) {
        bail!("key {key} is spread over partitions {partitions:?}");
    }
    let mut first_seen: BTreeMap<u64, Uuid> = BTreeMap::new();
    let mut firsts: Vec<u64> = Vec::new();
    for r in records {
        let payload = r.payload.as_deref().unwrap_or_default();
        let seq: u64 = std::str::from_utf8(payload)?
            .parse()
            .with_context(|| format!("payload of a {key} record is not a number"))?;
        let id = r.outbox_id()?;
        match first_seen.get(&seq) {
            Some(first) if *first != id => bail!("key {key}: seq {seq} came with two ids"),
            Some(_) => {}
            None => {
                first_seen.insert(seq, id);
                firsts.push(seq);
            }
        }
    }
    let expected: Vec<u64> = (1..=last).collect();
    if firsts != expected {
        let out_of_order = firsts.windows(2).find(|w| w[0] > w[1]);
        let missing: Vec<u64> = expected
            .iter()
            .filter(|s| !first_seen.contains_key(s))
            .copied()
            .collect();
        bail!(
            "key {key}: first occurrences are not 1..={last} in order (first inversion {out_of_order:?}, missing {missing:?}); stream: {:?}",
            records
                .iter()
                .map(|r| String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).into_owned())
                .collect::<Vec<_>>()
        );
    }
    Ok(records.len() - firsts.len())
}
