//! The inventory service: consumes `OrderPlaced` through its inbox and, in
//! one local transaction, reserves the stock (or rejects the order when it
//! is short) and writes its reply to its own outbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use order_inventory::*;
use outbox::kafka::{Handler, HandlerError, InboxConsumer, Received};
use outbox::{Message, Outbox};
use sqlx::{PgConnection, PgPool};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/inventory");

#[derive(Parser)]
struct Args {
    /// The inventory service's own database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// HTTP address (stock and consumer statistics).
    #[arg(long, env = "HTTP_LISTEN", default_value = "127.0.0.1:8081")]
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let args = Args::parse();
    let pool = connect(&args.database_url, &MIGRATIONS).await?;
    let names = Names::with_prefix(&args.topic_prefix);
    let orders = Arc::new(InboxConsumer::new(
        pool.clone(),
        consumer(
            &args.brokers,
            &names.group("inventory-service"),
            &names.order_events,
            args.session_timeout,
        )?,
        "inventory-service",
        Reserve {
            outbox: Outbox::new(),
            replies: names.inventory_events.clone(),
        },
    ));
    let app = App { pool };
    let router = Router::new()
        .route("/stock", get(stock))
        .with_state(app)
        .merge(probes(orders.clone()));
    let listener = tokio::net::TcpListener::bind(args.http_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "inventory service listening");
    let http = tokio::spawn(async move { axum::serve(listener, router).await });
    orders.run(shutdown_signal()).await;
    http.abort();
    Ok(())
}

async fn stock(State(app): State<App>) -> Json<serde_json::Value> {
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT sku, available FROM stock ORDER BY sku")
        .fetch_all(&app.pool)
        .await
        .unwrap_or_default();
    Json(serde_json::json!(rows
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>(
    )))
}

/// Step 2 on the inventory side.
struct Reserve {
    outbox: Outbox,
    /// The topic of the replies.
    replies: String,
}

impl Handler for Reserve {
    async fn handle(&self, tx: &mut PgConnection, m: &Received) -> Result<(), HandlerError> {
        if m.message_type.as_deref() != Some(ORDER_PLACED) {
            return Err(HandlerError::Reject(format!(
                "unknown message type {:?}",
                m.message_type
            )));
        }
        let order: OrderPlaced =
            serde_json::from_slice(m.payload.as_deref().unwrap_or_default())
                .map_err(|e| HandlerError::Reject(format!("malformed OrderPlaced: {e}")))?;
        if order.items.is_empty() || order.items.iter().any(|i| i.qty <= 0) {
            return Err(HandlerError::Reject(
                "OrderPlaced without positive quantities".into(),
            ));
        }

        // Lock the rows in a fixed order so concurrent orders cannot deadlock.
        let mut items = order.items.clone();
        items.sort_by(|a, b| a.sku.cmp(&b.sku));
        let mut short = None;
        for item in &items {
            let available: Option<i32> =
                sqlx::query_scalar("SELECT available FROM stock WHERE sku = $1 FOR UPDATE")
                    .bind(&item.sku)
                    .fetch_optional(&mut *tx)
                    .await?;
            match available {
                Some(a) if a >= item.qty => {}
                Some(a) => {
                    short.get_or_insert(format!("{}: {} wanted, {} left", item.sku, item.qty, a));
                }
                None => {
                    short.get_or_insert(format!("{}: unknown product", item.sku));
                }
            }
        }
        if short.is_none() {
            for item in &items {
                sqlx::query("UPDATE stock SET available = available - $2 WHERE sku = $1")
                    .bind(&item.sku)
                    .bind(item.qty)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let status = if short.is_none() {
            "RESERVED"
        } else {
            "REJECTED"
        };
        sqlx::query("INSERT INTO reservation (order_id, items, status) VALUES ($1, $2, $3)")
            .bind(order.order_id)
            .bind(serde_json::to_value(&order.items).expect("items serialise"))
            .bind(status)
            .execute(&mut *tx)
            .await?;
        let reply = StockDecision {
            order_id: order.order_id,
            in_reply_to: m.id.0,
            reason: short.clone(),
        };
        let message_type = if short.is_none() {
            STOCK_RESERVED
        } else {
            STOCK_REJECTED
        };
        self.outbox
            .enqueue(
                &mut *tx,
                Message::json(&self.replies, &reply)?
                    .key(order.order_id.to_string())
                    .message_type(message_type),
            )
            .await?;
        Ok(())
    }
}
