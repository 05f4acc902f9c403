//! Consuming from Kafka with the inbox: every message's effect happens once.
//!
//! [`InboxConsumer`] reads a subscribed `StreamConsumer` one message at a
//! time. For each it opens a transaction, records the message id in the
//! inbox, runs your [`Handler`] in that same transaction, commits, and
//! only then commits the Kafka offset. A crash anywhere leads to a
//! redelivery, which the inbox recognises and skips. A message without a
//! valid `outbox-id`, or one the handler rejects, is parked in
//! `outbox.parked` (with its inbox entry, so it is parked once) and the
//! consumer moves on; a handler that asks for a retry gets the same
//! message again after a pause, so nothing behind it in its partition
//! overtakes it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::{is_transient, Result};
use crate::inbox::Inbox;
use crate::message::MessageId;

/// Longest pause between retries of one message.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// A message as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The `outbox-id` header: the id to de-duplicate and to confirm on.
    pub id: MessageId,
    /// The `outbox-type` header, when present.
    pub message_type: Option<String>,
    /// Topic it came from.
    pub topic: String,
    /// Partition it came from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Every header, in order, including the `outbox-` ones.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a handler did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The message can never be processed (malformed, unknown type, breaks
    /// a business rule in a way no retry fixes): park it and move on.
    #[error("rejected: {0}")]
    Reject(String),
    /// Something passing went wrong (database busy or restarting): roll
    /// back and try the same message again.
    #[error("will retry: {0}")]
    Retry(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            HandlerError::Retry(e.to_string())
        } else {
            HandlerError::Reject(e.to_string())
        }
    }
}

impl From<crate::Error> for HandlerError {
    fn from(e: crate::Error) -> Self {
        if e.is_retryable() {
            HandlerError::Retry(e.to_string())
        } else {
            HandlerError::Reject(e.to_string())
        }
    }
}

/// Processes one message inside the consumer's database transaction. Do
/// every write through `tx` (including any `Outbox::enqueue` of replies),
/// so the effect commits together with the inbox entry, or not at all.
pub trait Handler: Send + Sync {
    /// Handles `message`; see [`HandlerError`] for what an error does.
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        message: &'a Received,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// Counters of what an [`InboxConsumer`] did. Shared: read them while it runs.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Messages whose effect was committed.
    pub processed: AtomicU64,
    /// Deliveries skipped because the inbox already had their id.
    pub duplicates: AtomicU64,
    /// Messages parked (malformed or rejected).
    pub parked: AtomicU64,
    /// Retries after a transient failure.
    pub retries: AtomicU64,
}

/// Runs a [`Handler`] once per message id; see the module docs.
pub struct InboxConsumer<H> {
    pool: PgPool,
    consumer: StreamConsumer,
    inbox: Inbox,
    handler: H,
    stats: Arc<ConsumerStats>,
}

impl<H: Handler> InboxConsumer<H> {
    /// A consumer named `name` (its inbox namespace) over `consumer`, which
    /// must already be subscribed and have `enable.auto.commit=false`
    /// (offsets are committed by this type, after the database).
    pub fn new(
        pool: PgPool,
        consumer: StreamConsumer,
        name: impl Into<String>,
        handler: H,
    ) -> Self {
        InboxConsumer {
            pool,
            consumer,
            inbox: Inbox::new(name),
            handler,
            stats: Arc::new(ConsumerStats::default()),
        }
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// How many partitions the consumer group has assigned to this
    /// consumer right now: 0 until it has joined its group (and during a
    /// rebalance that takes its partitions away), so a service can report
    /// itself ready only once it will actually receive messages. Safe to
    /// call while [`run`](Self::run) runs, e.g. through an `Arc`.
    pub fn assigned_partitions(&self) -> usize {
        self.consumer.assignment().map_or(0, |list| list.count())
    }

    /// Consumes until `stop` completes. Kafka errors are logged and the
    /// loop goes on; it returns only when stopped.
    pub async fn run(&self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let received = tokio::select! {
                _ = &mut stop => return,
                m = self.consumer.recv() => m,
            };
            match received {
                Ok(m) => {
                    if !self.process(&m, &mut stop).await {
                        return;
                    }
                    if let Err(e) = self.consumer.commit_message(&m, CommitMode::Async) {
                        // The next commit covers it; at worst it is redelivered
                        // and skipped by the inbox.
                        tracing::warn!(error = %e, "cannot commit the offset");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Handles one message to completion (processed, duplicate or parked).
    /// Returns false if stopped before that.
    async fn process(
        &self,
        m: &BorrowedMessage<'_>,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        let mut pause = Duration::from_millis(100);
        loop {
            let outcome = match parse(m) {
                Ok(received) => self.handle_once(&received).await,
                Err(why) => self.park(m, None, &why).await.map(|_| ()),
            };
            match outcome {
                Ok(()) => return true,
                Err(e) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, topic = m.topic(), partition = m.partition(), offset = m.offset(),
                        "cannot process the message yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = &mut *stop => return false,
                    }
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
    }

    /// One attempt. `Err` means "try again".
    async fn handle_once(&self, received: &Received) -> Result<(), String> {
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        let first = self
            .inbox
            .receive(&mut *tx, received.id)
            .await
            .map_err(|e| e.to_string())?;
        if !first {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(id = %received.id, "duplicate delivery skipped");
            return Ok(());
        }
        match self.handler.handle(&mut tx, received).await {
            Ok(()) => {
                tx.commit().await.map_err(|e| e.to_string())?;
                self.stats.processed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(HandlerError::Retry(why)) => Err(why),
            Err(HandlerError::Reject(why)) => {
                drop(tx);
                self.park_received(received, &why)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn park_received(&self, r: &Received, why: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if self.inbox.receive(&mut *tx, r.id).await? {
            insert_parked(
                &mut tx,
                self.inbox.consumer(),
                &r.topic,
                r.partition,
                r.offset,
                Some(r.id.0),
                r.key.as_deref(),
                r.payload.as_deref(),
                why,
            )
            .await?;
            tx.commit().await?;
            self.stats.parked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(id = %r.id, topic = %r.topic, error = why, "message rejected by the handler; parked in outbox.parked");
        }
        Ok(())
    }

    async fn park(
        &self,
        m: &BorrowedMessage<'_>,
        id: Option<Uuid>,
        why: &str,
    ) -> Result<(), String> {
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        insert_parked(
            &mut tx,
            self.inbox.consumer(),
            m.topic(),
            m.partition(),
            m.offset(),
            id,
            m.key(),
            m.payload(),
            why,
        )
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        self.stats.parked.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            error = why,
            "malformed message parked in outbox.parked"
        );
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_parked(
    tx: &mut PgConnection,
    consumer: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    id: Option<Uuid>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    why: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox.parked (consumer, topic, kafka_partition, kafka_offset, message_id, msg_key, payload, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(consumer)
    .bind(topic)
    .bind(partition)
    .bind(offset)
    .bind(id)
    .bind(key)
    .bind(payload)
    .bind(why)
    .execute(tx)
    .await?;
    Ok(())
}

/// Reads the outbox headers of a record; `Err` says why it is malformed.
fn parse(m: &BorrowedMessage<'_>) -> Result<Received, String> {
    let mut headers = Vec::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            headers.push((
                header.key.to_owned(),
                header.value.unwrap_or_default().to_vec(),
            ));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    let id = find(crate::headers::ID).ok_or("no outbox-id header")?;
    let id = std::str::from_utf8(id)
        .ok()
        .and_then(|s| s.parse::<MessageId>().ok())
        .ok_or("the outbox-id header is not a UUID")?;
    let message_type = find(crate::headers::TYPE).map(|t| String::from_utf8_lossy(t).into_owned());
    Ok(Received {
        id,
        message_type,
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
    })
}
