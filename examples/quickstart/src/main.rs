//! Quick start: the four steps, watched from both ends.
//!
//! Each order is written with its `OrderPlaced` message in one local
//! transaction (step 1). `outbox-relay`, running beside this program,
//! publishes the message to Kafka and marks it published (steps 2 and 3);
//! this program consumes the topic with a plain Kafka consumer and prints
//! every message as it arrives, with the time from commit to arrival.
//! Delivery is at least once: a consumer de-duplicates on the `outbox-id`
//! header, as this one does when it counts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use outbox::{Message, Outbox};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::ClientConfig;
use sqlx::postgres::PgPoolOptions;

/// Places orders through the outbox and watches their messages arrive.
#[derive(Parser)]
struct Args {
    /// Database with the outbox schema (run `outbox-relay migrate` first).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "localhost:9092")]
    brokers: String,
    /// Topic to write to.
    #[arg(long, default_value = "orders")]
    topic: String,
    /// Orders to place.
    #[arg(long, default_value_t = 30)]
    count: usize,
    /// Orders per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Give up waiting for messages after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database_url)
        .await
        .context("connecting to the database")?;
    outbox::check_schema(&pool).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS quickstart_order \
         (id uuid PRIMARY KEY, sku text NOT NULL, qty int NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("quickstart-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        // Latency is what this program shows; do not let the broker hold
        // fetches for librdkafka's default 500 ms.
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    // Wait for the partition assignment, so no message slips past "latest".
    let assigned = Instant::now();
    while consumer.assignment()?.count() == 0 {
        if assigned.elapsed() > Duration::from_secs(30) {
            bail!("no partition of {} was assigned within 30s", args.topic);
        }
        tokio::select! {
            _ = consumer.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }

    let outbox = Outbox::new();
    let mut committed: HashMap<String, Instant> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut latencies = Vec::new();
    let mut duplicates = 0;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let mut next_order = tokio::time::interval(period);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut placed = 0;

    println!(
        "placing {} orders at {}/s on topic {:?}",
        args.count, args.rate, args.topic
    );
    while seen.len() < args.count {
        tokio::select! {
            _ = next_order.tick(), if placed < args.count => {
                let order = uuid::Uuid::now_v7();
                let sku = format!("SKU-{}", placed % 7);
                // Step 1: the order row and its message, one transaction.
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO quickstart_order (id, sku, qty) VALUES ($1, $2, $3)")
                    .bind(order).bind(&sku).bind(1 + (placed % 3) as i32)
                    .execute(&mut *tx).await?;
                let id = outbox.enqueue(
                    &mut *tx,
                    Message::json(&args.topic, &serde_json::json!({"order": order, "sku": sku}))?
                        .key(sku.clone())
                        .message_type("OrderPlaced"),
                ).await?;
                tx.commit().await?;
                committed.insert(id.to_string(), Instant::now());
                placed += 1;
            }
            received = consumer.recv() => {
                let m = received?;
                let id = m.headers().and_then(|h| h.iter().find(|h| h.key == outbox::headers::ID))
                    .and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                if !seen.insert(id.clone()) {
                    duplicates += 1;
                    continue;
                }
                let latency = committed.get(&id).map(|t| t.elapsed());
                if let Some(l) = latency { latencies.push(l); }
                println!(
                    "received {:>3}/{}  key={:<6} partition={} offset={:<4} commit->consumed={}",
                    seen.len(), args.count,
                    String::from_utf8_lossy(m.key().unwrap_or_default()),
                    m.partition(), m.offset(),
                    latency.map(|l| format!("{:.1}ms", l.as_secs_f64() * 1e3)).unwrap_or("?".into()),
                );
            }
            _ = tokio::time::sleep_until(deadline) => {
                bail!("only {} of {} messages arrived within {}s: is outbox-relay running?", seen.len(), args.count, args.timeout_secs);
            }
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "all {} messages arrived ({} duplicates absorbed); commit->consumed p50 {:.1}ms, p99 {:.1}ms",
        args.count,
        duplicates,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
