//! `outbox-relay`: the daemon. See `outbox-relay --help`.

mod cli;
mod healthcheck;

use std::process::ExitCode;

use cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,tokio_cron_scheduler=warn,sqlx::postgres::notice=warn")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    // One thread for the relay's own work; librdkafka has threads of its
    // own. The publish loop is a chain of short steps, each woken by the
    // last (a notification, a fetch's rows, a delivery report): on a
    // multi-thread runtime each wake-up was a hand-off between threads,
    // 14 context switches a message at 1,000 msg/s against 9 on one
    // thread. With another process holding a core, the p99
    // commit-to-consumed latency was 31-34 ms there and 24-36 ms here in
    // the same evening's runs (docs/benchmarks.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let config = match cli.settings.resolve() {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(Command::Healthcheck) = cli.command {
        return match healthcheck::probe(config.http_listen) {
            Ok(body) => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Err(reason) => fail(&reason),
        };
    }
    let outcome = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => {
                outbox_relay::Relay::new(config)
                    .with_metrics(outbox_relay::install_recorder())
                    .run(outbox_relay::signal())
                    .await
            }
            Command::Migrate => {
                let version = outbox_relay::migrate(&config).await?;
                println!("outbox schema is at version {version}");
                Ok(())
            }
            Command::Healthcheck => unreachable!("answered above"),
            Command::ReplayDead { all, ids } => {
                let ids = if all { None } else { Some(ids.as_slice()) };
                let n = outbox_relay::replay_dead(&config, ids).await?;
                println!("replayed {n} dead message(s)");
                Ok(())
            }
        }
    });
    // A start-up broker check may still wait in librdkafka on a blocking
    // thread (up to its timeout); the answer is known, so do not wait.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("outbox-relay: error: {message}");
    ExitCode::FAILURE
}
