//! The order/inventory example: shared event types and plumbing.
//!
//! The order service writes an order and its `OrderPlaced` message in one
//! transaction; its relay publishes it; the inventory service consumes it
//! through its inbox and, in one transaction, reserves the stock (or
//! rejects the order) and writes `StockReserved` / `StockRejected` to its
//! own outbox; its relay publishes that; the order service consumes the
//! reply through its inbox, confirms or cancels the order (the
//! compensation), and confirms the original message end to end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use outbox::kafka::{Handler, InboxConsumer};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

/// Topic of the order service's events.
pub const ORDER_EVENTS: &str = "order-events";
/// Topic of the inventory service's events.
pub const INVENTORY_EVENTS: &str = "inventory-events";

/// The topics and consumer groups of one deployment of the flow. A
/// prefix (the services' `--topic-prefix`) keeps two runs on one Kafka
/// cluster apart: each has its own topics and groups, so neither reads
/// the other's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The order service's events ([`ORDER_EVENTS`], prefixed).
    pub order_events: String,
    /// The inventory service's events ([`INVENTORY_EVENTS`], prefixed).
    pub inventory_events: String,
    /// The prefix itself, for the consumer groups' names.
    prefix: String,
}

impl Names {
    /// The names with `prefix` in front (empty: the plain names).
    pub fn with_prefix(prefix: &str) -> Self {
        Names {
            order_events: format!("{prefix}{ORDER_EVENTS}"),
            inventory_events: format!("{prefix}{INVENTORY_EVENTS}"),
            prefix: prefix.to_owned(),
        }
    }

    /// The consumer group of `service`.
    pub fn group(&self, service: &str) -> String {
        format!("{}{service}", self.prefix)
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Product.
    pub sku: String,
    /// How many.
    pub qty: i32,
}

/// `OrderPlaced`, from the order service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: Uuid,
    /// What to reserve.
    pub items: Vec<Item>,
}

/// `StockReserved` or `StockRejected`, from the inventory service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockDecision {
    /// The order.
    pub order_id: Uuid,
    /// The `OrderPlaced` message this answers (for end-to-end confirmation).
    pub in_reply_to: Uuid,
    /// Why it was rejected, when it was.
    pub reason: Option<String>,
}

/// Message type of [`OrderPlaced`].
pub const ORDER_PLACED: &str = "OrderPlaced";
/// Message type of a positive [`StockDecision`].
pub const STOCK_RESERVED: &str = "StockReserved";
/// Message type of a negative [`StockDecision`].
pub const STOCK_REJECTED: &str = "StockRejected";

/// Connects and applies both the outbox schema and the service's own
/// migrations (each kept in its own history table, so they never clash).
pub async fn connect(url: &str, migrator: &sqlx::migrate::Migrator) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    outbox::migrate(&pool).await?;
    migrator.run(&pool).await?;
    Ok(pool)
}

/// Default of the services' `--session-timeout`. Apache Kafka accepts 6 s
/// to 5 min (`group.min.session.timeout.ms`, `group.max.session.timeout.ms`).
pub const DEFAULT_SESSION_TIMEOUT: &str = "10s";

/// A consumer in group `group`, subscribed to `topic`, committing offsets
/// itself (after the database). `session_timeout` is how long the group
/// waits for a consumer that went silent (crashed) before it rebalances
/// without it.
pub fn consumer(
    brokers: &str,
    group: &str,
    topic: &str,
    session_timeout: Duration,
) -> anyhow::Result<StreamConsumer> {
    let mut config = ClientConfig::new();
    // librdkafka's own debug contexts (e.g. KAFKA_DEBUG=cgrp), when asked for.
    if let Ok(contexts) = std::env::var("KAFKA_DEBUG") {
        config.set("debug", contexts);
    }
    let c: StreamConsumer = config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        // Three heartbeats per session, as librdkafka's defaults have it.
        .set(
            "heartbeat.interval.ms",
            (session_timeout.as_millis() / 3).max(100).to_string(),
        )
        // Static membership (KIP-345): on Apache Kafka a restarted
        // instance takes its predecessor's place at once instead of
        // waiting for the broker to notice the old session died. The mock
        // cluster and tansu rebalance instead (docs/demo.md).
        .set("group.instance.id", format!("{group}-1"))
        .create()?;
    c.subscribe(&[topic])?;
    Ok(c)
}

/// A consumer's counters as the services' `/stats` endpoints report them.
pub fn stats_json(s: &outbox::kafka::ConsumerStats) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    serde_json::json!({
        "processed": s.processed.load(Relaxed),
        "duplicates": s.duplicates.load(Relaxed),
        "parked": s.parked.load(Relaxed),
        "retries": s.retries.load(Relaxed),
    })
}

/// The HTTP routes both services share: `GET /healthz` (the process is
/// up), `GET /ready` (200 once its consumer has partitions assigned, so it
/// has joined its group and will receive messages; 503 before) and
/// `GET /stats` (the consumer's counters, [`stats_json`]).
pub fn probes<H: Handler + 'static>(consumer: Arc<InboxConsumer<H>>) -> Router {
    let stats = consumer.stats();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/ready",
            get(move || {
                let assigned = consumer.assigned_partitions();
                async move {
                    if assigned > 0 {
                        (StatusCode::OK, format!("consuming {assigned} partitions\n"))
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "waiting for the consumer group to assign partitions\n".into(),
                        )
                    }
                }
            }),
        )
        .route(
            "/stats",
            get(move || async move { Json(stats_json(&stats)) }),
        )
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
