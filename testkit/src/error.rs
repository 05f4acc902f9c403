use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything the test kit can fail at, named after the operation that
/// failed.
///
/// Every variant carries what a developer needs to look further: the
/// database name, the process and its log file, how long was waited.
/// `anyhow` callers can `?` it directly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to a database (the admin database or a scratch one)
    /// failed.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL (or database name) connected to.
        url: String,
        /// What the driver reported.
        #[source]
        source: sqlx::Error,
    },
    /// `CREATE DATABASE` (or the `DROP` that clears an old one of the same
    /// name first) failed.
    #[error("CREATE DATABASE {name}: {source}")]
    CreateDatabase {
        /// The database.
        name: String,
        /// What the server reported.
        #[source]
        source: sqlx::Error,
    },
    /// `DROP DATABASE … WITH (FORCE)` failed, e.g. because the database
    /// still holds prepared transactions.
    #[error("DROP DATABASE {name}: {source}")]
    DropDatabase {
        /// The database.
        name: String,
        /// What the server reported.
        #[source]
        source: sqlx::Error,
    },
    /// `outbox::migrate` on a scratch database failed.
    #[error("outbox::migrate on {name}: {source}")]
    Migrate {
        /// The database.
        name: String,
        /// What the outbox library reported.
        #[source]
        source: outbox::Error,
    },
    /// A database URL could not be taken apart, or a database name is not
    /// plain `[a-z0-9_]`.
    #[error("{0}")]
    Invalid(String),
    /// A file, a socket or a process call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A child process exited when it should have been running.
    #[error("{what} exited ({status}){}", see(log))]
    Exited {
        /// The process's name.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// Where its output went, if anywhere.
        log: Option<PathBuf>,
    },
    /// A process was asked to start while it still runs.
    #[error("{0} is already running")]
    AlreadyRunning(String),
    /// A process was asked about while it is stopped.
    #[error("{0} is not running")]
    NotRunning(String),
    /// Something waited for did not happen in time.
    #[error("timed out after {after:?} waiting for {what}{}", see(log))]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long it was waited for.
        after: Duration,
        /// The log file that probably says why.
        log: Option<PathBuf>,
    },
    /// The tansu binary is not where it was looked for.
    #[error(
        "tansu not found at {0}: set TANSU_BIN, put tansu on PATH, or install it to \
         ~/.cache/outbox/tansu-0.6.0/bin/tansu"
    )]
    TansuNotFound(PathBuf),
    /// `tansu topic create` failed.
    #[error("tansu topic create {topic} failed ({status}): {output}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// How the CLI exited.
        status: ExitStatus,
        /// Its stdout and stderr.
        output: String,
    },
    /// A Kafka metadata request (or creating the client for it) failed.
    #[cfg(feature = "kafka")]
    #[error("asking {brokers} for metadata: {source}")]
    Metadata {
        /// The `bootstrap.servers` asked.
        brokers: String,
        /// What librdkafka reported.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// librdkafka's mock cluster ([`MockBroker`](crate::MockBroker))
    /// could not be created, or refused an operation.
    #[cfg(feature = "kafka")]
    #[error("librdkafka's mock cluster: {0}")]
    Mock(String),
    /// A PostgreSQL cluster of its own ([`PgCluster`](crate::PgCluster))
    /// could not be made or started: PostgreSQL's programs are missing,
    /// `initdb` failed, or the server exited (the detail holds its output
    /// or the end of its log).
    #[cfg(feature = "pg-cluster")]
    #[error("{what}: {detail}")]
    PgCluster {
        /// What was being done.
        what: String,
        /// The program's output, or why it could not run.
        detail: String,
    },
    /// A set-up statement (`CREATE ROLE`, `ALTER SYSTEM`, …) failed.
    #[cfg(feature = "pg-cluster")]
    #[error("{what}: {source}")]
    Statement {
        /// The statement, without any password in it.
        what: String,
        /// What the server reported.
        #[source]
        source: sqlx::Error,
    },
    /// An HTTP peer answered something that is not an HTTP response.
    #[error("not an HTTP response from {addr}: {response:?}")]
    Http {
        /// The address asked.
        addr: String,
        /// The first bytes of what came back.
        response: String,
    },
}

fn see(log: &Option<PathBuf>) -> String {
    log.as_ref()
        .map(|p| format!("; see {}", p.display()))
        .unwrap_or_default()
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
