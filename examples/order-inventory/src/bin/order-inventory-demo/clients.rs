//! The clients placing orders through the order service's HTTP API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use order_inventory::Item;
use outbox_testkit::http_request;
use rand::Rng;
use tokio::task::JoinHandle;

use crate::Args;

/// Starts `--concurrency` clients that place `--orders` orders in all at
/// `--rate`, each of one or two random products from `skus`, through
/// `POST http://ADDR/orders`; a rejected or failed request is retried
/// until it is accepted. Returns the count of orders accepted so far and
/// the clients' tasks.
pub fn start(args: &Args, addr: &str, skus: &[String]) -> (Arc<AtomicUsize>, Vec<JoinHandle<()>>) {
    let placed = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (placed, next, skus, addr, total) = (
            placed.clone(),
            next.clone(),
            skus.to_vec(),
            addr.to_owned(),
            args.orders,
        );
        let pace = Duration::from_secs_f64(args.concurrency as f64 / args.rate.max(0.1));
        clients.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(pace);
            while next.fetch_add(1, Ordering::SeqCst) < total {
                tick.tick().await;
                let items: Vec<Item> = {
                    let mut rng = rand::rng();
                    let n = rng.random_range(1..=2);
                    let mut chosen: Vec<&String> = Vec::new();
                    while chosen.len() < n {
                        let s = &skus[rng.random_range(0..skus.len())];
                        if !chosen.contains(&s) {
                            chosen.push(s);
                        }
                    }
                    chosen
                        .into_iter()
                        .map(|s| Item {
                            sku: s.clone(),
                            qty: rng.random_range(1..=4),
                        })
                        .collect()
                };
                let body = serde_json::json!({ "customer": "demo", "items": items }).to_string();
                loop {
                    match http_request(&addr, "POST", "/orders", Some(&body)).await {
                        Ok((201, _)) => break,
                        Ok((status, b)) => eprintln!("order rejected ({status}): {b}; retrying"),
                        Err(e) => eprintln!("order service unreachable: {e}; retrying"),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                placed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    (placed, clients)
}
