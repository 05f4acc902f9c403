//! Per-key order with two relays sharing the work and one of them
//! SIGKILLed mid-run (twice: the dead one is replaced and the other killed).
//! What "in order" means under at-least-once: see `common/order.rs`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use common::{order, Broker, Record, Relay, Storage, TestDb, FAST_RECOVERY};
use rand::Rng;
use uuid::Uuid;

const KEYS: usize = 50;
const WRITE_FOR: Duration = Duration::from_secs(15);

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
    let writer = tokio::spawn(order::write_numbered(
        db.pool.clone(),
        topic.clone(),
        KEYS,
        stop.clone(),
    ));

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
    let (records, complete) =
        order::read_numbered(&broker.addr(), &topic, &last, Duration::from_secs(60)).await?;
    assert!(
        complete,
        "not every key's last message arrived within 60 s; status counts {:?}; logs {}, {} and {}",
        db.status_counts().await?,
        a.log.display(),
        b.log.display(),
        c.log.display()
    );
    let report = order::check_numbered(&records, &last);
    assert!(
        report.violations.is_empty(),
        "per-key order broken:\n{}",
        report.violations.join("\n")
    );
    eprintln!(
        "key_order: {} records, {} re-sends; {} keys end on a re-sent older message",
        records.len(),
        report.resent,
        report.last_not_newest
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
        order::check_key("k", &refs, last)
    };
    assert_eq!(check(&[1, 2, 3, 4], 4).unwrap(), 0);
    assert_eq!(check(&[1, 2, 3, 4, 3, 4, 5, 6], 6).unwrap(), 2);
    assert!(check(&[1, 3, 2], 3).is_err(), "overtaking");
    assert!(check(&[1, 2, 4], 4).is_err(), "gap");
    assert!(check(&[1, 2, 3], 4).is_err(), "missing tail");
    let mut split = stream(&[1, 2]);
    split[1].partition = 1;
    let refs: Vec<&Record> = split.iter().collect();
    assert!(order::check_key("k", &refs, 2).is_err(), "two partitions");
}
