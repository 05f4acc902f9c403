use sqlx::PgExecutor;

use crate::error::Result;
use crate::message::MessageId;

/// The idempotent-consumer record of one consumer: which message ids it
/// has already processed.
///
/// Call [`Inbox::receive`] in the transaction that performs the message's
/// effect. The first delivery inserts the id and returns `true`; any later
/// delivery of the same id (a relay retry, a Kafka redelivery after a
/// crash) finds it and returns `false`, and the caller skips the effect.
/// Two concurrent deliveries of the same id serialise on the primary key:
/// the second waits until the first transaction ends, then returns `false`
/// if it committed, or `true` if it rolled back.
#[derive(Debug, Clone)]
pub struct Inbox {
    consumer: String,
}

impl Inbox {
    /// The inbox of the consumer named `consumer` (a service and handler,
    /// e.g. `inventory.order-placed`). Consumers with different names
    /// de-duplicate independently.
    pub fn new(consumer: impl Into<String>) -> Self {
        Inbox {
            consumer: consumer.into(),
        }
    }

    /// This inbox's consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Records `message_id` as processed, in the caller's transaction.
    /// Returns `true` when this is its first delivery (perform the effect,
    /// then commit), `false` when it was already processed (skip it).
    ///
    /// Fails with [`Error::Database`](crate::Error::Database); the
    /// transaction should then be rolled back and the message retried.
    pub async fn receive<'c, E>(&self, executor: E, message_id: MessageId) -> Result<bool>
    where
        E: PgExecutor<'c>,
    {
        let inserted = sqlx::query(
            "INSERT INTO outbox.inbox (consumer, message_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.consumer)
        .bind(message_id.0)
        .execute(executor)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}

/// Completes a message that was enqueued with
/// [`Message::confirm_within`](crate::Message::confirm_within): call it, in
/// the transaction that handles the reply, with the original message's id.
/// Returns `true` if this call completed it, `false` if it was already
/// completed (a duplicate reply), dead, deleted, enqueued without a
/// confirmation timeout, or is unknown: a late, repeated or stray reply
/// changes nothing (and a message that waits for no reply is never kept
/// from being published).
pub async fn confirm<'c, E>(executor: E, message_id: MessageId) -> Result<bool>
where
    E: PgExecutor<'c>,
{
    let done = sqlx::query(
        "UPDATE outbox.message SET status = 'completed', completed_at = now(), confirm_by = NULL \
         WHERE id = $1 AND confirm_within IS NOT NULL \
         AND status IN ('pending', 'published', 'awaiting')",
    )
    .bind(message_id.0)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}
