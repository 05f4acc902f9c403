//! Everything enqueued reaches Kafka exactly as it was written: key,
//! payload (empty, binary, tombstone), user headers, and the relay's
//! `outbox-id`, `outbox-type` and `outbox-created-at` headers; every row
//! ends up published; and SIGTERM stops the relay cleanly.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Utc};
use common::{Broker, Relay, Storage, TestDb, TopicReader};
use outbox::{Message, MessageId, Outbox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const MESSAGES: usize = 2_000;

/// What a message was enqueued with.
#[derive(Debug, Clone)]
struct Expected {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    message_type: Option<String>,
}

fn random_message(rng: &mut StdRng, topic: &str) -> (Message, Expected) {
    let key: Option<Vec<u8>> = match rng.random_range(0..10) {
        0 => None,
        1 => Some(vec![0, 255, rng.random_range(0..8)]), // binary keys
        _ => Some(format!("customer-{}", rng.random_range(0..40)).into_bytes()),
    };
    let payload: Option<Vec<u8>> = match rng.random_range(0..20) {
        0 => Some(Vec::new()),
        1 if key.is_some() => None, // tombstone
        2 => Some((0..=255u8).collect()),
        3 | 4 => Some(
            (0..rng.random_range(1..4000))
                .map(|_| rng.random())
                .collect(),
        ),
        _ => Some(format!(r#"{{"n":{},"text":"héllo"}}"#, rng.random::<u32>()).into_bytes()),
    };
    let mut headers = Vec::new();
    for _ in 0..rng.random_range(0..4) {
        let name = ["traceparent", "tenant", "bin", "ünï-header", "tenant"][rng.random_range(0..5)];
        let len = rng.random_range(0..40);
        let value: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        headers.push((name.to_owned(), value));
    }
    let message_type = match rng.random_range(0..3) {
        0 => None,
        1 => Some("OrderPlaced".to_owned()),
        _ => Some(format!("Type.{}", rng.random_range(0..5))),
    };

    let mut m = match (&key, &payload) {
        (Some(k), None) => Message::tombstone(topic, k.clone()),
        (_, p) => Message::new(topic, p.clone().unwrap_or_default()),
    };
    if let Some(k) = &key {
        m = m.key(k.clone());
    }
    for (n, v) in &headers {
        m = m.header(n.clone(), v.clone());
    }
    if let Some(t) = &message_type {
        m = m.message_type(t.clone());
    }
    let expected = Expected {
        key,
        payload,
        headers: headers.into_iter().map(|(n, v)| (n, Some(v))).collect(),
        message_type,
    };
    (m, expected)
}

/// Enqueues `count` random messages in transactions of 1 to 40 messages.
async fn enqueue_random(
    db: &TestDb,
    rng: &mut StdRng,
    topic: &str,
    count: usize,
    expected: &mut HashMap<Uuid, (usize, Expected)>,
) -> Result<()> {
    let outbox = Outbox::new();
    let mut written = 0;
    while written < count {
        let n = rng.random_range(1..=40).min(count - written);
        let batch: Vec<(Message, Expected)> = (0..n).map(|_| random_message(rng, topic)).collect();
        let mut tx = db.pool.begin().await?;
        let ids: Vec<MessageId> = if rng.random_bool(0.5) {
            outbox
                .enqueue_all(&mut *tx, batch.iter().map(|(m, _)| m.clone()))
                .await?
        } else {
            let mut ids = Vec::new();
            for (m, _) in &batch {
                ids.push(outbox.enqueue(&mut *tx, m.clone()).await?);
            }
            ids
        };
        tx.commit().await?;
        for (id, (_, e)) in ids.into_iter().zip(batch) {
            let order = expected.len();
            expected.insert(id.0, (order, e));
        }
        written += n;
    }
    Ok(())
}

#[tokio::test]
async fn every_message_arrives_byte_for_byte() -> Result<()> {
    let seed: u64 = rand::rng().random();
    eprintln!("end_to_end seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let db = TestDb::new().await?;
    let broker = Broker::start_new("end_to_end", Storage::Memory).await?;
    let topic = common::unique_topic("e2e");
    broker.create_topic(&topic, 6).await?;

    // Half is waiting when the relay starts, half arrives while it runs.
    let mut expected: HashMap<Uuid, (usize, Expected)> = HashMap::new();
    enqueue_random(&db, &mut rng, &topic, MESSAGES / 2, &mut expected).await?;
    let mut relay = Relay::spawn(
        "end_to_end-relay",
        &db.url,
        &broker.addr(),
        &["--poll-interval", "200ms", "--batch-size", "300"],
    )?;
    enqueue_random(
        &db,
        &mut rng,
        &topic,
        MESSAGES - MESSAGES / 2,
        &mut expected,
    )
    .await?;
    ensure!(expected.len() == MESSAGES);

    let ids: HashSet<Uuid> = expected.keys().copied().collect();
    let mut reader = TopicReader::new(&broker.addr(), &topic).await?;
    let all = reader.read_ids(&ids, Duration::from_secs(60)).await?;
    let records = &reader.records;
    let seen: HashSet<Uuid> = records.iter().filter_map(|r| r.outbox_id().ok()).collect();
    assert!(
        all,
        "{} of {MESSAGES} messages arrived within 60 s; relay log: {}",
        seen.intersection(&ids).count(),
        relay.log.display()
    );

    let created: HashMap<Uuid, DateTime<Utc>> =
        sqlx::query_as::<_, (Uuid, DateTime<Utc>)>("SELECT id, created_at FROM outbox.message")
            .fetch_all(&db.pool)
            .await?
            .into_iter()
            .collect();

    // Every record is one of ours, exactly as enqueued.
    let mut count: HashMap<Uuid, usize> = HashMap::new();
    for r in records {
        let id = r.outbox_id()?;
        *count.entry(id).or_default() += 1;
        let (_, e) = expected.get(&id).with_context(|| {
            format!(
                "record {}/{} has an unknown outbox-id {id}",
                r.partition, r.offset
            )
        })?;
        assert_eq!(r.topic, topic);
        assert_eq!(r.key, e.key, "key of {id}");
        assert_eq!(r.payload, e.payload, "payload of {id}");
        assert_eq!(r.user_headers(), e.headers, "user headers of {id}");
        let relay_headers: Vec<&str> = r
            .headers
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n.starts_with("outbox-"))
            .collect();
        let mut wanted = vec![outbox::headers::ID, outbox::headers::CREATED_AT];
        if e.message_type.is_some() {
            wanted.push(outbox::headers::TYPE);
        }
        let mut got = relay_headers.clone();
        got.sort_unstable();
        wanted.sort_unstable();
        assert_eq!(got, wanted, "relay headers of {id}");
        assert_eq!(
            r.header(outbox::headers::TYPE),
            e.message_type.as_deref().map(str::as_bytes),
            "outbox-type of {id}"
        );
        let stamp = std::str::from_utf8(r.header(outbox::headers::CREATED_AT).unwrap_or_default())?;
        let stamp = DateTime::parse_from_rfc3339(stamp)
            .with_context(|| format!("outbox-created-at {stamp:?} of {id} is not RFC 3339"))?;
        assert_eq!(
            stamp.with_timezone(&Utc),
            created[&id],
            "outbox-created-at of {id}"
        );
    }
    let duplicates: Vec<_> = count.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        duplicates.is_empty(),
        "{} ids were published more than once in a run without failures, e.g. {:?}",
        duplicates.len(),
        duplicates.iter().take(5).collect::<Vec<_>>()
    );

    // Per key: one partition, and enqueue order.
    let mut by_key: BTreeMap<Vec<u8>, Vec<(i32, i64, usize)>> = BTreeMap::new();
    for r in records {
        if let Some(k) = &r.key {
            let order = expected[&r.outbox_id()?].0;
            by_key
                .entry(k.clone())
                .or_default()
                .push((r.partition, r.offset, order));
        }
    }
    for (key, mut recs) in by_key {
        let partitions: HashSet<i32> = recs.iter().map(|r| r.0).collect();
        assert_eq!(
            partitions.len(),
            1,
            "key {key:?} spread over partitions {partitions:?}"
        );
        recs.sort_by_key(|r| r.1);
        let orders: Vec<usize> = recs.iter().map(|r| r.2).collect();
        let mut sorted = orders.clone();
        sorted.sort_unstable();
        assert_eq!(
            orders, sorted,
            "key {key:?} was published out of enqueue order"
        );
    }

    // Every row is marked published.
    db.wait_all_published(MESSAGES as i64, Duration::from_secs(20))
        .await?;
    let unmarked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.message WHERE published_at IS NULL OR last_error IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(
        unmarked, 0,
        "published rows without published_at or with an error"
    );

    // SIGTERM: exit 0, shards given back, relay deregistered.
    let status = relay.terminate(Duration::from_secs(20)).await?;
    assert!(
        status.success(),
        "the relay exited with {status} after SIGTERM; see {}",
        relay.log.display()
    );
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox.shard_lease WHERE owner IS NOT NULL")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(held, 0, "shards still held after a clean stop");
    let relays: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.relay")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(relays, 0, "the stopped relay is still registered");
    Ok(())
}

/// With `--retention 0s` (the default) each message's row is deleted once
/// the broker acknowledged it: every message still arrives, once per id and
/// in order per key, and the table ends empty.
#[tokio::test]
async fn deleting_on_acknowledgement_loses_nothing() -> Result<()> {
    const N: usize = 3_000;
    let db = TestDb::new().await?;
    let broker = Broker::start_new("end_to_end-delete", Storage::Memory).await?;
    let topic = common::unique_topic("e2e-delete");
    broker.create_topic(&topic, 6).await?;
    let ids = db.enqueue_numbered(&topic, N, 100).await?;
    // Small batches, several in flight, so the pipeline is exercised.
    let relay = Relay::spawn(
        "end_to_end-delete-relay",
        &db.url,
        &broker.addr(),
        &[
            "--retention",
            "0s",
            "--batch-size",
            "100",
            "--in-flight",
            "4",
        ],
    )?;
    let wanted: HashSet<Uuid> = ids.iter().copied().collect();
    let mut reader = TopicReader::new(&broker.addr(), &topic).await?;
    let all = reader.read_ids(&wanted, Duration::from_secs(60)).await?;
    assert!(
        all,
        "not every message arrived; relay log: {}",
        relay.log.display()
    );

    // In enqueue order per key (payload = enqueue number).
    let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in &reader.records {
        let n: usize = String::from_utf8(r.payload.clone().unwrap_or_default())?.parse()?;
        let key = r.key.clone().unwrap_or_default();
        if let Some(prev) = last.insert(key.clone(), n) {
            assert!(prev < n, "key {key:?}: {n} arrived after {prev}");
        }
    }
    common::wait_for("the table to be empty", Duration::from_secs(20), || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.message")
            .fetch_one(&db.pool)
            .await?;
        Ok((rows == 0).then_some(()))
    })
    .await?;
    Ok(())
}
