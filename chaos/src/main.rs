//! `outbox-chaos`: runs three relays against a private PostgreSQL cluster
//! and a broker while a writer commits keyed messages through the library
//! and seeded faults hit everything (relays killed and paused past their
//! lease, the database restarted, the broker paused or restarted). Then it
//! lets the relays drain, reads the topic back from offset 0 with a plain
//! consumer and checks, against what committed: nothing lost, nothing
//! rolled back published, per-key order (first and last occurrences), and
//! no shard stalled behind a live relay.
//!
//! Run it through `scripts/chaos.sh`; see `--help`.

mod backlog;
mod broker;
mod check;
mod cli;
mod faults;
mod pg;
mod reader;
mod relays;
mod report;
mod run;
mod util;
mod watchdog;
mod writer;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cli::Args;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The pools' reconnect warnings during database restarts and
                // librdkafka's end-of-partition "errors" are expected noise.
                .unwrap_or_else(|_| "warn,sqlx=error,rdkafka=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = run::run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
