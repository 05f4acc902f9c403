use std::time::{Duration, Instant};

use sqlx::{MySqlPool, PgPool, Row};
use uuid::Uuid;

use crate::{Error, Result};

/// The outbox variant of placing an order: one local transaction on the
/// orders database inserts the order and enqueues `OrderPlaced` (topic
/// `orders`) with [`outbox::Outbox::enqueue`]. Needs `outbox::migrate` on
/// the orders database. Stock is reserved later by a consumer
/// ([`StockApplier`]). Not safe to retry with the same `order_id` (the
/// insert fails on the primary key, which is the de-duplication).
pub async fn place_order_outbox(
    orders: &PgPool,
    outbox: &outbox::Outbox,
    order_id: Uuid,
    sku: &str,
    qty: i32,
) -> Result<()> {
    let mut tx = orders.begin().await.map_err(Error::db("orders"))?;
    sqlx::query("INSERT INTO orders (id, sku, qty) VALUES ($1, $2, $3)")
        .bind(order_id)
        .bind(sku)
        .bind(qty)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("orders"))?;
    let message = outbox::Message::json(
        "orders",
        &serde_json::json!({ "order": order_id, "sku": sku, "qty": qty }),
    )?
    .key(sku)
    .message_type("OrderPlaced");
    outbox.enqueue(&mut *tx, message).await?;
    tx.commit().await.map_err(Error::db("orders"))?;
    Ok(())
}

/// A stand-in for the inventory service's consumer in the comparison: it
/// reads pending `OrderPlaced` rows straight from `outbox.message` (no
/// relay, no Kafka) and applies each in its own local transaction on the
/// inventory database, de-duplicated by the `reservation` primary key.
#[derive(Debug, Clone)]
pub struct StockApplier {
    orders: PgPool,
    inventory: MySqlPool,
}

/// One order whose stock the applier reserved.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// The order.
    pub order_id: Uuid,
    /// When the inventory transaction committed.
    pub reserved_at: Instant,
    /// From the stock `UPDATE` returning to the local commit returning.
    pub lock_held: Duration,
    /// False when the stock was short (nothing reserved).
    pub reserved: bool,
}

impl StockApplier {
    /// An applier from the outbox in `orders` to the stock in `inventory`.
    pub fn new(orders: PgPool, inventory: MySqlPool) -> Self {
        StockApplier { orders, inventory }
    }

    /// Applies up to `limit` pending messages (oldest first) and marks them
    /// published. A crash in between re-applies nothing: the reservation
    /// row is the inbox. Returns what it applied (empty when idle).
    pub async fn apply_batch(&self, limit: i64) -> Result<Vec<Applied>> {
        let mut tx = self.orders.begin().await.map_err(Error::db("orders"))?;
        let rows = sqlx::query(
            "SELECT seq, payload FROM outbox.message
             WHERE status = 'pending' AND msg_type = 'OrderPlaced'
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::db("orders"))?;
        let mut applied = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.get(0);
            let payload: Vec<u8> = row.get(1);
            seqs.push(seq);
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                continue;
            };
            let (Some(order_id), Some(sku), Some(qty)) = (
                v["order"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
                v["sku"].as_str(),
                v["qty"].as_i64(),
            ) else {
                continue;
            };
            if let Some(a) = self.apply_one(order_id, sku, qty as i32).await? {
                applied.push(a);
            }
        }
        sqlx::query("UPDATE outbox.message SET status = 'published', published_at = now() WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("orders"))?;
        tx.commit().await.map_err(Error::db("orders"))?;
        Ok(applied)
    }

    async fn apply_one(&self, order_id: Uuid, sku: &str, qty: i32) -> Result<Option<Applied>> {
        let err = Error::db("inventory");
        let mut tx = self.inventory.begin().await.map_err(err)?;
        let fresh =
            sqlx::query("INSERT IGNORE INTO reservation (order_id, sku, qty) VALUES (?, ?, ?)")
                .bind(order_id.to_string())
                .bind(sku)
                .bind(qty)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("inventory"))?
                .rows_affected();
        if fresh == 0 {
            return Ok(None); // a duplicate: applied before
        }
        let update = sqlx::query("UPDATE stock SET available = available - ? WHERE sku = ?")
            .bind(qty)
            .bind(sku)
            .execute(&mut *tx)
            .await;
        let locked_at = Instant::now();
        match update {
            Ok(_) => {
                tx.commit().await.map_err(Error::db("inventory"))?;
                let now = Instant::now();
                Ok(Some(Applied {
                    order_id,
                    reserved_at: now,
                    lock_held: now - locked_at,
                    reserved: true,
                }))
            }
            // Short stock (the CHECK): nothing reserved; a real service
            // would record the rejection and reply.
            Err(_) => {
                tx.rollback().await.map_err(Error::db("inventory"))?;
                Ok(Some(Applied {
                    order_id,
                    reserved_at: Instant::now(),
                    lock_held: Duration::ZERO,
                    reserved: false,
                }))
            }
        }
    }
}
