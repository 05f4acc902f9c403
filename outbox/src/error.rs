use std::borrow::Cow;

/// Everything that can go wrong in the `outbox` crate.
///
/// Validation variants mean the message was rejected before touching the
/// database: fix the input, retrying will not help. [`Error::is_retryable`]
/// tells the caller whether the same call may succeed later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The topic name breaks Kafka's naming rules.
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected name.
        topic: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The payload is larger than [`Limits::max_payload_bytes`](crate::Limits).
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes (Limits::max_payload_bytes; the broker's message.max.bytes must allow it too)")]
    PayloadTooLarge {
        /// Size of the rejected payload.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The key is larger than [`Limits::max_key_bytes`](crate::Limits).
    #[error("key of {size} bytes exceeds the limit of {limit} bytes (Limits::max_key_bytes; keys are indexed and should be short ids)")]
    KeyTooLarge {
        /// Size of the rejected key.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A header name or value breaks the header rules.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name (lossy UTF-8 if it is not valid UTF-8).
        name: String,
        /// Which rule it breaks.
        reason: Cow<'static, str>,
    },

    /// More messages in one call than one statement can carry.
    #[error("{count} messages in one enqueue_all call, at most {limit} are allowed: split them over several calls in the same transaction")]
    TooManyMessages {
        /// Messages passed.
        count: usize,
        /// The most one call takes.
        limit: usize,
    },

    /// The message type is empty or too long.
    #[error("invalid message type {0:?}: must be 1 to 255 bytes")]
    InvalidMessageType(String),

    /// A value could not be serialised to JSON.
    #[error("could not serialise the payload as JSON: {0}")]
    Serialize(#[source] serde_json::Error),

    /// A database operation failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying the embedded migrations failed.
    #[error("applying the outbox migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// The `outbox` schema is not in the database.
    #[error("the outbox schema is missing from this database: run `outbox-relay migrate`, or call outbox::migrate(&pool) at start-up")]
    SchemaMissing,

    /// The schema is older than this build needs.
    #[error("the outbox schema is at version {found}, this build needs {required}: run `outbox-relay migrate`")]
    SchemaOutdated {
        /// Newest migration applied to the database.
        found: i64,
        /// Newest migration this build embeds.
        required: i64,
    },
}

impl Error {
    /// True when the same call may succeed if tried again later: the
    /// database was unreachable, a connection broke, or the transaction lost
    /// a serialisation race. Validation errors are never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => is_transient(e),
            _ => false,
        }
    }
}

/// Whether a sqlx error is worth retrying.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // serialization_failure, deadlock_detected, admin_shutdown,
            // crash_shutdown, cannot_connect_now, too_many_connections
            Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300")
        ),
        _ => false,
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
