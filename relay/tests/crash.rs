//! At least once across relay crashes: while a writer keeps committing
//! messages, the relay is SIGKILLed at random points and restarted; in the
//! end every committed message is in the topic (duplicates are allowed and
//! counted) and no rolled-back message is.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::{Broker, Relay, Storage, TestDb, TopicReader, FAST_RECOVERY};
use outbox::{Message, Outbox};
use rand::Rng;
use uuid::Uuid;

const WRITE_FOR: Duration = Duration::from_secs(20);
const MIN_KILLS: usize = 3;

#[derive(Default)]
struct Written {
    committed: Vec<Uuid>,
    rolled_back: Vec<Uuid>,
}

/// Commits 1 to 5 messages per transaction (every 7th transaction rolls
/// back instead) until `stop` is set.
async fn write(pool: sqlx::PgPool, topic: String, stop: Arc<AtomicBool>) -> Result<Written> {
    let outbox = Outbox::new();
    let mut written = Written::default();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let batch: Vec<Message> = (0..rand::rng().random_range(1..=5))
            .map(|i| {
                let key = format!("key-{}", rand::rng().random_range(0..20));
                Message::new(topic.clone(), format!("tx {n} message {i}")).key(key)
            })
            .collect();
        let mut tx = pool.begin().await?;
        let ids = outbox.enqueue_all(&mut *tx, batch).await?;
        let ids = ids.into_iter().map(|id| id.0);
        if n.is_multiple_of(7) {
            tx.rollback().await?;
            written.rolled_back.extend(ids);
        } else {
            tx.commit().await?;
            written.committed.extend(ids);
        }
        // The load profile: about a hundred transactions a second.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(written)
}

#[tokio::test]
async fn every_committed_message_survives_relay_crashes() -> Result<()> {
    let db = TestDb::new().await?;
    let broker = Broker::start_new("crash", Storage::Memory).await?;
    let topic = common::unique_topic("crash");
    broker.create_topic(&topic, 6).await?;

    let mut args = FAST_RECOVERY.to_vec();
    args.extend(["--batch-size", "100"]);
    let spawn = |n: usize| {
        let name = format!("crash-{n}");
        let mut a = args.clone();
        a.extend(["--name", name.as_str()]);
        Relay::spawn(&format!("crash-relay-{n}"), &db.url, &broker.addr(), &a)
    };

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write(db.pool.clone(), topic.clone(), stop.clone()));
    let started = Instant::now();

    let mut generation = 0;
    let mut relay = spawn(generation)?;
    let mut kills = 0;
    while kills < MIN_KILLS || started.elapsed() < WRITE_FOR {
        // Kill only a relay that is at work: once it holds shards, at a
        // random point within the next two seconds.
        let name = format!("crash-{generation}");
        common::wait_for(
            "the relay to hold shards",
            Duration::from_secs(30),
            || async {
                let owners = db.shard_owners().await?;
                Ok(owners.contains_key(&name).then_some(()))
            },
        )
        .await?;
        let delay = Duration::from_millis(rand::rng().random_range(0..2_000));
        tokio::time::sleep(delay).await;
        assert!(
            relay.is_running(),
            "relay {generation} died by itself; see {}",
            relay.log.display()
        );
        relay.kill();
        kills += 1;
        eprintln!("killed relay {generation} at {:?}", started.elapsed());
        generation += 1;
        relay = spawn(generation)?;
        if kills >= 8 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await??;
    assert!(kills >= MIN_KILLS);
    eprintln!(
        "{} messages committed, {} rolled back, relay killed {kills} times in {:?}",
        written.committed.len(),
        written.rolled_back.len(),
        started.elapsed()
    );

    let committed: HashSet<Uuid> = written.committed.iter().copied().collect();
    let mut reader = TopicReader::new(&broker.addr(), &topic).await?;
    let all = reader.read_ids(&committed, Duration::from_secs(60)).await?;
    let seen: HashSet<Uuid> = reader
        .records
        .iter()
        .filter_map(|r| r.outbox_id().ok())
        .collect();
    let missing: Vec<&Uuid> = committed.difference(&seen).collect();
    assert!(
        all && missing.is_empty(),
        "{} of {} committed messages never reached the topic, e.g. {:?}; status counts {:?}; last relay log {}",
        missing.len(),
        committed.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        db.status_counts().await?,
        relay.log.display()
    );
    let leaked: Vec<&Uuid> = written
        .rolled_back
        .iter()
        .filter(|id| seen.contains(id))
        .collect();
    assert!(
        leaked.is_empty(),
        "rolled back messages were published: {leaked:?}"
    );
    common::report_duplicates("crash", &reader.records)?;

    db.wait_all_published(committed.len() as i64, Duration::from_secs(30))
        .await?;
    assert!(
        relay.is_running(),
        "the last relay died; see {}",
        relay.log.display()
    );
    Ok(())
}
