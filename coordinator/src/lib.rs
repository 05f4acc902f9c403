//! Two-phase and three-phase commit over real databases, built to be
//! measured against the transactional outbox on the same order/inventory
//! operation.
//!
//! - [`TwoPhase`]: 2PC over [`Participant`]s (PostgreSQL `PREPARE
//!   TRANSACTION`, MariaDB `XA`), with a durable [`DecisionLog`] written
//!   before anyone is told to commit, and [`recover`] (presumed abort) for
//!   a restarted coordinator.
//! - [`ThreePhase`] and [`Agent`]: 3PC with one HTTP agent per database;
//!   each agent holds its work as a prepared transaction between phases and
//!   keeps its own timers (abort if silent before PreCommit, commit if
//!   silent after it).
//! - [`place_order_outbox`] and [`StockApplier`]: the outbox variant.
//! - [`ScratchDatabases`]: fresh databases for tests and the comparison.
//!
//! The `outbox-compare` binary runs all three on one workload and writes a
//! report; see `scripts/compare.sh`.

mod agent;
mod error;
mod gid;
mod http;
mod log;
mod outbox_way;
mod participant;
mod recovery;
mod scratch;
mod three_phase;
mod two_phase;

pub use agent::{
    Agent, CanCommitRequest, Faults, GidRequest, Resolved, Vote, DEFAULT_AGENT_TIMEOUT,
};
pub use error::{Error, Result};
pub use gid::{check_prefix, Gid};
pub use log::DecisionLog;
pub use outbox_way::{place_order_outbox, Applied, StockApplier};
pub use participant::{Backend, Branch, Completed, Participant, Work};
pub use recovery::{recover, Recovered};
pub use scratch::ScratchDatabases;
pub use three_phase::{AgentClient, ThreePhase, DEFAULT_REQUEST_TIMEOUT};
pub use two_phase::{Outcome, Prepared, TwoPhase};
