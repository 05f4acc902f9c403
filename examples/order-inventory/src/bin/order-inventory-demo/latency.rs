//! How fast the flow was, from the timestamps the two databases already
//! hold: when each order was placed, when its `OrderPlaced` was
//! acknowledged by the broker, when inventory decided on it, when the
//! reply was acknowledged, and when the order was confirmed or cancelled.
//! All are PostgreSQL `now()` values of one server (the two databases
//! share it), so they are on one clock; each is its transaction's start.

use std::collections::HashMap;

use sqlx::PgPool;
use uuid::Uuid;

/// The milestones of one order, in seconds since the Unix epoch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Milestones {
    /// The order and its message committed.
    pub placed: f64,
    /// The relay marked `OrderPlaced` published (the broker acknowledged it).
    pub published: Option<f64>,
    /// Inventory reserved or rejected the stock.
    pub consumed: Option<f64>,
    /// The relay marked the reply published.
    pub replied: Option<f64>,
    /// The order service confirmed or cancelled the order.
    pub decided: Option<f64>,
}

/// Reads every order's milestones.
pub async fn milestones(
    orders: &PgPool,
    inventory: &PgPool,
) -> anyhow::Result<HashMap<Uuid, Milestones>> {
    type OrderRow = (Uuid, f64, Option<f64>, Option<f64>);
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT o.id, extract(epoch FROM o.created_at)::float8, \
                extract(epoch FROM m.published_at)::float8, \
                extract(epoch FROM o.decided_at)::float8 \
         FROM orders o LEFT JOIN outbox.message m ON m.id = o.message_id",
    )
    .fetch_all(orders)
    .await?;
    let mut all: HashMap<Uuid, Milestones> = rows
        .into_iter()
        .map(|(id, placed, published, decided)| {
            let m = Milestones {
                placed,
                published,
                decided,
                ..Milestones::default()
            };
            (id, m)
        })
        .collect();
    // The reply is keyed by the order id (inventory-service's `.key(…)`).
    let replies: Vec<(Uuid, f64, Option<f64>)> = sqlx::query_as(
        "SELECT r.order_id, extract(epoch FROM r.decided_at)::float8, \
                extract(epoch FROM min(m.published_at))::float8 \
         FROM reservation r \
         LEFT JOIN outbox.message m \
           ON m.msg_key = convert_to(r.order_id::text, 'UTF8') \
          AND m.msg_type IN ('StockReserved', 'StockRejected') \
         GROUP BY r.order_id, r.decided_at",
    )
    .fetch_all(inventory)
    .await?;
    for (id, consumed, replied) in replies {
        if let Some(m) = all.get_mut(&id) {
            m.consumed = Some(consumed);
            m.replied = replied;
        }
    }
    Ok(all)
}

/// p50, p99 and max of a set of durations (milliseconds); `None` when empty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// How many values.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (in any order).
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Spread {
            n: values.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: values[values.len() - 1],
        })
    }

    /// `p50 / p99 / max` in milliseconds.
    pub fn cells(&self) -> String {
        format!("{:.0} | {:.0} | {:.0}", self.p50, self.p99, self.max)
    }
}

/// Milliseconds from placed to the milestone `pick` chooses, over `orders`.
pub fn since_placed<'a>(
    orders: impl Iterator<Item = &'a Milestones>,
    pick: impl Fn(&Milestones) -> Option<f64>,
) -> Option<Spread> {
    Spread::of(
        orders
            .filter_map(|m| pick(m).map(|t| (t - m.placed) * 1000.0))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Spread::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        let one = Spread::of(vec![7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert!(Spread::of(Vec::new()).is_none());
    }

    #[test]
    fn measures_from_placed_and_skips_missing_milestones() {
        let a = Milestones {
            placed: 10.0,
            decided: Some(10.25),
            ..Milestones::default()
        };
        let b = Milestones {
            placed: 11.0,
            ..Milestones::default()
        };
        let s = since_placed([a, b].iter(), |m| m.decided).unwrap();
        assert_eq!((s.n, s.max), (1, 250.0));
    }
}
