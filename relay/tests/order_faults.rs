//! Per-key order and liveness under the faults that broke them: a broker
//! outage in the middle of a stream, a relay taking over shards whose
//! messages lie below its fetch cursor, a relay paused with records in
//! flight, and a relay that cannot publish at all. What "in order" means
//! under at-least-once: see `common/order.rs`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use common::{order, Broker, Relay, Storage, TestDb, FAST_RECOVERY};
use outbox::{Message, Outbox};
use uuid::Uuid;

async fn published(db: &TestDb) -> Result<i64> {
    Ok(db
        .status_counts()
        .await?
        .get("published")
        .copied()
        .unwrap_or(0))
}

/// Reads every key's messages back and fails on any broken order.
async fn assert_in_order(
    broker: &Broker,
    topic: &str,
    last: &[u64],
    logs: &[&Relay],
) -> Result<()> {
    let (records, complete) =
        order::read_numbered(&broker.addr(), topic, last, Duration::from_secs(60)).await?;
    let logs: Vec<String> = logs.iter().map(|r| r.log.display().to_string()).collect();
    if !complete {
        bail!("not every key's last message arrived within 60 s; logs {logs:?}");
    }
    let report = order::check_numbered(&records, last);
    if !report.violations.is_empty() {
        bail!(
            "per-key order broken for {} keys (logs {logs:?}):\n{}",
            report.violations.len(),
            report.violations.join("\n")
        );
    }
    eprintln!(
        "{} records, {} re-sends, {} keys end on a re-sent older message",
        records.len(),
        report.resent,
        report.last_not_newest
    );
    Ok(())
}

/// Enqueues `messages` numbered per key over `keys` keys, in transactions
/// of 1,000; returns the last number per key.
async fn enqueue_backlog(db: &TestDb, topic: &str, keys: usize, messages: u64) -> Result<Vec<u64>> {
    let outbox = Outbox::new();
    let mut last = vec![0u64; keys];
    let mut n = 0_u64;
    while n < messages {
        let mut tx = db.pool.begin().await?;
        let batch: Vec<Message> = (n..messages.min(n + 1000))
            .map(|i| {
                let k = (i * 7 % keys as u64) as usize;
                last[k] += 1;
                Message::new(topic, last[k].to_string()).key(format!("key-{k}"))
            })
            .collect();
        n += batch.len() as u64;
        outbox.enqueue_all(&mut *tx, batch).await?;
        tx.commit().await?;
    }
    Ok(last)
}

/// A relay draining a backlog loses the broker: the batches in flight fail
/// entirely, so nothing is recorded against their messages, and the relay
/// pauses. Once the broker is back it must publish those messages before
/// the later ones of their keys. Before the fix, the fetch cursor stayed
/// above the failed batches, so the later messages went first and the
/// failed ones followed at the next cursor reset.
#[tokio::test]
async fn order_holds_across_a_broker_outage_mid_drain() -> Result<()> {
    const KEYS: usize = 30;
    const MESSAGES: u64 = 16_000;
    let db = TestDb::new().await?;
    let topic = common::unique_topic("outage-order");
    // librdkafka's mock cluster (real Kafka protocol on a local port): it
    // takes a broker down and up again at once and keeps its data, where a
    // tansu restart takes seconds (and with it the timing this test needs)
    // and loses an idempotent producer's state.
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic(&topic, 6, 1)?;
    let brokers = cluster.bootstrap_servers();
    let last = enqueue_backlog(&db, &topic, KEYS, MESSAGES).await?;
    let mut args = FAST_RECOVERY.to_vec();
    // Small batches: the drain lasts long enough for the outage to land in
    // its middle.
    args.extend(["--batch-size", "4", "--in-flight", "2"]);
    let relay = Relay::spawn("order_faults-outage-relay", &db.url, &brokers, &args)?;
    common::wait_for(
        "300 messages published",
        Duration::from_secs(30),
        || async { Ok((published(&db).await? >= 100).then_some(())) },
    )
    .await?;
    cluster.broker_down(1)?;
    // Past the message timeout (2 s) the batches in flight fail and the
    // relay pauses (1 s); the broker is back while it pauses.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.broker_up(1)?;
    let left: i64 = db
        .status_counts()
        .await?
        .get("pending")
        .copied()
        .unwrap_or(0);
    assert!(
        left > 1000,
        "the relay drained the backlog during the outage, so this run did not test it"
    );
    db.wait_all_published(MESSAGES as i64, Duration::from_secs(120))
        .await?;
    let (records, complete) =
        order::read_numbered(&brokers, &topic, &last, Duration::from_secs(60)).await?;
    assert!(
        complete,
        "not every message arrived; see {}",
        relay.log.display()
    );
    let report = order::check_numbered(&records, &last);
    assert!(
        report.violations.is_empty(),
        "per-key order broken for {} keys (log {}):\n{}",
        report.violations.len(),
        relay.log.display(),
        report.violations.join("\n")
    );
    Ok(())
}

/// A relay draining a backlog takes over shards from a relay whose lease
/// ran out; their messages lie below its fetch cursor. It must publish
/// them before the later messages of their keys. Before the fix the cursor
/// stayed where it was, so it published the newer ones first.
#[tokio::test]
async fn order_holds_when_a_relay_takes_over_shards_below_its_cursor() -> Result<()> {
    const KEYS: usize = 40;
    const MESSAGES: u64 = 16_000;
    let db = TestDb::new().await?;
    let broker = Broker::start_new("order_faults-takeover", Storage::Memory).await?;
    let topic = common::unique_topic("takeover-order");
    broker.create_topic(&topic, 6).await?;

    // A relay that holds half the shards and publishes nothing: the one
    // that will be found dead.
    let ghost = Uuid::now_v7();
    sqlx::query("INSERT INTO outbox.relay (id, name) VALUES ($1, 'ghost')")
        .bind(ghost)
        .execute(&db.pool)
        .await?;
    sqlx::query(
        "UPDATE outbox.shard_lease SET owner = $1, lease_until = now() + interval '1 hour' \
         WHERE shard < 128",
    )
    .bind(ghost)
    .execute(&db.pool)
    .await?;

    let last = enqueue_backlog(&db, &topic, KEYS, MESSAGES).await?;

    // One message per batch, one batch at a time: the drain of its own
    // half lasts seconds, so the takeover lands in the middle of it, and
    // every batch is full, so the cursor follows the drain.
    let mut args = vec![
        "--lease",
        "4s",
        "--kafka",
        "message.timeout.ms=1000",
        "--batch-size",
        "1",
        "--in-flight",
        "1",
        "--name",
        "survivor",
    ];
    args.extend(["--poll-interval", "200ms"]);
    let relay = Relay::spawn(
        "order_faults-takeover-relay",
        &db.url,
        &broker.addr(),
        &args,
    )?;
    common::wait_for(
        "the relay to publish part of its half",
        Duration::from_secs(30),
        || async { Ok((published(&db).await? >= 100).then_some(())) },
    )
    .await?;

    // The ghost's lease runs out; the survivor takes its shards at its
    // next renewal, mid-drain.
    sqlx::query(
        "UPDATE outbox.shard_lease SET lease_until = now() - interval '1 second' WHERE owner = $1",
    )
    .bind(ghost)
    .execute(&db.pool)
    .await?;
    sqlx::query("DELETE FROM outbox.relay WHERE id = $1")
        .bind(ghost)
        .execute(&db.pool)
        .await?;
    common::wait_for(
        "the survivor to hold every shard",
        Duration::from_secs(20),
        || async {
            let owners = db.shard_owners().await?;
            Ok((owners.get("survivor").copied() == Some(256)).then_some(()))
        },
    )
    .await?;
    let own_half_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.message WHERE status = 'pending' AND shard >= 128",
    )
    .fetch_one(&db.pool)
    .await?;
    assert!(
        own_half_left > 0,
        "the survivor drained its own half before the takeover, so this run did not test it"
    );
    db.wait_all_published(MESSAGES as i64, Duration::from_secs(120))
        .await?;
    assert_in_order(&broker, &topic, &last, &[&relay]).await
}

/// A relay stopped (SIGSTOP) for longer than the message timeout, with
/// records in flight, finds its producer timed out and, against some
/// brokers, fenced. It must either publish again or give up its keys and
/// exit non-zero, never keep its leases without publishing. Order holds
/// either way.
#[tokio::test]
async fn a_relay_paused_with_records_in_flight_publishes_again_or_gives_up() -> Result<()> {
    const KEYS: usize = 30;
    let db = TestDb::new().await?;
    let broker = Broker::start_new("order_faults-pause", Storage::Memory).await?;
    let topic = common::unique_topic("pause-order");
    broker.create_topic(&topic, 6).await?;
    let mut args = FAST_RECOVERY.to_vec();
    args.extend(["--batch-size", "50", "--stall-timeout", "10s"]);
    let spawn = |name: &str| {
        let mut a = args.clone();
        a.extend(["--name", name]);
        Relay::spawn(&format!("order_faults-{name}"), &db.url, &broker.addr(), &a)
    };
    let mut first = spawn("paused")?;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(order::write_numbered(
        db.pool.clone(),
        topic.clone(),
        KEYS,
        stop.clone(),
    ));
    common::wait_for(
        "200 messages published",
        Duration::from_secs(30),
        || async { Ok((published(&db).await? >= 200).then_some(())) },
    )
    .await?;
    first.pause()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    first.resume()?;
    let before = published(&db).await?;
    let outcome = common::wait_for(
        "the paused relay to publish again or exit",
        Duration::from_secs(40),
        || {
            let status = first.exit_status();
            let db = &db;
            async move {
                if let Some(status) = status {
                    return Ok(Some(Some(status)));
                }
                Ok((published(db).await? >= before + 200).then_some(None))
            }
        },
    )
    .await?;
    let mut relays = vec![first];
    if let Some(status) = outcome {
        assert!(
            !status.success(),
            "a relay that gives up must exit non-zero; see {}",
            relays[0].log.display()
        );
        eprintln!("the paused relay gave up ({status}); a new one takes over");
        relays.push(spawn("successor")?);
    } else {
        eprintln!("the paused relay publishes again");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let last = writer.await??;
    let logs: Vec<&Relay> = relays.iter().collect();
    assert_in_order(&broker, &topic, &last, &logs).await?;
    db.wait_all_published(last.iter().sum::<u64>() as i64, Duration::from_secs(30))
        .await
}

/// With no broker to publish to, the relay first says so on `/healthz`
/// (503, with the reason), then gives its shards back and exits non-zero,
/// so that a supervisor restarts it and no key waits on a relay that only
/// looks alive. Nothing is lost.
#[tokio::test]
async fn a_relay_that_cannot_publish_says_so_then_gives_up_its_keys() -> Result<()> {
    let db = TestDb::new().await?;
    let topic = common::unique_topic("stall");
    let ids = db.enqueue_numbered(&topic, 10, 10).await?;
    // Nothing listens on this port.
    let nowhere = format!("127.0.0.1:{}", common::free_port()?);
    let mut args = FAST_RECOVERY.to_vec();
    args.extend(["--stall-timeout", "8s"]);
    let mut relay = Relay::spawn("order_faults-stall", &db.url, &nowhere, &args)?;
    let http = relay.http_addr().await?;
    common::wait_for(
        "the relay to hold shards",
        Duration::from_secs(30),
        || async { Ok((!db.shard_owners().await?.is_empty()).then_some(())) },
    )
    .await?;
    let body = common::wait_for(
        "/healthz to report that nothing is published",
        Duration::from_secs(20),
        || {
            let http = http.clone();
            async move {
                let (status, body) = outbox_testkit::http_get(&http, "/healthz").await?;
                Ok((status == 503 && body.contains("no message acknowledged")).then_some(body))
            }
        },
    )
    .await?;
    eprintln!("/healthz: {body}");
    let status = common::wait_for("the stalled relay to exit", Duration::from_secs(30), || {
        let status = relay.exit_status();
        async move { Ok(status) }
    })
    .await?;
    assert!(!status.success(), "a stalled relay must exit non-zero");
    let output = relay.output();
    assert!(
        output.contains("stalled"),
        "the exit names the stall; see {}",
        relay.log.display()
    );
    assert!(
        db.shard_owners().await?.is_empty(),
        "the stalled relay gave its shards back"
    );
    assert_eq!(
        db.status_counts().await?.get("pending").copied(),
        Some(ids.len() as i64),
        "nothing was lost or marked"
    );
    Ok(())
}

/// Messages never time out by default, so a relay may wait for the broker
/// for a long time with batches in flight. It keeps its leases meanwhile:
/// otherwise its keys would pass to another relay while its own records
/// can still arrive. After the outage everything is published.
#[tokio::test]
async fn a_relay_waiting_for_the_broker_keeps_its_leases() -> Result<()> {
    let db = TestDb::new().await?;
    let topic = common::unique_topic("waiting-lease");
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic(&topic, 6, 1)?;
    let brokers = cluster.bootstrap_servers();
    let args = [
        "--lease",
        "3s",
        "--stall-timeout",
        "60s",
        "--batch-size",
        "10",
        "--name",
        "waiting",
    ];
    let relay = Relay::spawn("order_faults-waiting-lease", &db.url, &brokers, &args)?;
    db.enqueue_numbered(&topic, 50, 10).await?;
    db.wait_all_published(50, Duration::from_secs(30)).await?;
    cluster.broker_down(1)?;
    db.enqueue_numbered(&topic, 200, 10).await?;
    // Three leases long: without extensions the lease would have lapsed
    // twice over while the batches in flight wait for the broker.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let owners = db.shard_owners().await?;
    assert_eq!(
        owners.get("waiting").copied(),
        Some(256),
        "the waiting relay lost its leases: {owners:?}; see {}",
        relay.log.display()
    );
    cluster.broker_up(1)?;
    db.wait_all_published(250, Duration::from_secs(60)).await
}
