//! The command line, and the sizes and durations it sets for this run.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Measures outbox-relay against the broker's and the database's own
/// limits, in one run; writes target/bench/report.{md,json}.
#[derive(Parser)]
#[command(name = "outbox-bench", max_term_width = 100, args_override_self = true)]
pub struct Args {
    /// Any database of the PostgreSQL server to use; the benchmark creates
    /// and drops its own databases (outbox_bench_*) next to it.
    #[arg(
        long,
        env = "OUTBOX_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "OUTBOX_BENCH_BROKERS")]
    pub brokers: String,
    /// The outbox-relay binary (build it with --release).
    #[arg(long, default_value = "target/release/outbox-relay")]
    pub relay_bin: PathBuf,
    /// Small sizes and short durations (about a minute), for CI.
    #[arg(long)]
    pub smoke: bool,
    /// Backlog size for the ceiling, the drain and the table health.
    /// [default: 1000000, smoke: 5000]
    #[arg(long)]
    pub messages: Option<u64>,
    /// The small backlog the memory comparison drains. [default: messages / 10]
    #[arg(long)]
    pub small_messages: Option<u64>,
    /// Seconds each latency run lasts. [default: 10, smoke: 1.5]
    #[arg(long)]
    pub latency_secs: Option<f64>,
    /// Steady rates (messages/s) for the latency runs.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    pub latency_rates: Vec<u32>,
    /// Times each latency run (and its broker-alone probe) is repeated;
    /// the report gives the median and the spread. [default: 3, smoke: 1]
    #[arg(long)]
    pub latency_repeats: Option<u32>,
    /// Rates measured a second time with a busy loop holding one core
    /// (the relay, PostgreSQL and the broker then share what is left).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub hog_rates: Vec<u32>,
    /// Skip the runs with the busy loop.
    #[arg(long)]
    pub no_hog: bool,
    /// The relay's wake-up modes measured for latency.
    #[arg(long, value_delimiter = ',', default_value = "notify,poll")]
    pub wakeups: Vec<Wakeup>,
    /// Seconds each variant of the write-overhead comparison runs.
    /// [default: 15, smoke: 2]
    #[arg(long)]
    pub overhead_secs: Option<f64>,
    /// Highest transaction rate of the latency load: above it, a
    /// transaction carries several messages (5,000 msg/s at the default
    /// are 1,000 transactions of 5).
    #[arg(long, default_value_t = 1000)]
    pub latency_max_tps: u32,
    /// Concurrent clients for the write overhead and the latency load.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Partitions of every topic the benchmark creates.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Run only these measurements (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// An extra flag for every relay started, e.g. --relay-arg=--batch-size=2000.
    /// Repeatable.
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,
    /// RUST_LOG for the relays (their logs go to OUT_DIR/logs), e.g.
    /// outbox_relay=debug to log every batch's timing.
    #[arg(long)]
    pub relay_log: Option<String>,
    /// Where the report and the relay logs go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    /// Keep the benchmark's databases instead of dropping them.
    #[arg(long)]
    pub keep_databases: bool,
}

/// The measurements, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// (1) Raw producer throughput.
    Ceiling,
    /// (2) Relay throughput draining the backlog.
    Drain,
    /// (2, isolated) The drain's two parties: the relay's statements with
    /// no broker, and the raw producer beside them.
    Limits,
    /// (3) Write overhead.
    Overhead,
    /// (4) Commit-to-consumed latency.
    Latency,
    /// (5) Relay peak memory, small vs large backlog.
    Memory,
    /// (6) Table and index size.
    Health,
}

/// A relay `--wakeup` mode, for `--wakeups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Wakeup {
    /// LISTEN/NOTIFY, polling as the fallback.
    Notify,
    /// Polling only.
    Poll,
}

impl Wakeup {
    /// The relay's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Wakeup::Notify => "notify",
            Wakeup::Poll => "poll",
        }
    }
}

/// Sizes and durations of this run.
pub struct Plan {
    /// `--smoke`.
    pub smoke: bool,
    /// The backlog of the ceiling, the drain and the table health.
    pub messages: u64,
    /// The small backlog of the memory comparison.
    pub small: u64,
    /// Seconds each latency run lasts.
    pub latency_secs: f64,
    /// Seconds each write-overhead variant runs.
    pub overhead_secs: f64,
    /// Repeats of each latency run.
    pub latency_repeats: u32,
}

impl Plan {
    /// The sizes and durations `args` ask for, the rest by mode (smoke or
    /// full).
    pub fn new(args: &Args) -> Plan {
        let plan = Plan {
            smoke: args.smoke,
            messages: args
                .messages
                .unwrap_or(if args.smoke { 5_000 } else { 1_000_000 }),
            small: 0,
            latency_secs: args
                .latency_secs
                .unwrap_or(if args.smoke { 1.5 } else { 10.0 }),
            overhead_secs: args
                .overhead_secs
                .unwrap_or(if args.smoke { 2.0 } else { 15.0 }),
            latency_repeats: args
                .latency_repeats
                .unwrap_or(if args.smoke { 1 } else { 3 })
                .max(1),
        };
        Plan {
            small: args.small_messages.unwrap_or(plan.messages / 10).max(1),
            ..plan
        }
    }
}
