//! End-to-end confirmation: a message whose reply never comes is sent again
//! after its timeout; once confirmed it is never sent again, and a late
//! duplicate reply changes nothing.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{unique_topic, Broker, Relay, Storage, TestDb, TopicReader};
use outbox::{Message, Outbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_messages_are_resent_until_confirmed() -> Result<()> {
    let db = TestDb::new().await?;
    let broker = Broker::start_new("confirmation", Storage::Memory).await?;
    let topic = unique_topic("confirmation");
    broker.create_topic(&topic, 3).await?;

    let outbox = Outbox::new();
    let mut tx = db.pool.begin().await?;
    let awaited = outbox
        .enqueue(
            &mut *tx,
            Message::new(&topic, "needs a reply")
                .key("a")
                .confirm_within(Duration::from_secs(2)),
        )
        .await?;
    let plain = outbox
        .enqueue(&mut *tx, Message::new(&topic, "fire and forget").key("b"))
        .await?;
    tx.commit().await?;

    let _relay = Relay::spawn(
        "confirmation-relay",
        &db.url,
        &broker.addr(),
        &[
            "--sweep-schedule",
            "*/1 * * * * *",
            "--lease",
            "6s",
            "--kafka",
            "message.timeout.ms=2000",
        ],
    )?;
    let mut reader = TopicReader::new(&broker.addr(), &topic).await?;
    let count = |records: &[common::Record], id: outbox::MessageId| {
        records
            .iter()
            .filter(|r| r.outbox_id().ok() == Some(id.0))
            .count()
    };

    // No reply: the sweeper sends it again after the 2 s timeout.
    let resent = reader
        .read_until(Duration::from_secs(30), |r| count(r, awaited) >= 2)
        .await?;
    assert!(
        resent,
        "the unconfirmed message was not re-sent: {} copies",
        count(&reader.records, awaited)
    );
    let resends: i32 = sqlx::query_scalar("SELECT resends FROM outbox.message WHERE id = $1")
        .bind(awaited.0)
        .fetch_one(&db.pool)
        .await?;
    assert!(resends >= 1);

    // The reply arrives: completed. A duplicate reply changes nothing.
    assert!(outbox::confirm(&db.pool, awaited).await?);
    let completed_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT completed_at FROM outbox.message WHERE id = $1 AND status = 'completed'",
    )
    .bind(awaited.0)
    .fetch_one(&db.pool)
    .await?;
    assert!(
        !outbox::confirm(&db.pool, awaited).await?,
        "a duplicate reply must report no change"
    );
    let (status, again): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT status, completed_at FROM outbox.message WHERE id = $1")
            .bind(awaited.0)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!((status.as_str(), again), ("completed", completed_at));

    // Once confirmed it is not sent again, even well past its timeout (a
    // copy already on its way when the reply came may still arrive).
    reader.read_until(Duration::from_secs(1), |_| false).await?;
    let settled = count(&reader.records, awaited);
    reader.read_until(Duration::from_secs(5), |_| false).await?;
    assert_eq!(
        count(&reader.records, awaited),
        settled,
        "re-sent after it was confirmed"
    );

    // A message that asked for no confirmation is sent once.
    assert_eq!(count(&reader.records, plain), 1);
    Ok(())
}

/// `--max-resends` alone bounds the re-sends of an unconfirmed message:
/// with `--max-attempts 1` (which bounds publish failures, not re-sends)
/// it is still sent 1 + 2 times, then dead-lettered with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_stop_at_max_resends_whatever_max_attempts() -> Result<()> {
    let db = TestDb::new().await?;
    let broker = Broker::start_new("max-resends", Storage::Memory).await?;
    let topic = unique_topic("max_resends");
    broker.create_topic(&topic, 3).await?;

    let mut tx = db.pool.begin().await?;
    let awaited = Outbox::new()
        .enqueue(
            &mut *tx,
            Message::new(&topic, "never answered")
                .key("a")
                .confirm_within(Duration::from_secs(1)),
        )
        .await?;
    tx.commit().await?;

    let _relay = Relay::spawn(
        "max-resends-relay",
        &db.url,
        &broker.addr(),
        &[
            "--sweep-schedule",
            "*/1 * * * * *",
            "--max-resends",
            "2",
            "--max-attempts",
            "1",
        ],
    )?;
    common::wait_for(
        "the message to be given up on",
        Duration::from_secs(40),
        || async {
            let status: String =
                sqlx::query_scalar("SELECT status FROM outbox.message WHERE id = $1")
                    .bind(awaited.0)
                    .fetch_one(&db.pool)
                    .await?;
            Ok((status == "dead").then_some(()))
        },
    )
    .await?;
    let (resends, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT resends, last_error FROM outbox.message WHERE id = $1")
            .bind(awaited.0)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(
        resends, 2,
        "re-sent a number of times other than --max-resends"
    );
    assert_eq!(
        last_error.as_deref(),
        Some("no confirmation after 2 re-sends")
    );

    let mut reader = TopicReader::new(&broker.addr(), &topic).await?;
    reader
        .read_until(Duration::from_secs(20), |r| r.len() >= 3)
        .await?;
    reader.read_until(Duration::from_secs(2), |_| false).await?;
    assert_eq!(
        reader.records.len(),
        3,
        "expected the first send and exactly two re-sends"
    );
    Ok(())
}
