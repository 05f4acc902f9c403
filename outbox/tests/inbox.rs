//! Inbox: the same message delivered several times, one after another and
//! concurrently, has exactly one effect.

use std::sync::Arc;

use anyhow::Result;
use outbox::{Inbox, MessageId};
use outbox_testkit::ScratchDb as TestDb;
use uuid::Uuid;

/// Runs the "effect" (a counter increment) for `id` the way a consumer
/// does: inbox entry and effect in one transaction. Returns whether this
/// delivery performed it.
async fn deliver(db: &sqlx::PgPool, inbox: &Inbox, id: Uuid) -> Result<bool> {
    let mut tx = db.begin().await?;
    if !inbox.receive(&mut *tx, MessageId(id)).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query("UPDATE effect SET n = n + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

async fn setup() -> Result<TestDb> {
    let db = TestDb::new().await?;
    sqlx::query("CREATE TABLE effect (id int PRIMARY KEY, n int NOT NULL)")
        .execute(db.pool())
        .await?;
    sqlx::query("INSERT INTO effect VALUES (1, 0)")
        .execute(db.pool())
        .await?;
    Ok(db)
}

async fn effects(db: &TestDb) -> Result<i32> {
    Ok(sqlx::query_scalar("SELECT n FROM effect WHERE id = 1")
        .fetch_one(db.pool())
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_deliveries_have_one_effect() -> Result<()> {
    let db = setup().await?;
    let inbox = Inbox::new("test.consumer");
    let id = Uuid::now_v7();
    let performed: Vec<bool> =
        futures::future::try_join_all((0..5).map(|_| deliver(db.pool(), &inbox, id))).await?;
    assert_eq!(performed.iter().filter(|p| **p).count(), 1, "{performed:?}");
    for _ in 0..3 {
        assert!(
            !deliver(db.pool(), &inbox, id).await?,
            "a later redelivery must be skipped"
        );
    }
    assert_eq!(effects(&db).await?, 1);

    // Another consumer de-duplicates on its own: it performs its effect once too.
    assert!(deliver(db.pool(), &Inbox::new("other.consumer"), id).await?);
    assert_eq!(effects(&db).await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_have_one_effect() -> Result<()> {
    let db = setup().await?;
    let inbox = Arc::new(Inbox::new("test.consumer"));
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    // Eight workers each deliver every id, in a different order.
    let mut workers = Vec::new();
    for w in 0..8 {
        let (pool, inbox, mut ids) = (db.pool().clone(), inbox.clone(), ids.clone());
        ids.rotate_left(w * 6);
        workers.push(tokio::spawn(async move {
            let mut performed = 0;
            for id in ids {
                performed += usize::from(deliver(&pool, &inbox, id).await?);
            }
            anyhow::Ok(performed)
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    assert_eq!(
        total,
        ids.len(),
        "each id performed exactly once across all workers"
    );
    assert_eq!(effects(&db).await?, ids.len() as i32);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_delivery_does_not_count() -> Result<()> {
    let db = setup().await?;
    let inbox = Inbox::new("test.consumer");
    let id = Uuid::now_v7();
    // The handler failed: the inbox entry rolls back with the effect...
    let mut tx = db.pool().begin().await?;
    assert!(inbox.receive(&mut *tx, MessageId(id)).await?);
    tx.rollback().await?;
    // ...so the redelivery performs it.
    assert!(deliver(db.pool(), &inbox, id).await?);
    assert_eq!(effects(&db).await?, 1);
    Ok(())
}

/// `confirm` completes only a message that waits for a confirmation: a
/// stray reply naming a message enqueued without one changes nothing, and
/// that message stays pending for the relay (the id index covers only
/// messages that can be confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_completes_only_a_message_that_waits_for_it() -> Result<()> {
    let db = TestDb::new().await?;
    let outbox = outbox::Outbox::new();
    let plain = outbox
        .enqueue(db.pool(), outbox::Message::new("t", "no reply expected"))
        .await?;
    let awaited = outbox
        .enqueue(
            db.pool(),
            outbox::Message::new("t", "reply expected")
                .confirm_within(std::time::Duration::from_secs(60)),
        )
        .await?;
    assert!(
        !outbox::confirm(db.pool(), plain).await?,
        "confirmed a message that waits for no confirmation"
    );
    assert!(outbox::confirm(db.pool(), awaited).await?);
    assert!(
        !outbox::confirm(db.pool(), awaited).await?,
        "a repeated reply completed it twice"
    );
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM outbox.message ORDER BY seq")
            .fetch_all(db.pool())
            .await?;
    assert_eq!(statuses, ["pending", "completed"]);
    Ok(())
}
