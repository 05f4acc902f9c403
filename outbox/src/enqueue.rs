use sqlx::{PgExecutor, Postgres, QueryBuilder};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::message::{Message, MessageId};

/// Bind parameters one message takes in the insert statement.
const BINDS_PER_MESSAGE: usize = 9;

/// Writes messages into the outbox table, inside whatever transaction the
/// caller is in. It never begins, commits or rolls back anything itself:
/// the messages become visible to the relay exactly when the caller's
/// transaction commits, and vanish with it when it rolls back.
///
/// Cheap to clone; holds only the [`Limits`].
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    limits: Limits,
}

impl Outbox {
    /// Most messages [`Outbox::enqueue_all`] writes in one call: PostgreSQL
    /// takes at most 65,535 bind parameters in one statement.
    pub const MAX_MESSAGES_PER_CALL: usize = u16::MAX as usize / BINDS_PER_MESSAGE;

    /// An outbox with [`Limits::default()`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An outbox that checks messages against `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        Outbox { limits }
    }

    /// The limits messages are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Enqueues one message through `executor` (normally `&mut *tx`) and
    /// returns its id.
    ///
    /// Fails with a validation error (nothing written) or
    /// [`Error::Database`]; on a database error the caller's transaction is
    /// in an aborted state and should be rolled back.
    pub async fn enqueue<'c, E>(&self, executor: E, message: Message) -> Result<MessageId>
    where
        E: PgExecutor<'c>,
    {
        let mut ids = self.enqueue_all(executor, [message]).await?;
        Ok(ids.remove(0))
    }

    /// Enqueues several messages in one statement, in the given order (which
    /// is their publishing order per key), and returns their ids in the same
    /// order. Every message is validated before anything is written.
    ///
    /// At most [`Outbox::MAX_MESSAGES_PER_CALL`] messages per call; call again in
    /// the same transaction for more.
    pub async fn enqueue_all<'c, E, I>(&self, executor: E, messages: I) -> Result<Vec<MessageId>>
    where
        E: PgExecutor<'c>,
        I: IntoIterator<Item = Message>,
    {
        let messages: Vec<Message> = messages.into_iter().collect();
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        if messages.len() > Self::MAX_MESSAGES_PER_CALL {
            return Err(Error::TooManyMessages {
                count: messages.len(),
                limit: Self::MAX_MESSAGES_PER_CALL,
            });
        }
        for message in &messages {
            self.limits.check(message)?;
        }
        let ids: Vec<MessageId> = messages.iter().map(|_| MessageId::new()).collect();

        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO outbox.message \
             (id, topic, msg_key, payload, header_names, header_values, msg_type, available_at, \
             confirm_within) ",
        );
        insert.push_values(messages.into_iter().zip(&ids), |mut row, (m, id)| {
            let (names, values): (Vec<String>, Vec<Vec<u8>>) = m.headers.into_iter().unzip();
            row.push_bind(id.0)
                .push_bind(m.topic)
                .push_bind(m.key)
                .push_bind(m.payload)
                .push_bind(names)
                .push_bind(values)
                .push_bind(m.message_type)
                .push("now() + make_interval(secs => ")
                .push_bind_unseparated(m.delay.as_secs_f64())
                .push_unseparated(")")
                .push("make_interval(secs => ")
                .push_bind_unseparated(m.confirm_within.map(|d| d.as_secs_f64()))
                .push_unseparated(")");
        });
        insert.build().execute(executor).await?;
        Ok(ids)
    }
}
