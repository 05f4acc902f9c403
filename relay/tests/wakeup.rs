//! Wake-up: an idle relay in notify mode is woken by a commit, long before
//! its poll interval. (That inserts notify only while a relay waits is the
//! relay's store test `inserts_notify_only_while_a_relay_waits`.)

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::{Broker, Relay, Storage, TestDb, TopicReader};
use outbox::{Message, Outbox};
use uuid::Uuid;

async fn enqueue_one(db: &TestDb, topic: &str) -> Result<Uuid> {
    let mut tx = db.pool.begin().await?;
    let id = Outbox::new()
        .enqueue(&mut *tx, Message::new(topic, "x").key("k"))
        .await?;
    tx.commit().await?;
    Ok(id.0)
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
