//! The order service: `POST /orders` writes the order and its
//! `OrderPlaced` message in one local transaction; replies from the
//! inventory service confirm or cancel it (the compensation), once each,
//! through the inbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use order_inventory::*;
use outbox::kafka::{Handler, HandlerError, InboxConsumer, Received};
use outbox::{Message, Outbox};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/order");

/// How long an OrderPlaced may go without a reply before it is sent again.
const CONFIRM_WITHIN: Duration = Duration::from_secs(20);

#[derive(Parser)]
struct Args {
    /// The order service's own database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// HTTP address.
    #[arg(long, env = "HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// Consumer-group session timeout (see `order_inventory::consumer`).
    #[arg(long, env = "SESSION_TIMEOUT", default_value = DEFAULT_SESSION_TIMEOUT, value_parser = humantime::parse_duration)]
    session_timeout: Duration,
    /// Put in front of the topics' and consumer groups' names, so that
    /// several runs can share one Kafka cluster.
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
}

#[derive(Clone)]
struct App {
    pool: PgPool,
    outbox: Outbox,
    /// Where `OrderPlaced` goes.
    orders_topic: String,
}

#[derive(Deserialize)]
struct NewOrder {
    customer: String,
    items: Vec<Item>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let args = Args::parse();
    let pool = connect(&args.database_url, &MIGRATIONS).await?;
    let names = Names::with_prefix(&args.topic_prefix);
    let replies = Arc::new(InboxConsumer::new(
        pool.clone(),
        consumer(
            &args.brokers,
            &names.group("order-service"),
            &names.inventory_events,
            args.session_timeout,
        )?,
        "order-service",
        Replies,
    ));
    let app = App {
        pool,
        outbox: Outbox::new(),
        orders_topic: names.order_events.clone(),
    };
    let router = Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .with_state(app)
        .merge(probes(replies.clone()));
    let listener = tokio::net::TcpListener::bind(args.http_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "order service listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let mut consumer_stop = stop_rx.clone();
    let consuming = tokio::spawn(async move {
        replies
            .run(async move {
                let _ = consumer_stop.wait_for(|s| *s).await;
            })
            .await
    });
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = consuming.await;
    http.await??;
    Ok(())
}

/// Step 1: the order and its message commit together, or not at all.
async fn place_order(
    State(app): State<App>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<serde_json::Value>), (StatusCode, String)> {
    if order.items.is_empty() || order.items.iter().any(|i| i.qty <= 0) {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "an order needs items with positive quantities".into(),
        ));
    }
    let internal = |e: &dyn std::fmt::Display| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let id = Uuid::now_v7();
    let mut tx = app.pool.begin().await.map_err(|e| internal(&e))?;
    let message = Message::json(
        &app.orders_topic,
        &OrderPlaced {
            order_id: id,
            items: order.items.clone(),
        },
    )
    .map_err(|e| internal(&e))?
    .key(id.to_string())
    .message_type(ORDER_PLACED)
    .confirm_within(CONFIRM_WITHIN);
    let message_id = app
        .outbox
        .enqueue(&mut *tx, message)
        .await
        .map_err(|e| internal(&e))?;
    sqlx::query("INSERT INTO orders (id, customer, items, message_id) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(&order.customer)
        .bind(serde_json::to_value(&order.items).expect("items serialise"))
        .bind(message_id.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| internal(&e))?;
    tx.commit().await.map_err(|e| internal(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "status": "PENDING" })),
    ))
}

async fn get_order(
    State(app): State<App>,
    Path(id): Path<Uuid>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let row = sqlx::query("SELECT customer, items, status, reason FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or((StatusCode::NOT_FOUND, format!("no order {id}")))?;
    Ok(Json(serde_json::json!({
        "id": id,
        "customer": row.get::<String, _>("customer"),
        "items": row.get::<serde_json::Value, _>("items"),
        "status": row.get::<String, _>("status"),
        "reason": row.get::<Option<String>, _>("reason"),
    })))
}

/// Step 3 and 4 on the order side: the inventory's decision confirms the
/// order or cancels it, and completes the original message.
struct Replies;

impl Handler for Replies {
    async fn handle(&self, tx: &mut PgConnection, m: &Received) -> Result<(), HandlerError> {
        let status = match m.message_type.as_deref() {
            Some(STOCK_RESERVED) => "CONFIRMED",
            Some(STOCK_REJECTED) => "CANCELLED",
            other => {
                return Err(HandlerError::Reject(format!(
                    "unknown message type {other:?}"
                )))
            }
        };
        let decision: StockDecision =
            serde_json::from_slice(m.payload.as_deref().unwrap_or_default())
                .map_err(|e| HandlerError::Reject(format!("malformed {status} reply: {e}")))?;
        let updated = sqlx::query(
            "UPDATE orders SET status = $2, reason = $3, decided_at = now() \
             WHERE id = $1 AND status = 'PENDING'",
        )
        .bind(decision.order_id)
        .bind(status)
        .bind(&decision.reason)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tracing::warn!(order = %decision.order_id, "reply for an unknown or already decided order");
        }
        outbox::confirm(&mut *tx, outbox::MessageId(decision.in_reply_to)).await?;
        Ok(())
    }
}
