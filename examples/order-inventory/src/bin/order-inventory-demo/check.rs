//! The consistency check once everything stopped: the invariants across
//! the two databases and what is on the wire.

use std::collections::{BTreeMap, HashMap};

use order_inventory::Item;
use sqlx::{PgPool, Row};

use crate::wire::wire_counts;
use crate::Args;

/// Orders by status.
pub async fn status_counts(pool: &PgPool) -> anyhow::Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// What the check found.
pub struct Report {
    pub confirmed: i64,
    pub cancelled: i64,
    pub records: usize,
    pub distinct: usize,
    pub invariants: Vec<(String, bool, String)>,
}

/// Checks the invariants of a finished run; `Err` only when a query
/// fails, a broken invariant is a `false` in the report.
pub async fn check(
    args: &Args,
    orders: &PgPool,
    inventory: &PgPool,
    skus: &[String],
    brokers: &str,
    names: &order_inventory::Names,
) -> anyhow::Result<Report> {
    let mut inv = Vec::new();
    let counts = status_counts(orders).await?;
    let confirmed = counts.get("CONFIRMED").copied().unwrap_or(0);
    let cancelled = counts.get("CANCELLED").copied().unwrap_or(0);
    inv.push((
        "every order ended CONFIRMED or CANCELLED".to_string(),
        (confirmed + cancelled) as usize == args.orders,
        format!("({confirmed} + {cancelled} of {})", args.orders),
    ));

    // Reserved stock equals the quantities of confirmed orders (across the
    // two databases).
    let mut wanted: BTreeMap<String, i64> = skus.iter().map(|s| (s.clone(), 0)).collect();
    for row in sqlx::query("SELECT items FROM orders WHERE status = 'CONFIRMED'")
        .fetch_all(orders)
        .await?
    {
        let items: Vec<Item> = serde_json::from_value(row.get("items"))?;
        for i in items {
            *wanted.entry(i.sku).or_default() += i64::from(i.qty);
        }
    }
    let stock: BTreeMap<String, i32> =
        sqlx::query_as::<_, (String, i32)>("SELECT sku, available FROM stock")
            .fetch_all(inventory)
            .await?
            .into_iter()
            .collect();
    let mut mismatches = Vec::new();
    for (sku, qty) in &wanted {
        let reserved = i64::from(args.stock) - i64::from(*stock.get(sku).unwrap_or(&args.stock));
        if reserved != *qty {
            mismatches.push(format!(
                "{sku}: reserved {reserved}, confirmed orders want {qty}"
            ));
        }
    }
    inv.push((
        "stock reserved = quantities of confirmed orders".into(),
        mismatches.is_empty(),
        mismatches.join("; "),
    ));
    let negative = stock.values().filter(|a| **a < 0).count();
    inv.push(("no negative stock".into(), negative == 0, String::new()));

    // Each order affected stock exactly once, and agrees with its decision.
    let decisions: HashMap<uuid::Uuid, String> =
        sqlx::query_as::<_, (uuid::Uuid, String)>("SELECT order_id, status FROM reservation")
            .fetch_all(inventory)
            .await?
            .into_iter()
            .collect();
    let order_rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM orders")
        .fetch_all(orders)
        .await?;
    let disagree = order_rows
        .iter()
        .filter(|(id, status)| {
            let expected = if status == "CONFIRMED" {
                "RESERVED"
            } else {
                "REJECTED"
            };
            decisions.get(id).map(String::as_str) != Some(expected)
        })
        .count();
    inv.push((
        "each order decided exactly once by inventory, matching its status".into(),
        disagree == 0 && decisions.len() == order_rows.len(),
        format!(
            "({} decisions for {} orders, {disagree} disagree)",
            decisions.len(),
            order_rows.len()
        ),
    ));
    let unconfirmed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.message WHERE msg_type = 'OrderPlaced' AND status <> 'completed'",
    )
    .fetch_one(orders)
    .await?;
    inv.push((
        "every OrderPlaced confirmed end to end".into(),
        unconfirmed == 0,
        format!("({unconfirmed} not completed)"),
    ));
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.parked")
        .fetch_one(orders)
        .await?;
    let parked_inv: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.parked")
        .fetch_one(inventory)
        .await?;
    inv.push((
        "no message parked".into(),
        parked + parked_inv == 0,
        format!("({})", parked + parked_inv),
    ));

    let (records, distinct) = wire_counts(brokers, names)?;
    Ok(Report {
        confirmed,
        cancelled,
        records,
        distinct,
        invariants: inv,
    })
}
