//! # outbox-relay
//!
//! Publishes committed outbox messages to Kafka, in order per key, marks
//! them once the broker acknowledged them, and keeps the outbox table
//! healthy. Run one or more next to each service, as the `outbox-relay`
//! binary (a sidecar) or inside the service's own process; they split the
//! work by key shard, so each key is published by one relay at a time.
//!
//! In-process, the relay is a future that runs until the shutdown future
//! you give it completes:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = outbox_relay::RelayConfig::new("postgres://app@db/orders");
//! config.brokers = "kafka:9092".into();
//! config.http_listen = "127.0.0.1:9187".parse()?;
//! outbox_relay::Relay::new(config)
//!     .with_metrics(outbox_relay::install_recorder())
//!     .run(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! [`Relay::run`] returns an [`Error`] when the relay must stop (bad
//! configuration, schema missing, producer fenced, stalled); database and
//! broker outages are logged and retried. Nothing is lost either way:
//! unmarked messages are published again by the next relay that holds
//! their keys.

mod broker_events;
mod config;
mod connect;
mod delivery;
mod error;
mod health;
mod http;
mod lease;
pub mod metrics;
mod publish;
mod publish_loop;
mod retry;
mod secrets;
mod shutdown;
mod store;
mod sweep;
mod wake;

#[cfg(doctest)]
mod doctests;

use std::future::Future;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::connect::connect;
use crate::publish::Publisher;
use crate::store::RelayStore;
use crate::sweep::SweepSettings;

pub use config::{
    RelayConfig, Wakeup, DEFAULT_BATCH_SIZE, DEFAULT_BROKERS, DEFAULT_CLEANUP_BATCH,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HTTP_LISTEN, DEFAULT_INBOX_RETENTION, DEFAULT_IN_FLIGHT,
    DEFAULT_LEASE, DEFAULT_MAX_RESENDS, DEFAULT_MESSAGE_TIMEOUT, DEFAULT_POLL_INTERVAL,
    DEFAULT_RETENTION, DEFAULT_STALL_TIMEOUT, DEFAULT_SWEEP_SCHEDULE,
};
pub use error::{Error, Result};
pub use http::install_recorder;
pub use retry::{RetryPolicy, DEFAULT_BASE_DELAY, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_DELAY};
pub use secrets::is_secret_setting;
pub use shutdown::signal;

/// Longest the start-up waits for the broker's first answer; a broker
/// that is merely down is waited for while running instead.
const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping relay waits for librdkafka to settle what it holds.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A relay, configured and ready to run. See the crate documentation.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    metrics: Option<PrometheusHandle>,
}

impl Relay {
    /// A relay with `config`; nothing is checked or connected until
    /// [`run`](Self::run).
    pub fn new(config: RelayConfig) -> Self {
        Relay {
            config,
            metrics: None,
        }
    }

    /// Serves `/metrics` from this Prometheus handle (usually
    /// [`install_recorder`]). Without one, `/metrics` answers 404 and the
    /// relay's metrics go to whatever recorder the process installed.
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Runs the relay until `stop` completes, then finishes the batches in
    /// flight, gives its shards back and returns `Ok(())`.
    ///
    /// Fails at start with a clear [`Error`] when the configuration is
    /// invalid, the database refused the relay ([`Error::DatabaseRefused`]:
    /// password, role, database, TLS) or stayed unreachable for
    /// `config.connect_timeout`, the schema is missing or too old (unless
    /// `config.migrate`), or the broker refused TLS or SASL
    /// ([`Error::BrokerRefused`]). A broker that is merely down is waited
    /// for. Once running, database and
    /// broker outages are logged and retried. It gives its shards back and
    /// returns [`Error::Stalled`] when nothing was acknowledged for
    /// `config.stall_timeout` while messages waited, and
    /// [`Error::ProducerFatal`] when the producer can send nothing more
    /// (fatal error, fenced, epoch or sequence lost): run it under a
    /// supervisor that restarts it. Nothing is lost either way: unmarked
    /// messages are published again.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<()> {
        run(self.config, self.metrics, stop).await
    }
}

/// Creates or upgrades the outbox schema in `config.database_url`, then
/// returns the schema version now applied (`outbox-relay migrate`).
pub async fn migrate(config: &RelayConfig) -> Result<i64> {
    if config.database_url.is_empty() {
        return Err(Error::config("database-url", "is required"));
    }
    let pool = connect(config).await?;
    outbox::migrate(&pool).await?;
    let version = outbox::check_schema(&pool).await?;
    pool.close().await;
    Ok(version)
}

/// Returns dead-lettered messages to pending with a fresh retry budget:
/// those with the given ids, or all of them when `ids` is `None`
/// (`outbox-relay replay-dead`). Returns how many were replayed; they keep
/// their place in their key's order.
pub async fn replay_dead(config: &RelayConfig, ids: Option<&[uuid::Uuid]>) -> Result<u64> {
    let pool = connect(config).await?;
    outbox::check_schema(&pool).await?;
    let replayed = RelayStore::new(pool.clone()).replay_dead(ids).await?;
    pool.close().await;
    Ok(replayed)
}

/// See [`Relay::run`].
async fn run(
    config: RelayConfig,
    metrics: Option<PrometheusHandle>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    config.validate()?;
    let lease_margin = config.lease_margin()?;
    let pool = connect(&config).await?;
    if config.migrate {
        outbox::migrate(&pool).await?;
    }
    let schema = outbox::check_schema(&pool).await?;
    let store = RelayStore::new(pool.clone());
    let publisher = Publisher::new(&config)?;
    publisher
        .check_broker(config.connect_timeout.min(BROKER_CHECK_TIMEOUT))
        .await?;

    let (trigger, shutdown) = shutdown::channel();
    let outage_watch = publisher.watch_outages(shutdown.clone());
    let health = health::Health::default();
    let http_addr = http::serve(
        config.http_listen,
        store.clone(),
        publisher.producer(),
        health.clone(),
        metrics,
        shutdown.clone(),
    )
    .await?;
    let mut scheduler = sweep::start(
        store.clone(),
        &config.sweep_schedule,
        SweepSettings {
            lease: config.lease,
            retention: config.retention,
            cleanup_batch: config.cleanup_batch,
            max_resends: config.max_resends as i32,
            inbox_retention: config.inbox_retention,
        },
    )
    .await?;

    let relay_id = uuid::Uuid::now_v7();
    tracing::info!(
        relay = %relay_id,
        name = %config.name,
        schema,
        brokers = %config.brokers,
        http = %http_addr,
        batch_size = config.batch_size,
        in_flight = config.in_flight,
        wakeup = ?config.wakeup,
        "relay started"
    );
    let mut leases = lease::ShardLeases::new(
        store.clone(),
        relay_id,
        config.name.clone(),
        config.lease,
        config.renew_interval(),
    );
    let waker = wake::Waker::new(pool.clone(), config.wakeup == Wakeup::Notify);
    let settings = publish_loop::LoopSettings {
        batch_size: config.batch_size,
        in_flight: config.in_flight,
        poll_interval: config.poll_interval,
        lease_margin,
        retry: config.retry,
        keep_published: !config.retention.is_zero(),
        max_broker_pause: config.renew_interval(),
    };

    // The loop has a shutdown of its own, so that the watchdog can stop it
    // while the HTTP endpoint keeps answering 503 until the relay exits.
    let outcome = {
        let (loop_trigger, loop_shutdown) = shutdown::channel();
        let parts = publish_loop::Parts {
            store: store.clone(),
            publisher: &publisher,
            leases: &mut leases,
            waker,
            health: health.clone(),
        };
        let publishing = publish_loop::run(parts, settings, loop_shutdown);
        tokio::pin!(publishing);
        tokio::select! {
            outcome = &mut publishing => outcome,
            _ = stop => {
                loop_trigger.trigger();
                publishing.await
            }
            _ = health::watch(health.clone(), config.stall_timeout) => {
                loop_trigger.trigger();
                publishing.await
            }
        }
    };
    if let Err(reason) = &outcome {
        health.set_problem(reason.clone());
    }
    trigger.trigger();
    leases.release().await;
    let _ = outage_watch.await;
    publisher.flush(FLUSH_TIMEOUT);
    let _ = scheduler.shutdown().await;
    pool.close().await;
    if let Err(fatal) = outcome {
        return Err(Error::ProducerFatal(fatal));
    }
    if let Some(reason) = health.stalled() {
        return Err(Error::Stalled(reason));
    }
    tracing::info!("relay stopped");
    Ok(())
}
