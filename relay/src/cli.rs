//! Flags, environment variables and the TOML config file, merged into a
//! [`RelayConfig`]. A flag beats its environment variable (clap), which
//! beats the file, which beats the built-in default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use outbox_relay::RetryPolicy;
use outbox_relay::{Error, RelayConfig, Wakeup};
use serde::Deserialize;

/// Publishes committed outbox messages to Kafka, in commit order per key,
/// at least once; sweeps the outbox table on a schedule.
///
/// Every option can also be set with the environment variable shown, or in
/// the TOML file given by --config (keys are the option names with `_`
/// for `-`, plus a [kafka] table of librdkafka settings). Flags beat the
/// environment, which beats the file.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: Settings,

    /// Log format.
    #[arg(long, global = true, env = "OUTBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages until SIGTERM or SIGINT (the default).
    Run,
    /// Create or upgrade the outbox schema, then exit.
    Migrate,
    /// Ask the relay listening on --http-listen for /healthz; exit 0 when
    /// it answers 200 (a container HEALTHCHECK without curl).
    Healthcheck,
    /// Return dead-lettered messages to pending with a fresh retry budget.
    ReplayDead {
        /// Replay every dead message.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Ids of the messages to replay.
        #[arg(required_unless_present = "all")]
        ids: Vec<uuid::Uuid>,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How an idle relay is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeupArg {
    /// LISTEN/NOTIFY, with polling as the fallback.
    Notify,
    /// Polling only.
    Poll,
}

/// The relay's settings; each is optional here so the sources can be merged.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML config file.
    #[arg(long, global = true, env = "OUTBOX_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// PostgreSQL URL of the database with the outbox schema. Required.
    /// TLS: add sslmode=require, verify-ca or verify-full, with
    /// sslrootcert=CA-FILE (and sslcert/sslkey for client certificates).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Kafka bootstrap servers, comma-separated. [default: localhost:9092]
    #[arg(long, global = true, env = "OUTBOX_BROKERS")]
    pub brokers: Option<String>,

    /// A librdkafka producer setting KEY=VALUE, applied over the relay's
    /// defaults (enable.idempotence=true, acks=all, message.timeout.ms=0 (never),
    /// linger.ms=1, partitioner=murmur2_random). Repeatable; the value is
    /// taken whole, commas included (debug=broker,topic). In the file, a
    /// [kafka] table. In the environment, OUTBOX_KAFKA holds several,
    /// separated by commas: a comma starts a new setting only when KEY=
    /// follows it, and `\,` is a literal comma. Secret values
    /// (sasl.password, ssl.key.password, ...) are never logged.
    #[arg(
        long = "kafka",
        global = true,
        env = "OUTBOX_KAFKA",
        hide_env_values = true,
        value_name = "KEY=VALUE"
    )]
    #[serde(skip)]
    pub kafka_args: Vec<String>,

    /// Whether `kafka_args` came from `OUTBOX_KAFKA` (one value, to be
    /// split) rather than from flags (each taken whole).
    #[arg(skip)]
    #[serde(skip)]
    pub kafka_from_env: bool,

    #[arg(skip)]
    #[serde(default, rename = "kafka")]
    pub kafka_table: BTreeMap<String, toml::Value>,

    /// Messages fetched, published and marked together (1..=10000). [default: 1000]
    #[arg(long, global = true, env = "OUTBOX_BATCH_SIZE")]
    pub batch_size: Option<usize>,

    /// Batches on the wire at once, awaiting their acknowledgements (1..=32). [default: 4]
    #[arg(long, global = true, env = "OUTBOX_IN_FLIGHT")]
    pub in_flight: Option<usize>,

    /// Longest an idle relay waits before looking again. [default: 1s]
    #[arg(long, global = true, env = "OUTBOX_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub poll_interval: Option<Duration>,

    /// How an idle relay learns of new messages. [default: notify]
    #[arg(long, global = true, env = "OUTBOX_WAKEUP", value_enum)]
    pub wakeup: Option<WakeupArg>,

    /// Shard lease: how long a relay holds its share of keys without
    /// renewing; a crashed relay's keys resume after at most this long.
    /// At least 3s; with a finite message.timeout.ms, more than
    /// 1.5 x (message.timeout.ms + 1s). [default: 30s]
    #[arg(long, global = true, env = "OUTBOX_LEASE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub lease: Option<Duration>,

    /// Failed attempts before a message the broker will never accept is
    /// dead-lettered. [default: 10]
    #[arg(long, global = true, env = "OUTBOX_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,

    /// Times a message whose end-to-end confirmation (confirm_within) is
    /// overdue is sent again before it is dead-lettered; 0 dead-letters it
    /// at the first missed deadline (0..=1000). [default: 10]
    #[arg(long, global = true, env = "OUTBOX_MAX_RESENDS")]
    pub max_resends: Option<u32>,

    /// Retry delay after the first failure; doubles per attempt, with
    /// jitter. [default: 1s]
    #[arg(long, global = true, env = "OUTBOX_BACKOFF_BASE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub backoff_base: Option<Duration>,

    /// Longest retry delay. [default: 5m]
    #[arg(long, global = true, env = "OUTBOX_BACKOFF_MAX", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub backoff_max: Option<Duration>,

    /// Sweeper schedule, a cron expression with seconds first.
    /// [default: "*/10 * * * * *"]
    #[arg(long, global = true, env = "OUTBOX_SWEEP_SCHEDULE")]
    pub sweep_schedule: Option<String>,

    /// How long published messages are kept before the sweeper deletes
    /// them; 0s deletes each as soon as it is acknowledged. [default: 0s]
    #[arg(long, global = true, env = "OUTBOX_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub retention: Option<Duration>,

    /// How long consumers' inbox entries are kept; longer than any
    /// redelivery can take. [default: 30days]
    #[arg(long, global = true, env = "OUTBOX_INBOX_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub inbox_retention: Option<Duration>,

    /// Rows deleted per cleanup statement. [default: 10000]
    #[arg(long, global = true, env = "OUTBOX_CLEANUP_BATCH")]
    pub cleanup_batch: Option<i64>,

    /// Address for /healthz and /metrics. [default: 0.0.0.0:9187]
    #[arg(long, global = true, env = "OUTBOX_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Create or upgrade the schema at start instead of refusing to start
    /// when it is missing or old. [default: false]
    #[arg(long, global = true, env = "OUTBOX_MIGRATE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub migrate: Option<bool>,

    /// This relay's name in logs and in outbox.relay. [default: HOST-PID]
    #[arg(long, global = true, env = "OUTBOX_NAME")]
    pub name: Option<String>,

    /// How long to keep trying to reach the database at start. [default: 10s]
    #[arg(long, global = true, env = "OUTBOX_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub connect_timeout: Option<Duration>,

    /// Longest time without a broker acknowledgement while messages wait
    /// (broker unreachable, producer stuck, database too slow). After half
    /// of it /healthz answers 503 with the reason; after all of it the
    /// relay gives its shards back and exits non-zero, so a supervisor
    /// restarts it and other relays take its keys. [default: 60s]
    #[arg(long, global = true, env = "OUTBOX_STALL_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub stall_timeout: Option<Duration>,
}

/// Splits `OUTBOX_KAFKA` into KEY=VALUE settings: at a comma followed by
/// `KEY=` (so a value may hold commas, as in `debug=broker,topic`), with
/// `\,` as a literal comma.
fn split_env_kafka(text: &str) -> Vec<String> {
    let mut settings = Vec::new();
    let mut current = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        match ch {
            '\\' if chars.peek().map(|&(_, c)| c) == Some(',') => {
                current.push(',');
                chars.next();
            }
            ',' if starts_setting(&text[i + 1..]) => {
                settings.push(std::mem::take(&mut current));
            }
            other => current.push(other),
        }
    }
    settings.push(current);
    settings
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `rest` begins with a librdkafka key and `=`.
fn starts_setting(rest: &str) -> bool {
    let rest = rest.trim_start();
    match rest.find('=') {
        Some(end) if end > 0 => rest[..end]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
        _ => false,
    }
}

impl Cli {
    /// Parses the process's arguments and environment, exiting with
    /// clap's message (status 2) when they cannot be parsed.
    pub fn parse_args() -> Cli {
        let matches = Cli::command().get_matches();
        let mut cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        };
        cli.settings.kafka_from_env =
            matches.value_source("kafka_args") == Some(clap::parser::ValueSource::EnvVariable);
        cli
    }
}

impl Settings {
    /// Reads the config file, if one was named.
    fn file(&self) -> Result<Settings, Error> {
        let Some(path) = &self.config else {
            return Ok(Settings::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config("config", format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| Error::config("config", format!("{}: {e}", path.display())))
    }

    /// Merges flags and environment (self) over the file over the defaults.
    pub fn resolve(self) -> Result<RelayConfig, Error> {
        let file = self.file()?;
        let mut c = RelayConfig::new(self.database_url.or(file.database_url).unwrap_or_default());
        macro_rules! take {
            ($field:ident => $target:expr) => {
                if let Some(v) = self.$field.or(file.$field) {
                    $target = v;
                }
            };
        }
        take!(brokers => c.brokers);
        take!(batch_size => c.batch_size);
        take!(in_flight => c.in_flight);
        take!(poll_interval => c.poll_interval);
        take!(lease => c.lease);
        take!(sweep_schedule => c.sweep_schedule);
        take!(retention => c.retention);
        take!(inbox_retention => c.inbox_retention);
        take!(cleanup_batch => c.cleanup_batch);
        take!(http_listen => c.http_listen);
        take!(migrate => c.migrate);
        take!(name => c.name);
        take!(connect_timeout => c.connect_timeout);
        take!(stall_timeout => c.stall_timeout);
        take!(max_resends => c.max_resends);
        let defaults = RetryPolicy::default();
        c.retry = RetryPolicy {
            max_attempts: self
                .max_attempts
                .or(file.max_attempts)
                .unwrap_or(defaults.max_attempts),
            base_delay: self
                .backoff_base
                .or(file.backoff_base)
                .unwrap_or(defaults.base_delay),
            max_delay: self
                .backoff_max
                .or(file.backoff_max)
                .unwrap_or(defaults.max_delay),
        };
        if let Some(w) = self.wakeup.or(file.wakeup) {
            c.wakeup = match w {
                WakeupArg::Notify => Wakeup::Notify,
                WakeupArg::Poll => Wakeup::Poll,
            };
        }
        for (k, v) in file.kafka_table {
            let v = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            c.kafka.push((k, v));
        }
        let args = if self.kafka_from_env {
            self.kafka_args
                .iter()
                .flat_map(|v| split_env_kafka(v))
                .collect()
        } else {
            self.kafka_args
        };
        for kv in args {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                let shown = if outbox_relay::is_secret_setting(&kv) {
                    "a setting (hidden: it may hold a secret)".to_owned()
                } else {
                    format!("{kv:?}")
                };
                Error::config("kafka", format!("{shown} is not KEY=VALUE"))
            })?;
            c.kafka.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = std::env::temp_dir().join(format!("outbox-relay-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://file/db\"\nbatch_size = 7\nlease = \"45s\"\n[kafka]\n\"linger.ms\" = 20\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "outbox-relay",
            "--config",
            path.to_str().unwrap(),
            "--batch-size",
            "9",
            "--kafka",
            "acks=1",
            "--migrate",
        ])
        .unwrap();
        let c = cli.settings.resolve().unwrap();
        assert_eq!(c.database_url, "postgres://file/db");
        assert_eq!(c.batch_size, 9);
        assert!(c.migrate);
        assert_eq!(c.lease, Duration::from_secs(45));
        assert_eq!(c.poll_interval, outbox_relay::DEFAULT_POLL_INTERVAL);
        assert_eq!(
            c.kafka,
            vec![
                ("linger.ms".into(), "20".into()),
                ("acks".into(), "1".into())
            ]
        );
    }

    #[test]
    fn kafka_values_keep_their_commas() {
        let cli = Cli::try_parse_from([
            "outbox-relay",
            "--kafka",
            "debug=broker,topic",
            "--kafka",
            "sasl.mechanism=SCRAM-SHA-512",
        ])
        .unwrap();
        assert_eq!(
            cli.settings.kafka_args,
            vec!["debug=broker,topic", "sasl.mechanism=SCRAM-SHA-512"]
        );
        assert_eq!(
            split_env_kafka("debug=broker,topic, linger.ms=5,sasl.password=a\\,b=c"),
            vec!["debug=broker,topic", "linger.ms=5", "sasl.password=a,b=c"]
        );
        assert_eq!(split_env_kafka(""), Vec::<String>::new());
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("outbox-relay-cli2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, "batchsize = 7\n").unwrap();
        let cli =
            Cli::try_parse_from(["outbox-relay", "--config", path.to_str().unwrap()]).unwrap();
        let err = cli.settings.resolve().unwrap_err().to_string();
        assert!(err.contains("batchsize"), "{err}");
    }
}
