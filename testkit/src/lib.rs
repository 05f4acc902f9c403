//! What the workspace's tests, benchmark, chaos harness and demos need
//! around the code under test, written once:
//!
//! - [`ScratchDb`]: a PostgreSQL database of its own, created from an
//!   admin URL, optionally with the outbox schema, dropped `WITH (FORCE)`
//!   when the guard drops (or on [`ScratchDb::close`]).
//! - [`Broker`]: a tansu process on a port and in a folder of its own;
//!   stop, start and restart it, create topics; killed when dropped.
//! - [`ChildGuard`]: any child process, SIGKILLed and reaped when dropped.
//! - [`free_port`], [`wait_for_port`], [`http_get`], [`wait_for`]: the
//!   small waits and probes around them.
//! - `kafka` (feature `kafka`): wait until a broker answers Kafka
//!   metadata requests, or a topic shows its partitions.
//! - `MockBroker` (feature `kafka`): librdkafka's mock Kafka cluster,
//!   hosted in this process on real ports, with topics created.
//! - `PgCluster` (feature `pg-cluster`): a PostgreSQL server of its own
//!   (`initdb` in a temp folder, a free port), with TLS from given
//!   certificates and a `pg_hba.conf` that requires TLS or a client
//!   certificate; TLS switched on and off; stopped and deleted when
//!   dropped.
//!
//! Everything fails with this crate's [`Error`], which converts into
//! `anyhow::Error` with `?`.
//!
//! ```no_run
//! # async fn demo() -> outbox_testkit::Result<()> {
//! use outbox_testkit::{Broker, ScratchDb, Storage};
//!
//! let db = ScratchDb::new().await?; // outbox schema applied
//! let broker = Broker::start_new(Storage::Memory).await?;
//! broker.create_topic("orders", 3).await?;
//! // … run a relay against db.url() and broker.addr() …
//! db.close().await?; // or just let both guards drop
//! # Ok(()) }
//! ```

mod broker;
mod child;
mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
mod mock;
mod net;
#[cfg(feature = "pg-cluster")]
mod pg_cluster;
mod scratch;
#[cfg(feature = "tls")]
pub mod tls;
mod wait;

pub use broker::{
    tansu_bin, Broker, BrokerBuilder, Scram, Storage, CREATE_TOPIC_TIMEOUT, DEFAULT_START_TIMEOUT,
};
pub use child::{ChildGuard, LogMode};
pub use error::{Error, Result};
#[cfg(feature = "kafka")]
pub use mock::{MockBroker, MockOp};
pub use net::{free_port, http_get, http_request, wait_for_port, HTTP_TIMEOUT};
#[cfg(feature = "pg-cluster")]
pub use pg_cluster::{
    pg_bin_dir, PgAccess, PgCluster, PgClusterBuilder, PG_START_TIMEOUT, PG_SUPERUSER,
};
pub use scratch::{admin_url, with_database, ScratchDb, ScratchDbBuilder, DEFAULT_ADMIN_URL};
pub use wait::{random_suffix, wait_for, POLL_INTERVAL};
