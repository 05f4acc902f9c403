use std::time::Duration;

/// Everything that can go wrong in this crate.
///
/// Variants are named after the operation that failed. A failure before a
/// commit decision was logged leaves nothing committed (the coordinator rolls
/// back what it prepared, or recovery does); a failure after it leaves the
/// transaction committed or in doubt, never half-applied once recovery ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement on a participant or on the decision log failed.
    #[error("database error on {target}: {source}")]
    Database {
        /// The participant's name, or `decision log`.
        target: String,
        /// What the driver reported.
        #[source]
        source: sqlx::Error,
    },
    /// A gid or gid prefix contains characters that cannot be written into
    /// `PREPARE TRANSACTION '…'` / `XA START '…'` safely, or is too long.
    #[error("invalid transaction id {0:?}: use [a-z0-9_-], at most 64 bytes in all")]
    InvalidGid(String),
    /// A participant voted no (its work failed or it refused to prepare).
    #[error("participant {participant} voted no: {reason}")]
    VotedNo {
        /// The participant's name.
        participant: String,
        /// Why, as the participant reported it.
        reason: String,
    },
    /// A request to a 3PC agent failed or timed out (the agent may or may
    /// not have acted on it).
    #[error("agent {url}: {reason}")]
    Agent {
        /// The agent's base URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// An operation did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long it was waited for.
        after: Duration,
    },
    /// Creating or dropping a scratch database failed.
    #[error(transparent)]
    Scratch(#[from] outbox_testkit::Error),
    /// The outbox library failed (outbox variant of the order).
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
    /// The protocol was deliberately stopped at a fault-injection point.
    #[error("stopped at {0} (fault injection)")]
    Stopped(&'static str),
}

impl Error {
    pub(crate) fn db(target: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let target = target.into();
        move |source| Error::Database { target, source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
