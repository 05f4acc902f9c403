//! The statements against a real PostgreSQL (a scratch database each):
//! per-key order in the fetch whatever the cursor, what a fetch can see of
//! other transactions, and the wake-up mark.

use std::time::Duration;

use anyhow::Result;
use outbox::schema::{MessageStatus, SHARD_COUNT, WAKEUP_CHANNEL};
use outbox::{Message, Outbox};
use outbox_testkit::{wait_for, ScratchDb};
use sqlx::postgres::PgListener;
use uuid::Uuid;

use super::{PendingMessage, RelayStore};

fn all_shards() -> Vec<i16> {
    (0..SHARD_COUNT).collect()
}

fn payloads(batch: &[PendingMessage]) -> Vec<Vec<u8>> {
    batch
        .iter()
        .map(|m| m.payload.clone().unwrap_or_default())
        .collect()
}

/// A message that was made to wait (a delay, or a retry's backoff) blocks
/// the later messages of its key until it is itself published, even once
/// it is due and even when the fetch starts above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_message_blocks_its_key_below_the_cursor() -> Result<()> {
    let db = ScratchDb::new().await?;
    let pool = db.pool();
    let outbox = Outbox::new();
    let store = RelayStore::new(pool.clone());
    let mut tx = pool.begin().await?;
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
        .fetch_one(pool)
        .await?;

    // While K's first message waits, only L may go.
    let batch = store.fetch_pending(&all_shards(), 100, 0, &[], &[]).await?;
    assert_eq!(payloads(&batch), vec![b"other".to_vec()]);

    // Once it is due, a fetch from above it (a relay's cursor past it) must
    // still not release K's second message...
    wait_for("the delay to pass", Duration::from_secs(5), || async {
        let due: bool =
            sqlx::query_scalar("SELECT available_at <= now() FROM outbox.message WHERE seq = $1")
                .bind(first_seq)
                .fetch_one(pool)
                .await?;
        anyhow::Ok(due.then_some(()))
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
    let k_only = |batch: &[PendingMessage]| -> Vec<Vec<u8>> {
        payloads(batch)
            .into_iter()
            .filter(|p| p.starts_with(b"k"))
            .collect()
    };
    let batch = store.fetch_pending(&all_shards(), 100, 0, &[], &[]).await?;
    assert_eq!(k_only(&batch), vec![b"k1".to_vec()]);
    store.settle_batch(&[first_seq], &[], true).await?;
    let batch = store.fetch_pending(&all_shards(), 100, 0, &[], &[]).await?;
    assert_eq!(k_only(&batch), vec![b"k2".to_vec()]);
    Ok(())
}

/// The relay's fetch sees a message exactly when the transaction that
/// wrote it committed: never before, never after a rollback.
#[tokio::test]
async fn only_committed_messages_are_fetched() -> Result<()> {
    let db = ScratchDb::new().await?;
    let pool = db.pool();
    let outbox = Outbox::new();
    let store = RelayStore::new(pool.clone());

    let mut tx = pool.begin().await?;
    outbox
        .enqueue(&mut *tx, Message::new("orders", "rolled back").key("k1"))
        .await?;
    tx.rollback().await?;
    {
        // Dropped without a commit.
        let mut tx = pool.begin().await?;
        outbox
            .enqueue(&mut *tx, Message::new("orders", "dropped").key("k2"))
            .await?;
    }
    assert!(
        store
            .fetch_pending(&all_shards(), 100, 0, &[], &[])
            .await?
            .is_empty(),
        "the relay can fetch a rolled back message"
    );

    let mut tx = pool.begin().await?;
    let id = outbox
        .enqueue(&mut *tx, Message::new("orders", "not yet").key("order-9"))
        .await?;
    assert!(
        store
            .fetch_pending(&all_shards(), 100, 0, &[], &[])
            .await?
            .is_empty(),
        "the relay can fetch an uncommitted message"
    );
    tx.commit().await?;
    let pending = store.fetch_pending(&all_shards(), 100, 0, &[], &[]).await?;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].payload.as_deref(), Some(&b"not yet"[..]));
    Ok(())
}

/// The migrations create one lease row per shard, and the statuses the
/// table accepts are the schema's.
#[tokio::test]
async fn the_schema_matches_the_contract() -> Result<()> {
    let db = ScratchDb::new().await?;
    let shards: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.shard_lease")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(shards, i64::from(SHARD_COUNT));
    for status in MessageStatus::ALL {
        let mut tx = db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO outbox.message (id, topic, payload, status) VALUES ($1, 't', 'x', $2)",
        )
        .bind(Uuid::now_v7())
        .bind(status.as_str())
        .execute(&mut *tx)
        .await?;
        tx.rollback().await?;
    }
    let refused = sqlx::query(
        "INSERT INTO outbox.message (id, topic, payload, status) VALUES ($1, 't', 'x', 'sent')",
    )
    .bind(Uuid::now_v7())
    .execute(db.pool())
    .await;
    assert!(refused.is_err(), "a status outside the schema was accepted");
    Ok(())
}

async fn enqueue_one(pool: &sqlx::PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    Outbox::new()
        .enqueue(&mut *tx, Message::new("t", "x").key("k"))
        .await?;
    tx.commit().await?;
    Ok(())
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

/// Inserts notify the wake-up channel only while a relay has marked
/// itself waiting (an unexpired `outbox.relay.waiting_until`), so writers
/// do not pay for NOTIFY while relays are busy or absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_notify_only_while_a_relay_waits() -> Result<()> {
    let db = ScratchDb::new().await?;
    let pool = db.pool();
    let store = RelayStore::new(pool.clone());
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(WAKEUP_CHANNEL).await?;
    let quiet = Duration::from_millis(500);

    enqueue_one(pool).await?;
    assert!(
        !notified(&mut listener, quiet).await?,
        "an insert notified with no relay registered"
    );

    let relay = Uuid::now_v7();
    store
        .renew_shards(relay, "test", Duration::from_secs(30), true)
        .await?;
    enqueue_one(pool).await?;
    assert!(
        !notified(&mut listener, quiet).await?,
        "an insert notified while the only relay was busy"
    );

    store
        .set_waiting(relay, Some(Duration::from_secs(30)))
        .await?;
    enqueue_one(pool).await?;
    assert!(
        notified(&mut listener, Duration::from_secs(5)).await?,
        "no notification while a relay waits"
    );
    // A lease renewal keeps the relay waiting.
    store
        .renew_shards(relay, "test", Duration::from_secs(30), true)
        .await?;
    enqueue_one(pool).await?;
    assert!(
        notified(&mut listener, Duration::from_secs(5)).await?,
        "a lease renewal cancelled the wait"
    );

    store.set_waiting(relay, None).await?;
    enqueue_one(pool).await?;
    assert!(
        !notified(&mut listener, quiet).await?,
        "an insert notified after the relay stopped waiting"
    );

    // A relay killed while waiting costs writers one lease at most.
    store
        .set_waiting(relay, Some(Duration::from_millis(200)))
        .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    enqueue_one(pool).await?;
    assert!(
        !notified(&mut listener, quiet).await?,
        "an expired wait still made inserts notify"
    );
    Ok(())
}

/// A renewal that may not give shards back (batches are in flight) keeps
/// the shards above the fair share, renewed, and says how many; only a
/// renewal that may give back hands them to the other relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_gives_shards_back_only_when_allowed() -> Result<()> {
    let db = ScratchDb::new().await?;
    let store = RelayStore::new(db.pool().clone());
    let lease = Duration::from_secs(30);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let all = store.renew_shards(a, "a", lease, false).await?;
    assert_eq!(
        all.held.len(),
        SHARD_COUNT as usize,
        "alone, a takes every shard"
    );
    assert_eq!(all.excess, 0);

    // b arrives: nothing is free for it yet.
    let none = store.renew_shards(b, "b", lease, true).await?;
    assert!(none.held.is_empty());

    let kept = store.renew_shards(a, "a", lease, false).await?;
    assert_eq!(
        kept.held.len(),
        SHARD_COUNT as usize,
        "a gave shards back while not allowed"
    );
    assert_eq!(kept.excess, SHARD_COUNT as usize / 2);
    let none = store.renew_shards(b, "b", lease, true).await?;
    assert!(none.held.is_empty(), "b took shards a still holds");

    let half = store.renew_shards(a, "a", lease, true).await?;
    assert_eq!(half.held.len(), SHARD_COUNT as usize / 2);
    assert_eq!(half.excess, 0);
    let other_half = store.renew_shards(b, "b", lease, true).await?;
    assert_eq!(other_half.held.len(), SHARD_COUNT as usize / 2);
    assert!(other_half.held.iter().all(|s| !half.held.contains(s)));
    Ok(())
}

/// The backlog's figures count each state exactly, and the lag is the age
/// of the first pending message in publishing order.
#[tokio::test]
async fn the_backlog_counts_each_state_and_the_lag() -> Result<()> {
    let db = ScratchDb::new().await?;
    let pool = db.pool();
    let store = RelayStore::new(pool.clone());
    let empty = store.backlog().await?;
    assert_eq!((empty.pending, empty.dead), (0, 0));
    assert_eq!(
        empty.oldest_pending_secs, 0.0,
        "no lag with nothing pending"
    );

    // In seq order: pending for an hour, dead, published, then pending
    // for a minute twice.
    for (age_secs, status) in [
        (3600, "pending"),
        (7200, "dead"),
        (10800, "published"),
        (60, "pending"),
        (60, "pending"),
    ] {
        sqlx::query(
            "INSERT INTO outbox.message (id, topic, payload, status, created_at, available_at) \
             VALUES ($1, 't', 'x', $2, now() - make_interval(secs => $3), \
                     now() - make_interval(secs => $3))",
        )
        .bind(Uuid::now_v7())
        .bind(status)
        .bind(f64::from(age_secs))
        .execute(pool)
        .await?;
    }
    let b = store.backlog().await?;
    assert_eq!((b.pending, b.dead), (3, 1));
    assert!(
        (3600.0..3660.0).contains(&b.oldest_pending_secs),
        "the lag is the first pending message's age, an hour: {}",
        b.oldest_pending_secs
    );

    // Once the first is published, the lag is the next one's.
    sqlx::query(
        "UPDATE outbox.message SET status = 'published', published_at = now() \
         WHERE seq = (SELECT min(seq) FROM outbox.message)",
    )
    .execute(pool)
    .await?;
    let b = store.backlog().await?;
    assert_eq!(b.pending, 2);
    assert!(
        (60.0..120.0).contains(&b.oldest_pending_secs),
        "the lag after the first was published: {}",
        b.oldest_pending_secs
    );
    Ok(())
}

/// Marking by runs of seqs deletes exactly the acknowledged messages: a
/// pending message between two runs, or just past one, stays; one inside
/// a run that waits for a confirmation is marked awaiting, not deleted.
/// Both statements (by range, and by seq for scattered batches) are used.
#[tokio::test]
async fn marking_by_runs_deletes_exactly_the_acknowledged_messages() -> Result<()> {
    let db = ScratchDb::new().await?;
    let pool = db.pool();
    let outbox = Outbox::new();
    let store = RelayStore::new(pool.clone());
    let mut tx = pool.begin().await?;
    for i in 0..12 {
        let mut m = Message::new("t", format!("m{i}"));
        if i == 2 {
            m = m.confirm_within(Duration::from_secs(60));
        }
        outbox.enqueue(&mut *tx, m).await?;
    }
    tx.commit().await?;
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM outbox.message ORDER BY seq")
        .fetch_all(pool)
        .await?;
    let left = || async {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, status FROM outbox.message ORDER BY seq")
                .fetch_all(pool)
                .await?;
        anyhow::Ok(rows)
    };

    // Two runs, 0..=5 and 7..=9: deleted by range.
    let acknowledged: Vec<i64> = [0, 1, 2, 3, 4, 5, 7, 8, 9].map(|i| seqs[i]).to_vec();
    assert!(super::SeqRuns::new(&acknowledged).worth_it());
    store.settle_batch(&acknowledged, &[], false).await?;
    assert_eq!(
        left().await?,
        vec![
            (seqs[2], "awaiting".to_owned()),
            (seqs[6], "pending".to_owned()),
            (seqs[10], "pending".to_owned()),
            (seqs[11], "pending".to_owned()),
        ]
    );

    // Scattered seqs: deleted one by one.
    let scattered = [seqs[6], seqs[11]];
    assert!(!super::SeqRuns::new(&scattered).worth_it());
    store.settle_batch(&scattered, &[], false).await?;
    assert_eq!(
        left().await?,
        vec![
            (seqs[2], "awaiting".to_owned()),
            (seqs[10], "pending".to_owned()),
        ]
    );
    Ok(())
}
