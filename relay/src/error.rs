use std::borrow::Cow;

/// Why the relay could not start or had to stop. Errors met while running
/// (broker or database briefly gone) are logged and retried instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; `setting` is its flag name.
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        /// The flag name of the setting (`batch-size`, `kafka.acks`, …).
        setting: Cow<'static, str>,
        /// What is wrong with it.
        reason: String,
    },

    /// The database could not be reached at start within the connect
    /// timeout (nothing listening, host unknown, server starting).
    #[error("cannot reach the database at {url} within {timeout}: {reason}. Check --database-url / DATABASE_URL")]
    DatabaseUnreachable {
        /// The URL with any password hidden.
        url: String,
        /// How long the relay kept trying.
        timeout: String,
        /// The last attempt's failure.
        reason: String,
    },

    /// The database answered and refused the relay for a reason retrying
    /// cannot fix: wrong password, no such role or database, TLS required
    /// or refused, certificate not accepted.
    #[error("the database at {url} refused the connection: {reason}")]
    DatabaseRefused {
        /// The URL with any password hidden.
        url: String,
        /// PostgreSQL's or the TLS library's reason, and what to change.
        reason: String,
    },

    /// The outbox library failed (schema missing or old, migration failed).
    #[error(transparent)]
    Outbox(#[from] outbox::Error),

    /// A database statement failed where the relay could not retry it.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// The Kafka producer could not be created from the given settings.
    #[error("cannot create the Kafka producer: {0}. Check --brokers and the --kafka settings")]
    Producer(String),

    /// The broker refused the relay at start for a reason retrying cannot
    /// fix: its TLS certificate was not accepted, TLS or SASL failed.
    #[error("the Kafka broker refused the connection: {0}")]
    BrokerRefused(String),

    /// The idempotent producer hit a fatal error and cannot go on; restart
    /// the relay (unmarked messages are published again).
    #[error("fatal Kafka producer error, the relay must restart: {0}")]
    ProducerFatal(String),

    /// The relay made no progress for `--stall-timeout` while messages
    /// waited (broker unreachable, producer stuck, database too slow); it
    /// gave its shards back so other relays take its keys. A supervisor
    /// should restart it.
    #[error("stalled, gave the shards back: {0}")]
    Stalled(String),

    /// The sweeper's scheduler failed.
    #[error("the sweeper scheduler failed: {0}")]
    Scheduler(#[from] tokio_cron_scheduler::JobSchedulerError),

    /// The HTTP endpoint could not listen.
    #[error("cannot listen on {addr} for /healthz and /metrics: {source}. Change --http-listen")]
    HttpListen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A configuration error naming `setting`.
    pub fn config(setting: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with the relay's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
