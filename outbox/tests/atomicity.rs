//! Enqueueing is part of the caller's transaction: a message exists exactly
//! when the transaction that wrote it committed, together with the
//! business rows written next to it, and nobody sees it before the commit.

use anyhow::Result;
use outbox::{Message, MessageId, Outbox};
use outbox_testkit::ScratchDb as TestDb;
use uuid::Uuid;

/// One `outbox.message` row as the tests compare it.
#[derive(Debug, PartialEq, Eq, sqlx::FromRow)]
struct Row {
    id: Uuid,
    topic: String,
    msg_key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    header_names: Vec<String>,
    header_values: Vec<Vec<u8>>,
    msg_type: Option<String>,
    status: String,
    attempts: i32,
}

async fn rows(db: &TestDb) -> Result<Vec<Row>> {
    Ok(sqlx::query_as(
        "SELECT id, topic, msg_key, payload, header_names, header_values, msg_type, status, attempts \
         FROM outbox.message ORDER BY seq",
    )
    .fetch_all(db.pool())
    .await?)
}

async fn message_count(db: &TestDb) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox.message")
        .fetch_one(db.pool())
        .await?)
}

#[tokio::test]
async fn rolled_back_transaction_leaves_no_message() -> Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new();

    // Explicit rollback.
    let mut tx = db.pool().begin().await?;
    outbox
        .enqueue(&mut *tx, Message::new("orders", "one").key("k1"))
        .await?;
    outbox
        .enqueue_all(
            &mut *tx,
            [
                Message::new("orders", "two").key("k1"),
                Message::new("payments", "three"),
            ],
        )
        .await?;
    tx.rollback().await?;
    assert_eq!(message_count(&db).await?, 0, "rolled back messages remain");

    // A transaction dropped without commit rolls back too.
    {
        let mut tx = db.pool().begin().await?;
        outbox
            .enqueue(&mut *tx, Message::new("orders", "four").key("k2"))
            .await?;
    }
    assert_eq!(
        message_count(&db).await?,
        0,
        "messages of a dropped transaction remain"
    );
    // The relay's fetch sees none of them either: see the relay's store
    // test `only_committed_messages_are_fetched`.
    Ok(())
}

#[tokio::test]
async fn committed_transaction_leaves_exactly_its_messages() -> Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new();

    // A rolled-back transaction first, to show it does not leak into the
    // committed one's results.
    let mut tx = db.pool().begin().await?;
    let rolled_back = outbox
        .enqueue(&mut *tx, Message::new("orders", "ghost").key("order-1"))
        .await?;
    tx.rollback().await?;

    let binary: Vec<u8> = (0..=255u8).collect();
    let messages = [
        Message::new("orders", r#"{"order":1}"#)
            .key("order-1")
            .message_type("OrderPlaced")
            .header("traceparent", "00-abc-def-01")
            .header("bin", vec![0u8, 255, 1, 0]),
        Message::new("orders", binary.clone()).key(vec![0u8, 1, 2, 255]),
        Message::new("orders.v2", Vec::new()),
        Message::tombstone("orders", "order-1"),
    ];
    let mut tx = db.pool().begin().await?;
    let first = outbox.enqueue(&mut *tx, messages[0].clone()).await?;
    let rest = outbox.enqueue_all(&mut *tx, messages[1..].to_vec()).await?;
    tx.commit().await?;
    let ids: Vec<MessageId> = std::iter::once(first).chain(rest).collect();
    assert_eq!(ids.len(), 4);

    let expected = vec![
        Row {
            id: ids[0].0,
            topic: "orders".into(),
            msg_key: Some(b"order-1".to_vec()),
            payload: Some(br#"{"order":1}"#.to_vec()),
            header_names: vec!["traceparent".into(), "bin".into()],
            header_values: vec![b"00-abc-def-01".to_vec(), vec![0, 255, 1, 0]],
            msg_type: Some("OrderPlaced".into()),
            status: "pending".into(),
            attempts: 0,
        },
        Row {
            id: ids[1].0,
            topic: "orders".into(),
            msg_key: Some(vec![0, 1, 2, 255]),
            payload: Some(binary),
            header_names: vec![],
            header_values: vec![],
            msg_type: None,
            status: "pending".into(),
            attempts: 0,
        },
        Row {
            id: ids[2].0,
            topic: "orders.v2".into(),
            msg_key: None,
            payload: Some(vec![]),
            header_names: vec![],
            header_values: vec![],
            msg_type: None,
            status: "pending".into(),
            attempts: 0,
        },
        Row {
            id: ids[3].0,
            topic: "orders".into(),
            msg_key: Some(b"order-1".to_vec()),
            payload: None,
            header_names: vec![],
            header_values: vec![],
            msg_type: None,
            status: "pending".into(),
            attempts: 0,
        },
    ];
    let actual = rows(&db).await?;
    assert_eq!(actual, expected, "the committed rows (in seq order) differ");
    assert!(actual.iter().all(|r| r.id != rolled_back.0));
    Ok(())
}

#[tokio::test]
async fn business_row_and_message_commit_or_roll_back_together() -> Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new();
    sqlx::query("CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL)")
        .execute(db.pool())
        .await?;

    // 1. Both commit.
    let mut tx = db.pool().begin().await?;
    sqlx::query("INSERT INTO orders VALUES (1, 'PENDING')")
        .execute(&mut *tx)
        .await?;
    let placed = outbox
        .enqueue(
            &mut *tx,
            Message::new("orders", "order 1 placed").key("order-1"),
        )
        .await?;
    tx.commit().await?;

    // 2. The business write fails after the enqueue: neither stays.
    let mut tx = db.pool().begin().await?;
    let lost = outbox
        .enqueue(
            &mut *tx,
            Message::new("orders", "order 1 placed again").key("order-1"),
        )
        .await?;
    let duplicate = sqlx::query("INSERT INTO orders VALUES (1, 'DUPLICATE')")
        .execute(&mut *tx)
        .await;
    assert!(duplicate.is_err(), "the duplicate order should be refused");
    tx.rollback().await?;

    // 3. Both written, then the caller changes its mind.
    let mut tx = db.pool().begin().await?;
    sqlx::query("INSERT INTO orders VALUES (2, 'PENDING')")
        .execute(&mut *tx)
        .await?;
    let cancelled = outbox
        .enqueue(
            &mut *tx,
            Message::new("orders", "order 2 placed").key("order-2"),
        )
        .await?;
    tx.rollback().await?;

    // 4. A statement after the enqueue fails inside a committed
    //    transaction's savepoint: the outer transaction still commits both
    //    the order and its message.
    let mut tx = db.pool().begin().await?;
    sqlx::query("INSERT INTO orders VALUES (3, 'PENDING')")
        .execute(&mut *tx)
        .await?;
    let kept = outbox
        .enqueue(
            &mut *tx,
            Message::new("orders", "order 3 placed").key("order-3"),
        )
        .await?;
    {
        let mut savepoint = sqlx::Acquire::begin(&mut tx).await?;
        let refused = sqlx::query("INSERT INTO orders VALUES (3, 'DUPLICATE')")
            .execute(&mut *savepoint)
            .await;
        assert!(refused.is_err());
        savepoint.rollback().await?;
    }
    tx.commit().await?;

    let orders: Vec<(i64, String)> = sqlx::query_as("SELECT id, status FROM orders ORDER BY id")
        .fetch_all(db.pool())
        .await?;
    assert_eq!(
        orders,
        vec![(1, "PENDING".to_owned()), (3, "PENDING".to_owned())]
    );
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM outbox.message ORDER BY seq")
        .fetch_all(db.pool())
        .await?;
    assert_eq!(
        ids,
        vec![placed.0, kept.0],
        "messages of rolled back orders remain, or committed ones are missing"
    );
    assert!(!ids.contains(&lost.0) && !ids.contains(&cancelled.0));
    Ok(())
}

#[tokio::test]
async fn message_is_invisible_to_others_until_commit() -> Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new();
    let mut other = db.pool().acquire().await?;

    let mut tx = db.pool().begin().await?;
    let id = outbox
        .enqueue(&mut *tx, Message::new("orders", "not yet").key("order-9"))
        .await?;
    // The writer itself sees it...
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE id = $1")
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(own, 1);
    // ...another connection does not (nor does the relay's fetch: see the
    // relay's store test `only_committed_messages_are_fetched`).
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE id = $1")
        .bind(id.0)
        .fetch_one(&mut *other)
        .await?;
    assert_eq!(
        seen, 0,
        "an uncommitted message is visible to another connection"
    );
    tx.commit().await?;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE id = $1")
        .bind(id.0)
        .fetch_one(&mut *other)
        .await?;
    assert_eq!(seen, 1, "the committed message is not visible");
    Ok(())
}
