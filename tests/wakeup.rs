//! Wake-up: inserts notify `outbox_message` only while a relay has marked
//! itself waiting (an unexpired `outbox.relay.waiting_until`), so writers
//! do not pay for NOTIFY while relays are busy or absent; and an idle relay
//! in notify mode is woken by a commit, long before its poll interval.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::{Broker, Relay, Storage, TestDb, TopicReader};
use outbox::{Message, Outbox, RelayStore};
use sqlx::postgres::PgListener;
use uuid::Uuid;

async fn enqueue_one(db: &TestDb, topic: &str) -> Result<Uuid> {
    let mut tx = db.pool.begin().await?;
    let id = Outbox::new()
        .enqueue(&mut *tx, Message::new(topic, "x").key("k"))
        .await?;
    tx.commit().await?;
    Ok(id.0)
}

/// Whether a notification arrives within `within`.
async fn notified(listener: &mut PgListener, within: Duration) -> Result<bool> {
    match tokio::time::timeout(within, listener.recv()).await {
        Ok(n) => {
            n?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_notify_only_while_a_relay_waits() -> Result<()> {
    let db = TestDb::new().await?;
    let store = RelayStore::new(db.pool.clone());
    let mut listener = PgListener::connect_with(&db.pool).await?;
    listener.listen("outbox_message").await?;
    let quiet = Duration::from_millis(500);

    enqueue_one(&db, "t").await?;
    assert!(
        !notified(&mut listener, quiet).await?,
        "an insert notified with no relay registered"
    );

    let relay = Uuid::now_v7();
    store
        .renew_shards(relay, "test", Duration::from_secs(30))
        .await?;
    enqueue_one(&db, "t").await?;
    assert!(
        !notified(&mut listener, quiet).await?,
        "an insert notified while the only relay was busy"
    );

    store
        .set_waiting(relay, Some(Duration::from_secs(30)))
        .await?;
    enqueue_one(&db, "t").await?;
    assert!(
        notified(&mut listener, Duration::from_secs(5)).await?,
        "no notification while a relay waits"
    );
    // A lease renewal keeps the relay waiting.
    store
        .renew_shards(relay, "test", Duration::from_secs(30))
        .await?;
    enqueue_one(&db, "t").await?;
    assert!(
        notified(&mut listener, Duration::from_secs(5)).await?,
        "a lease renewal cancelled the wait"
    );

    store.set_waiting(relay, None).await?;
    enqueue_one(&db, "t").await?;
    assert!(
        !notified(&mut listener, quiet).await?,
        "an insert notified after the relay stopped waiting"
    );

    // A relay killed while waiting costs writers one lease at most.
    store
        .set_waiting(relay, Some(Duration::from_millis(200)))
        .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    enqueue_one(&db, "t").await?;
    assert!(
        !notified(&mut listener, quiet).await?,
        "an expired wait still made inserts notify"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_is_woken_by_a_commit() -> Result<()> {
    let db = TestDb::new().await?;
    let broker = Broker::start_new("wakeup", Storage::Memory).await?;
    let topic = common::unique_topic("wakeup");
    broker.create_topic(&topic, 3).await?;
    // Polling alone would take 30 s: only a notification can be quicker.
    let relay = Relay::spawn(
        "wakeup-relay",
        &db.url,
        &broker.addr(),
        &["--wakeup", "notify", "--poll-interval", "30s"],
    )?;
    common::wait_for(
        "the relay to wait for work",
        Duration::from_secs(30),
        || async {
            let waiting: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox.relay WHERE waiting_until > now()")
                    .fetch_one(&db.pool)
                    .await?;
            Ok((waiting == 1).then_some(()))
        },
    )
    .await?;

    let mut reader = TopicReader::new(&broker.addr(), &topic).await?;
    for round in 0..3 {
        // Let the relay settle back into its wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let id = enqueue_one(&db, &topic).await?;
        let started = Instant::now();
        let arrived = reader
            .read_ids(&[id].into_iter().collect(), Duration::from_secs(10))
            .await?;
        assert!(
            arrived,
            "round {round}: the message did not arrive within 10 s (poll interval 30 s); relay log: {}",
            relay.log.display()
        );
        eprintln!("round {round}: published in {:?}", started.elapsed());
    }
    Ok(())
}
