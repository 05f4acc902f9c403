//! The relay inside your own process instead of as a sidecar (M23).
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! OUTBOX_BROKERS=127.0.0.1:9092 \
//!   cargo run -p outbox-relay --example in_process
//! ```
//!
//! It runs until Ctrl-C, then finishes the batches in flight and gives its
//! shards back. A real service would run it next to its own work, e.g.
//! with `tokio::spawn`, and share one shutdown signal.

use std::process::ExitCode;

use outbox_relay::{Relay, RelayConfig};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter("info,tokio_cron_scheduler=warn")
        .with_writer(std::io::stderr)
        .init();
    let Ok(database_url) = std::env::var("DATABASE_URL") else {
        eprintln!("set DATABASE_URL to the database that holds the outbox schema");
        return ExitCode::FAILURE;
    };
    let mut config = RelayConfig::new(database_url);
    if let Ok(brokers) = std::env::var("OUTBOX_BROKERS") {
        config.brokers = brokers;
    }
    // Only locally: the host application serves its own endpoints.
    config.http_listen = ([127, 0, 0, 1], 0).into();
    config.migrate = true;
    let relay = Relay::new(config).with_metrics(outbox_relay::install_recorder());
    match relay.run(outbox_relay::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
