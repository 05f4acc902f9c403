//! The command line: what `outbox-chaos --help` shows.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::broker::BrokerStorage;

/// Which broker the relays publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// A tansu process.
    Tansu,
    /// librdkafka's mock cluster, hosted in this process, with broker-side
    /// errors injected.
    Mock,
}

/// Chaos harness for outbox-relay: seeded faults, then an independent
/// check of the topic against what committed.
#[derive(Parser, Debug)]
#[command(name = "outbox-chaos", max_term_width = 100)]
pub struct Args {
    /// How long faults are injected, in minutes.
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Seed of the fault schedule and the workload [default: random, printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// The tansu binary.
    #[arg(long, env = "TANSU_BIN", default_value = "tansu")]
    pub tansu_bin: PathBuf,
    /// The outbox-relay binary.
    #[arg(long, default_value = "target/debug/outbox-relay")]
    pub relay_bin: PathBuf,
    /// The broker.
    #[arg(long, value_enum, default_value_t = BrokerKind::Tansu)]
    pub broker: BrokerKind,
    /// tansu's storage: memory (broker faults are pauses) or sqlite
    /// (broker faults are SIGKILL and restart).
    #[arg(long, value_enum, default_value_t = BrokerStorage::Memory)]
    pub broker_storage: BrokerStorage,
    /// Relays running at once.
    #[arg(long, default_value_t = 3)]
    pub relays: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 500)]
    pub keys: u32,
    /// Messages per second the writers aim at.
    #[arg(long, default_value_t = 800)]
    pub rate: u32,
    /// Writer tasks; each owns a share of the keys, so per-key commit
    /// order is still n order.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Share of transactions rolled back on purpose.
    #[arg(long, default_value_t = 0.05)]
    pub rollback_share: f64,
    /// A shard held by a live relay, with due messages, whose oldest one
    /// does not move for longer than this is a stall.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub watchdog: Duration,
    /// Fail when fewer faults ran [default: minutes × 15].
    #[arg(long)]
    pub min_faults: Option<u32>,

    /// Fault kinds to leave out (by their name in the report, e.g.
    /// `broker_pause`), to tell which kind a failure comes with.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// How long the relays get to publish everything after the faults.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Extra argument for every relay (repeatable), after the harness's.
    #[arg(long = "relay-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub relay_args: Vec<String>,
    /// RUST_LOG of the relays.
    #[arg(long, default_value = "info,tokio_cron_scheduler=warn")]
    pub relay_log: String,
    /// Where run folders go.
    #[arg(long, default_value = "target/chaos")]
    pub out_dir: PathBuf,
}
