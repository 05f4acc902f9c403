//! Per-key order with two relays sharing the work and one of them
//! SIGKILLed mid-run (twice: the dead one is replaced and the other killed).
//!
//! What "in order" must mean under at-least-once: a crash between the
//! broker's ack and the mark makes the next owner of the key publish the
//! unmarked messages again, so a key's stream may repeat a stretch it
//! already had (1 2 3 4 | 3 4 5 6). A consumer that de-duplicates on the
//! message id processes each message at its first occurrence, so the
//! guarantee is: for every key, the first occurrences of its messages come
//! in enqueue order, none is missing, and all of them are on one
//! partition. A message overtaking an earlier one of its key (1 3 2) or a
//! gap (1 2 4) breaks it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use common::{Broker, Record, Relay, Storage, TestDb, TopicReader, FAST_RECOVERY};
use outbox::{Message, Outbox};
use rand::Rng;
use uuid::Uuid;

const KEYS: usize = 50;
const WRITE_FOR: Duration = Duration::from_secs(15);

/// Commits 1 to 4 messages per transaction on random keys; each message's
/// payload is its key's next sequence number (1, 2, ...). Returns the
/// last number committed per key.
async fn write(pool: sqlx::PgPool, topic: String, stop: Arc<AtomicBool>) -> Result<Vec<u64>> {
    let outbox = Outbox::new();
    let mut last = vec![0u64; KEYS];
    while !stop.load(Ordering::Relaxed) {
        let mut next = last.clone();
        let batch: Vec<Message> = (0..rand::rng().random_range(1..=4))
            .map(|_| {
                let k = rand::rng().random_range(0..KEYS);
                next[k] += 1;
                Message::new(topic.clone(), next[k].to_string()).key(format!("key-{k}"))
            })
            .collect();
        let mut tx = pool.begin().await?;
        outbox.enqueue_all(&mut *tx, batch).await?;
        tx.commit().await?;
        last = next;
        // The load profile: about a hundred transactions a second.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(last)
}

/// Shard -> owning relay's name, for live leases.
async fn owners(db: &TestDb) -> Result<BTreeMap<i16, String>> {
    let rows: Vec<(i16, String)> = sqlx::query_as(
        "SELECT l.shard, r.name FROM outbox.shard_lease l JOIN outbox.relay r ON r.id = l.owner \
         WHERE l.lease_until > now()",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until each of `names` has published at least `enough` messages of
/// the shards it held, with shard ownership unchanged over the whole
/// observation, which shows that each relay published while it held them.
async fn each_relay_publishes(db: &TestDb, names: &[&str], enough: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let before = owners(db).await?;
        let since: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&db.pool)
            .await?;
        if names.iter().all(|n| before.values().any(|o| o == n)) {
            let mut counts: HashMap<String, i64> = HashMap::new();
            let watch_until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < watch_until {
                let rows: Vec<(i16, i64)> = sqlx::query_as(
                    "SELECT shard, count(*) FROM outbox.message \
                     WHERE status = 'published' AND published_at > $1 GROUP BY shard",
                )
                .bind(since)
                .fetch_all(&db.pool)
                .await?;
                counts.clear();
                for (shard, n) in rows {
                    if let Some(owner) = before.get(&shard) {
                        *counts.entry(owner.clone()).or_default() += n;
                    }
                }
                if names
                    .iter()
                    .all(|n| counts.get(*n).copied().unwrap_or(0) >= enough)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let after = owners(db).await?;
            if after == before
                && names
                    .iter()
                    .all(|n| counts.get(*n).copied().unwrap_or(0) >= enough)
            {
                eprintln!("published per relay while ownership was stable: {counts:?}");
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "not every relay of {names:?} was seen publishing; owners now {:?}",
        db.shard_owners().await?
    )
}

/// Checks one key's records (in partition offset order) against the rule
/// in the module docs; returns how many were re-sends.
fn check_key(key: &str, records: &[&Record], last: u64) -> Result<usize> {
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

#[tokio::test]
async fn per_key_order_holds_across_two_relays_and_a_crash() -> Result<()> {
    let db = TestDb::new().await?;
    let broker = Broker::start_new("key_order", Storage::Memory).await?;
    let topic = common::unique_topic("order");
    broker.create_topic(&topic, 6).await?;

    let mut args = FAST_RECOVERY.to_vec();
    args.extend(["--batch-size", "50"]);
    let spawn = |name: &str| {
        let mut a = args.clone();
        a.extend(["--name", name]);
        Relay::spawn(&format!("key_order-{name}"), &db.url, &broker.addr(), &a)
    };
    let mut a = spawn("relay-a")?;
    let mut b = spawn("relay-b")?;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writer = tokio::spawn(write(db.pool.clone(), topic.clone(), stop.clone()));

    // Two rounds: both relays take part, then one of them dies at a random
    // point and the other takes over its keys once their lease ends. The
    // second round restarts the dead one and kills the other.
    let mut c = None;
    for (victim, survivor) in [("relay-a", "relay-b"), ("relay-b", "relay-c")] {
        each_relay_publishes(&db, &[victim, survivor], 20).await?;
        let delay = Duration::from_millis(rand::rng().random_range(0..1_000));
        tokio::time::sleep(delay).await;
        match victim {
            "relay-a" => a.kill(),
            _ => b.kill(),
        }
        eprintln!("killed {victim} at {:?}", started.elapsed());
        common::wait_for(
            "the surviving relay to hold all 256 shards",
            Duration::from_secs(30),
            || async {
                let owners = db.shard_owners().await?;
                Ok((owners.get(survivor).copied() == Some(256)).then_some(()))
            },
        )
        .await?;
        eprintln!("{survivor} holds every shard at {:?}", started.elapsed());
        if c.is_none() {
            c = Some(spawn("relay-c")?);
        }
    }
    let c = c.expect("relay-c was started");
    // Let the last relay publish on its own for a while, then stop writing.
    let remaining = WRITE_FOR.saturating_sub(started.elapsed());
    tokio::time::sleep(remaining.max(Duration::from_secs(2))).await;
    stop.store(true, Ordering::Relaxed);
    let last = writer.await??;
    let total: u64 = last.iter().sum();
    eprintln!("{total} messages committed over {KEYS} keys");

    // Read until every key's last number arrived (the earlier ones are
    // checked below).
    let mut reader = TopicReader::new(&broker.addr(), &topic).await?;
    let mut newest: HashMap<String, u64> = HashMap::new();
    let mut counted = 0;
    let complete = reader
        .read_until(Duration::from_secs(60), |records| {
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
            (0..KEYS).all(|k| newest.get(&format!("key-{k}")).copied().unwrap_or(0) >= last[k])
        })
        .await?;
    assert!(
        complete,
        "not every key's last message arrived within 60 s; status counts {:?}; logs {}, {} and {}",
        db.status_counts().await?,
        a.log.display(),
        b.log.display(),
        c.log.display()
    );

    let mut by_key: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in &reader.records {
        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
        by_key.entry(key).or_default().push(r);
    }
    let mut resent = 0;
    let mut last_not_newest = 0;
    for (k, &last_seq) in last.iter().enumerate() {
        let key = format!("key-{k}");
        let mut records = by_key.remove(&key).unwrap_or_default();
        records.sort_by_key(|r| r.offset);
        resent += check_key(&key, &records, last_seq)?;
        let tail = records.last().and_then(|r| r.payload.as_deref());
        if last_seq > 0 && tail != Some(last_seq.to_string().as_bytes()) {
            last_not_newest += 1;
        }
    }
    assert!(
        by_key.is_empty(),
        "records with unexpected keys: {:?}",
        by_key.keys()
    );
    eprintln!(
        "key_order: {} records, {resent} re-sends; {last_not_newest} keys end on a re-sent older message",
        reader.records.len()
    );
    db.wait_all_published(total as i64, Duration::from_secs(30))
        .await?;
    Ok(())
}

/// The order rule itself, on made-up streams.
#[test]
fn the_order_rule_accepts_replays_and_rejects_overtaking_and_gaps() {
    let ids: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let stream = |seqs: &[u64]| -> Vec<Record> {
        seqs.iter()
            .enumerate()
            .map(|(offset, &seq)| Record {
                topic: "t".into(),
                partition: 0,
                offset: offset as i64,
                key: Some(b"k".to_vec()),
                payload: Some(seq.to_string().into_bytes()),
                headers: vec![(
                    outbox::headers::ID.into(),
                    Some(ids[seq as usize].to_string().into_bytes()),
                )],
            })
            .collect()
    };
    let check = |seqs: &[u64], last| {
        let records = stream(seqs);
        let refs: Vec<&Record> = records.iter().collect();
        check_key("k", &refs, last)
    };
    assert_eq!(check(&[1, 2, 3, 4], 4).unwrap(), 0);
    assert_eq!(check(&[1, 2, 3, 4, 3, 4, 5, 6], 6).unwrap(), 2);
    assert!(check(&[1, 3, 2], 3).is_err(), "overtaking");
    assert!(check(&[1, 2, 4], 4).is_err(), "gap");
    assert!(check(&[1, 2, 3], 4).is_err(), "missing tail");
    let mut split = stream(&[1, 2]);
    split[1].partition = 1;
    let refs: Vec<&Record> = split.iter().collect();
    assert!(check_key("k", &refs, 2).is_err(), "two partitions");
}
