//! Per-key order in the relay's fetch, whatever its cursor: a message that
//! was made to wait (a delay, or a retry's backoff) blocks the later
//! messages of its key until it is itself published, even once it is due
//! and even when the fetch starts above it.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::TestDb;
use outbox::{Message, Outbox, RelayStore};

fn all_shards() -> Vec<i16> {
    (0..256).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_message_blocks_its_key_below_the_cursor() -> Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new();
    let store = RelayStore::new(db.pool.clone());
    let mut tx = db.pool.begin().await?;
    let first = outbox
        .enqueue(
            &mut *tx,
            Message::new("t", "k1")
                .key("K")
                .delay(Duration::from_millis(300)),
        )
        .await?;
    outbox
        .enqueue(&mut *tx, Message::new("t", "k2").key("K"))
        .await?;
    outbox
        .enqueue(&mut *tx, Message::new("t", "other").key("L"))
        .await?;
    tx.commit().await?;
    let first_seq: i64 = sqlx::query_scalar("SELECT seq FROM outbox.message WHERE id = $1")
        .bind(first.0)
        .fetch_one(&db.pool)
        .await?;
    let payloads = |batch: &[outbox::PendingMessage]| -> Vec<Vec<u8>> {
        batch
            .iter()
            .map(|m| m.payload.clone().unwrap_or_default())
            .collect()
    };

    // While K's first message waits, only L may go.
    let batch = store.fetch_pending(&all_shards(), 100, 0, &[], &[]).await?;
    assert_eq!(payloads(&batch), vec![b"other".to_vec()]);

    // Once it is due, a fetch from above it (a relay's cursor past it) must
    // still not release K's second message...
    common::wait_for("the delay to pass", Duration::from_secs(5), || async {
        let due: bool =
            sqlx::query_scalar("SELECT available_at <= now() FROM outbox.message WHERE seq = $1")
                .bind(first_seq)
                .fetch_one(&db.pool)
                .await?;
        Ok(due.then_some(()))
    })
    .await?;
    let batch = store
        .fetch_pending(&all_shards(), 100, first_seq, &[], &[])
        .await?;
    assert!(
        !payloads(&batch).contains(&b"k2".to_vec()),
        "k2 overtook k1, which lies below the cursor: {:?}",
        payloads(&batch)
    );
    // ...a fetch from 0 returns k1 alone, and k2 only once k1 is published.
    let batch = store.fetch_pending(&all_shards(), 100, 0, &[], &[]).await?;
    let k: Vec<Vec<u8>> = payloads(&batch)
        .into_iter()
        .filter(|p| p.starts_with(b"k"))
        .collect();
    assert_eq!(k, vec![b"k1".to_vec()]);
    store.mark_published(&[first_seq], true).await?;
    let batch = store.fetch_pending(&all_shards(), 100, 0, &[], &[]).await?;
    let k: Vec<Vec<u8>> = payloads(&batch)
        .into_iter()
        .filter(|p| p.starts_with(b"k"))
        .collect();
    assert_eq!(k, vec![b"k2".to_vec()]);
    Ok(())
}
