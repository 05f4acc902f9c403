//! A message the producer or broker will never accept (a poison message)
//! is retried with backoff and dead-lettered after `--max-attempts`; other
//! keys keep flowing meanwhile; the later messages of its own key wait for
//! it and flow once it is dead.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::{Broker, Relay, Storage, TestDb, TopicReader};
use outbox::{Message, Outbox};
use uuid::Uuid;

/// Keys other than the poisoned one get a message every 10 ms until
/// `stop`; returns their ids.
fn spawn_other_keys(
    pool: sqlx::PgPool,
    topic: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Vec<Uuid>>> {
    tokio::spawn(async move {
        let outbox = Outbox::new();
        let mut ids = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let n = ids.len();
            let m =
                Message::new(topic.clone(), format!("other {n}")).key(format!("other-{}", n % 10));
            ids.push(outbox.enqueue(&pool, m).await?.0);
            // The load profile: a steady trickle.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(ids)
    })
}

/// What one consistent look at the table showed.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Sample {
    poison_status: String,
    poison_attempts: i32,
    /// Later messages of the poisoned key no longer pending.
    later_released: i64,
    /// Messages of other keys from the poison's transaction no longer
    /// pending.
    neighbours_released: i64,
}

/// Watches the table every 10 ms until the poison is dead and its key's
/// later messages are out, checking that they never left before the poison
/// was dead, and that other keys flowed while the poison was still being
/// retried.
async fn watch(
    db: &TestDb,
    poison: Uuid,
    later: &[Uuid],
    neighbours: &[Uuid],
    timeout: Duration,
) -> Result<Sample> {
    let deadline = Instant::now() + timeout;
    let mut others_flowed_meanwhile = false;
    let mut retried = false;
    let mut overtaken: Option<Sample> = None;
    loop {
        // One statement, one snapshot. Rows no longer pending were published
        // (or deleted once published, if the relay keeps none).
        let s: Sample = sqlx::query_as(
            "SELECT \
                 (SELECT status FROM outbox.message WHERE id = $1) AS poison_status, \
                 (SELECT attempts FROM outbox.message WHERE id = $1) AS poison_attempts, \
                 cardinality($2::uuid[]) - (SELECT count(*) FROM outbox.message \
                     WHERE id = ANY($2) AND status = 'pending') AS later_released, \
                 cardinality($3::uuid[]) - (SELECT count(*) FROM outbox.message \
                     WHERE id = ANY($3) AND status = 'pending') AS neighbours_released",
        )
        .bind(poison)
        .bind(later)
        .bind(neighbours)
        .fetch_one(&db.pool)
        .await?;
        if s.poison_status == "pending" {
            // Keep watching after a violation, to report how it ends too.
            if s.later_released > 0 && overtaken.is_none() {
                eprintln!(
                    "violation: the poisoned key's later messages left before it was dead: {s:?}"
                );
                overtaken = Some(s.clone());
            }
            retried |= s.poison_attempts > 0;
            others_flowed_meanwhile |= s.neighbours_released > 0;
        }
        let done = s.poison_status != "pending" && s.later_released == later.len() as i64;
        if done || Instant::now() >= deadline {
            let mut problems = Vec::new();
            if let Some(o) = overtaken {
                problems.push(format!(
                    "a later message of the poisoned key left while the poison was still pending: {o:?}"
                ));
            }
            if s.poison_status != "dead" {
                problems.push(format!("the poison is {:?}, not dead", s.poison_status));
            }
            if s.later_released != later.len() as i64 {
                problems.push("the poisoned key's later messages did not all leave".to_owned());
            }
            if !others_flowed_meanwhile {
                problems
                    .push("other keys did not flow while the poison was being retried".to_owned());
            }
            if !retried {
                eprintln!("note: the poison was never seen pending after a failed attempt");
            }
            if !problems.is_empty() {
                bail!(
                    "after {:?}: {}; final state {s:?}",
                    timeout - deadline.saturating_duration_since(Instant::now()),
                    problems.join("; ")
                );
            }
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one poison scenario: `k1` on key K, then in one transaction the
/// poison on K, `k3` on K, and five messages of other keys, then `k4` on K;
/// other keys trickle in all along.
async fn poison_scenario(
    name: &str,
    topic: &str,
    poison: Message,
    relay_args: &[&str],
    timeout: Duration,
) -> Result<()> {
    let db = TestDb::new().await?;
    let broker = Broker::start_new(name, Storage::Memory).await?;
    broker.create_topic(topic, 6).await?;
    let relay = Relay::spawn(
        &format!("{name}-relay"),
        &db.url,
        &broker.addr(),
        relay_args,
    )?;
    let outbox = Outbox::new();

    let stop = Arc::new(AtomicBool::new(false));
    let others = spawn_other_keys(db.pool.clone(), topic.to_owned(), stop.clone());

    let k = "poisoned-key";
    let k1 = outbox
        .enqueue(&db.pool, Message::new(topic, "k1").key(k))
        .await?
        .0;
    let mut tx = db.pool.begin().await?;
    let poison_id = outbox.enqueue(&mut *tx, poison.key(k)).await?.0;
    let k3 = outbox
        .enqueue(&mut *tx, Message::new(topic, "k3").key(k))
        .await?
        .0;
    let mut neighbours = Vec::new();
    for i in 0..5 {
        let m = Message::new(topic, format!("neighbour {i}")).key(format!("neighbour-{i}"));
        neighbours.push(outbox.enqueue(&mut *tx, m).await?.0);
    }
    tx.commit().await?;
    let k4 = outbox
        .enqueue(&db.pool, Message::new(topic, "k4").key(k))
        .await?
        .0;

    let seen = watch(&db, poison_id, &[k3, k4], &neighbours, timeout).await;
    stop.store(true, Ordering::Relaxed);
    let other_ids = others.await??;
    let seen = match seen {
        Ok(s) => s,
        Err(e) => bail!("{e:#}; relay log {}", relay.log.display()),
    };
    eprintln!("{name}: final state {seen:?}");

    let (status, attempts, last_error): (String, i32, Option<String>) =
        sqlx::query_as("SELECT status, attempts, last_error FROM outbox.message WHERE id = $1")
            .bind(poison_id)
            .fetch_one(&db.pool)
            .await?;
    eprintln!("{name}: poison {status} after {attempts} attempts: {last_error:?}");
    assert_eq!(status, "dead");
    let last_error = last_error.unwrap_or_default();
    assert!(
        !last_error.trim().is_empty(),
        "the dead message has no last_error"
    );

    // Kafka: K is k1, k3, k4 in that order and no poison; every other
    // message arrived.
    let mut wanted: HashSet<Uuid> = other_ids.into_iter().collect();
    wanted.extend(&neighbours);
    wanted.extend([k1, k3, k4]);
    let mut reader = TopicReader::new(&broker.addr(), topic).await?;
    let all = reader.read_ids(&wanted, Duration::from_secs(30)).await?;
    assert!(
        all,
        "not every message of the other keys arrived; status counts {:?}; relay log {}",
        db.status_counts().await?,
        relay.log.display()
    );
    let mut poisoned: Vec<&common::Record> = reader
        .records
        .iter()
        .filter(|r| r.key.as_deref() == Some(k.as_bytes()))
        .collect();
    poisoned.sort_by_key(|r| r.offset);
    let payloads: Vec<String> = poisoned
        .iter()
        .map(|r| String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let mut firsts = payloads.clone();
    firsts.dedup();
    assert_eq!(firsts, ["k1", "k3", "k4"], "the poisoned key's stream");
    assert!(
        reader
            .records
            .iter()
            .all(|r| r.outbox_id().ok() != Some(poison_id)),
        "the poison message reached the topic"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_message_is_dead_lettered_while_other_keys_flow() -> Result<()> {
    let topic = common::unique_topic("poison");
    // The library allows 1 MiB; this relay's producer only 10,000 bytes, so
    // librdkafka refuses the message every time (MSG_SIZE_TOO_LARGE).
    let poison = Message::new(&topic, vec![b'p'; 50_000]);
    let args = [
        "--kafka",
        "message.max.bytes=10000",
        "--max-attempts",
        "3",
        "--backoff-base",
        "100ms",
        "--backoff-max",
        "300ms",
        "--poll-interval",
        "100ms",
    ];
    poison_scenario(
        "poison-size",
        &topic,
        poison,
        &args,
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn exact_attempt_count_for_an_oversized_message() -> Result<()> {
    // Alone, without other traffic: the poison fails exactly --max-attempts
    // times, then is dead.
    let db = TestDb::new().await?;
    let broker = Broker::start_new("poison-attempts", Storage::Memory).await?;
    let topic = common::unique_topic("poison-attempts");
    broker.create_topic(&topic, 6).await?;
    let relay = Relay::spawn(
        "poison-attempts-relay",
        &db.url,
        &broker.addr(),
        &[
            "--kafka",
            "message.max.bytes=10000",
            "--max-attempts",
            "3",
            "--backoff-base",
            "100ms",
            "--backoff-max",
            "300ms",
            "--poll-interval",
            "100ms",
        ],
    )?;
    let id = Outbox::new()
        .enqueue(&db.pool, Message::new(&topic, vec![0u8; 50_000]).key("k"))
        .await?
        .0;
    let row: (String, i32, Option<String>) =
        common::wait_for("the poison to be dead", Duration::from_secs(30), || async {
            let row: (String, i32, Option<String>) = sqlx::query_as(
                "SELECT status, attempts, last_error FROM outbox.message WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&db.pool)
            .await?;
            Ok((row.0 != "pending").then_some(row))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; relay log {}", relay.log.display()))?;
    assert_eq!(row.0, "dead");
    assert_eq!(row.1, 3, "attempts of the dead message");
    assert!(
        !row.2.unwrap_or_default().trim().is_empty(),
        "no last_error"
    );
    Ok(())
}

#[tokio::test]
async fn message_to_a_missing_topic_is_dead_lettered() -> Result<()> {
    // tansu creates no topic on produce: it answers metadata for an unknown
    // topic with UNKNOWN_TOPIC_OR_PARTITION. librdkafka reports that only
    // after topic.metadata.propagation.max.ms (30 s by default); before
    // then the message times out. Relay defaults otherwise.
    let topic = common::unique_topic("poison-topic");
    let missing = common::unique_topic("no-such-topic");
    let poison = Message::new(&missing, "lost");
    let args = [
        "--max-attempts",
        "3",
        "--backoff-base",
        "100ms",
        "--backoff-max",
        "300ms",
        "--poll-interval",
        "100ms",
    ];
    poison_scenario(
        "poison-topic",
        &topic,
        poison,
        &args,
        Duration::from_secs(90),
    )
    .await?;
    Ok(())
}
