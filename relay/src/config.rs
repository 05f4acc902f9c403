//! The relay's settings as plain values, their defaults, and the checks
//! run before anything starts. Parsing flags, environment and files is the
//! binary's job.

use std::net::SocketAddr;
use std::time::Duration;

use crate::retry::RetryPolicy;

use crate::error::{Error, Result};

/// Default for [`RelayConfig::brokers`].
pub const DEFAULT_BROKERS: &str = "localhost:9092";
/// Default for [`RelayConfig::batch_size`]: messages fetched, published and
/// marked together.
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Default for [`RelayConfig::in_flight`]: batches on the wire at once.
/// One batch waits for its acknowledgements (linger plus a broker round
/// trip) while the next ones are fetched and sent.
pub const DEFAULT_IN_FLIGHT: usize = 4;
/// Default for [`RelayConfig::poll_interval`]: the longest an idle relay
/// waits before looking again, whether or not a notification came.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`RelayConfig::lease`]: how long a relay holds its shards
/// without renewing them; a crashed relay's keys wait this long at most.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default for the librdkafka `message.timeout.ms` the relay sets: zero,
/// never. A record the broker has not acknowledged stays with librdkafka,
/// which retries it, in order, until the broker takes it; the relay's
/// `--stall-timeout` bounds the wait instead (the relay gives its shards
/// back and exits, which drops what librdkafka still holds). A finite
/// timeout lets librdkafka fail a record while later records of its
/// partition still go through (its documentation calls these gaps), and
/// the relay sends the failed one again after them: per-key order breaks.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::ZERO;
/// Default for [`RelayConfig::sweep_schedule`]: every 10 seconds.
pub const DEFAULT_SWEEP_SCHEDULE: &str = "*/10 * * * * *";
/// Default for [`RelayConfig::retention`]: zero, so a published message is
/// deleted as soon as the broker acknowledged it. The broker holds the
/// record from then on; keeping history in the outbox table makes every
/// acknowledgement an UPDATE (about three times the cost of a DELETE) and
/// the table as large as the history.
pub const DEFAULT_RETENTION: Duration = Duration::ZERO;
/// Default for [`RelayConfig::inbox_retention`]: 30 days.
pub const DEFAULT_INBOX_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default for [`RelayConfig::cleanup_batch`]: rows deleted per statement.
pub const DEFAULT_CLEANUP_BATCH: i64 = 10_000;
/// Default for [`RelayConfig::http_listen`].
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9187";
/// Default for [`RelayConfig::max_resends`].
pub const DEFAULT_MAX_RESENDS: u32 = 10;
/// Largest [`RelayConfig::max_resends`] accepted.
const MAX_RESENDS_LIMIT: u32 = 1000;
/// Default for [`RelayConfig::stall_timeout`]: a relay that has messages
/// to publish and none acknowledged for a minute gives its shards back and
/// exits non-zero (it turns `/healthz` to 503 after half of it).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`RelayConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How an idle relay learns of new messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// PostgreSQL LISTEN/NOTIFY, with polling as the fallback (default).
    Notify,
    /// Polling every `poll_interval` only.
    Poll,
}

/// Everything the relay needs to run. Build it with
/// [`RelayConfig::new`] (all defaults) and check it with
/// [`RelayConfig::validate`]. Its `Debug` output hides the database
/// password and secret librdkafka values.
#[derive(Clone)]
pub struct RelayConfig {
    /// PostgreSQL URL of the database holding the outbox schema.
    pub database_url: String,
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    /// librdkafka producer settings, applied over the relay's defaults.
    pub kafka: Vec<(String, String)>,
    /// Messages per batch (1 to 10,000).
    pub batch_size: usize,
    /// Batches sent and not yet acknowledged at once (1 to 32).
    pub in_flight: usize,
    /// Longest wait between looks at the table when idle.
    pub poll_interval: Duration,
    /// How an idle relay is woken.
    pub wakeup: Wakeup,
    /// Shard lease length.
    pub lease: Duration,
    /// Retry schedule and dead-letter budget of failed publishes.
    pub retry: RetryPolicy,
    /// How often a message whose end-to-end confirmation is overdue is
    /// sent again before it is dead-lettered (0: never re-sent).
    pub max_resends: u32,
    /// Cron expression (6 fields, seconds first) for the sweeper.
    pub sweep_schedule: String,
    /// How long published messages are kept before cleanup deletes them.
    pub retention: Duration,
    /// How long consumers' inbox entries (processed message ids) are kept.
    pub inbox_retention: Duration,
    /// Rows deleted per cleanup statement.
    pub cleanup_batch: i64,
    /// Address of the health and metrics endpoint.
    pub http_listen: SocketAddr,
    /// Apply the schema migrations at start instead of refusing to start
    /// when the schema is missing or old.
    pub migrate: bool,
    /// This relay's name in logs and in `outbox.relay`.
    pub name: String,
    /// How long to keep trying to reach the database at start.
    pub connect_timeout: Duration,
    /// How long the relay may go without an acknowledgement while
    /// messages wait before it gives its shards back and exits non-zero.
    pub stall_timeout: Duration,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kafka: Vec<(&str, &str)> = self
            .kafka
            .iter()
            .map(|(k, v)| (k.as_str(), crate::secrets::shown(k, v)))
            .collect();
        f.debug_struct("RelayConfig")
            .field(
                "database_url",
                &crate::secrets::redact_url(&self.database_url),
            )
            .field("brokers", &self.brokers)
            .field("kafka", &kafka)
            .field("batch_size", &self.batch_size)
            .field("in_flight", &self.in_flight)
            .field("poll_interval", &self.poll_interval)
            .field("wakeup", &self.wakeup)
            .field("lease", &self.lease)
            .field("retry", &self.retry)
            .field("max_resends", &self.max_resends)
            .field("sweep_schedule", &self.sweep_schedule)
            .field("retention", &self.retention)
            .field("inbox_retention", &self.inbox_retention)
            .field("cleanup_batch", &self.cleanup_batch)
            .field("http_listen", &self.http_listen)
            .field("migrate", &self.migrate)
            .field("name", &self.name)
            .field("connect_timeout", &self.connect_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .finish()
    }
}

impl RelayConfig {
    /// A configuration with every default, for `database_url`.
    pub fn new(database_url: impl Into<String>) -> Self {
        RelayConfig {
            database_url: database_url.into(),
            brokers: DEFAULT_BROKERS.into(),
            kafka: Vec::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            in_flight: DEFAULT_IN_FLIGHT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            wakeup: Wakeup::Notify,
            lease: DEFAULT_LEASE,
            retry: RetryPolicy::default(),
            max_resends: DEFAULT_MAX_RESENDS,
            sweep_schedule: DEFAULT_SWEEP_SCHEDULE.into(),
            retention: DEFAULT_RETENTION,
            inbox_retention: DEFAULT_INBOX_RETENTION,
            cleanup_batch: DEFAULT_CLEANUP_BATCH,
            http_listen: DEFAULT_HTTP_LISTEN.parse().expect("valid default address"),
            migrate: false,
            name: default_name(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }

    /// The user's value of a librdkafka setting known by any of `names`
    /// (aliases); the last one given wins, as in librdkafka.
    fn kafka_setting(&self, names: &[&str]) -> Option<&str> {
        self.kafka
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the broker answers each produce with the offset it stored
    /// the record at: always, except with `acks=0`.
    pub fn broker_reports_offsets(&self) -> bool {
        self.kafka_setting(&["acks", "request.required.acks"]) != Some("0")
    }

    /// The librdkafka `message.timeout.ms` in effect (the user's setting or
    /// the relay's default); `None` when messages never time out (`0`).
    pub fn message_timeout(&self) -> Result<Option<Duration>> {
        let ms = match self.kafka_setting(&["message.timeout.ms"]) {
            None => return Ok(Some(DEFAULT_MESSAGE_TIMEOUT).filter(|t| !t.is_zero())),
            Some(v) => v.parse::<u64>().map_err(|_| {
                Error::config(
                    "kafka.message.timeout.ms",
                    format!("{v:?} is not a number of milliseconds (0: never)"),
                )
            })?,
        };
        Ok((ms > 0).then(|| Duration::from_millis(ms)))
    }

    /// A relay starts a batch only while its shard lease has more than
    /// this left: one message timeout and a second when messages time out
    /// (so what it sent is acknowledged or failed before the lease ends),
    /// otherwise a third of the lease (one renewal interval).
    pub fn lease_margin(&self) -> Result<Duration> {
        Ok(match self.message_timeout()? {
            Some(timeout) => timeout + Duration::from_secs(1),
            None => self.renew_interval(),
        })
    }

    /// How often shard leases are renewed: a third of the lease.
    pub fn renew_interval(&self) -> Duration {
        self.lease / 3
    }

    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.database_url.is_empty() {
            return Err(Error::config(
                "database-url",
                "is required (flag --database-url, env DATABASE_URL, or database_url in the config file)",
            ));
        }
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(Error::config(
                "database-url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        if self.brokers.trim().is_empty() {
            return Err(Error::config("brokers", "must name at least one host:port"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config(
                "batch-size",
                format!("{} is outside 1..=10000", self.batch_size),
            ));
        }
        if !(1..=32).contains(&self.in_flight) {
            return Err(Error::config(
                "in-flight",
                format!("{} is outside 1..=32", self.in_flight),
            ));
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err(Error::config("poll-interval", "must be at least 10ms"));
        }
        let timeout = self.message_timeout()?;
        if let Some(timeout) = timeout {
            // A relay publishes only while its lease has more than one
            // message timeout (plus a second) left, and renews every third
            // of it, so the lease must leave room for both.
            if self.lease * 2 / 3 <= timeout + Duration::from_secs(1) {
                return Err(Error::config(
                    "lease",
                    format!(
                        "{} is too short for message.timeout.ms={}: it must exceed 1.5 x (message timeout + 1s) = {}",
                        humantime::format_duration(self.lease),
                        timeout.as_millis(),
                        humantime::format_duration((timeout + Duration::from_secs(1)) * 3 / 2)
                    ),
                ));
            }
        }
        if self.lease < Duration::from_secs(3) {
            return Err(Error::config("lease", "must be at least 3s"));
        }
        // A batch may legitimately wait one message timeout for its
        // reports, and a broker outage pauses the relay; neither is a
        // stall.
        let floor = timeout
            .map_or(Duration::ZERO, |t| t * 2)
            .max(Duration::from_secs(5));
        if self.stall_timeout < floor {
            return Err(Error::config(
                "stall-timeout",
                format!(
                    "{} is too short: it must be at least 5s and at least twice message.timeout.ms",
                    humantime::format_duration(self.stall_timeout),
                ),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(Error::config("max-attempts", "must be at least 1"));
        }
        if self.max_resends > MAX_RESENDS_LIMIT {
            return Err(Error::config(
                "max-resends",
                format!(
                    "{} is above {MAX_RESENDS_LIMIT}; a message that many re-sends did not confirm needs a person, not another re-send",
                    self.max_resends
                ),
            ));
        }
        if self.retry.base_delay.is_zero() || self.retry.base_delay > self.retry.max_delay {
            return Err(Error::config(
                "backoff-base",
                "must be above zero and at most backoff-max",
            ));
        }
        if self.cleanup_batch < 1 {
            return Err(Error::config("cleanup-batch", "must be at least 1"));
        }
        crate::sweep::validate_schedule(&self.sweep_schedule)?;
        for (key, _) in &self.kafka {
            if key == "bootstrap.servers" {
                return Err(Error::config(
                    "kafka",
                    "set bootstrap.servers with --brokers, not --kafka",
                ));
            }
        }
        Ok(())
    }
}

fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> RelayConfig {
        RelayConfig::new("postgres://localhost/db")
    }

    fn setting(c: RelayConfig) -> String {
        match c.validate() {
            Err(Error::Config { setting, .. }) => setting.to_string(),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        ok().validate().unwrap();
    }

    #[test]
    fn names_the_bad_setting() {
        assert_eq!(
            setting(RelayConfig {
                batch_size: 0,
                ..ok()
            }),
            "batch-size"
        );
        assert_eq!(
            setting(RelayConfig {
                lease: Duration::from_secs(2),
                ..ok()
            }),
            "lease"
        );
        let mut c = ok();
        c.kafka.push(("message.timeout.ms".into(), "10000".into()));
        c.lease = Duration::from_secs(5);
        assert_eq!(setting(c), "lease");
        assert_eq!(
            setting(RelayConfig {
                max_resends: 1001,
                ..ok()
            }),
            "max-resends"
        );
        RelayConfig {
            max_resends: 0,
            ..ok()
        }
        .validate()
        .expect("0 re-sends is valid: dead-letter at the first missed deadline");
        assert_eq!(
            setting(RelayConfig {
                sweep_schedule: "every minute".into(),
                ..ok()
            }),
            "sweep-schedule"
        );
        assert_eq!(
            setting(RelayConfig {
                database_url: "mysql://x".into(),
                ..ok()
            }),
            "database-url"
        );
        let mut c = ok();
        c.kafka.push(("message.timeout.ms".into(), "soon".into()));
        assert_eq!(setting(c), "kafka.message.timeout.ms");
        let mut c = ok();
        c.kafka.push(("message.timeout.ms".into(), "2000".into()));
        c.lease = Duration::from_secs(6);
        c.validate().unwrap();
        assert_eq!(c.lease_margin().unwrap(), Duration::from_secs(3));
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = RelayConfig::new("postgres://app:db-secret@h/db");
        c.kafka
            .push(("sasl.password".into(), "kafka-secret".into()));
        c.kafka.push(("sasl.username".into(), "relay".into()));
        let shown = format!("{c:?}");
        assert!(!shown.contains("db-secret"), "{shown}");
        assert!(!shown.contains("kafka-secret"), "{shown}");
        assert!(shown.contains("relay"), "{shown}");
    }

    #[test]
    fn messages_never_time_out_by_default() {
        let c = ok();
        assert_eq!(c.message_timeout().unwrap(), None);
        assert_eq!(c.lease_margin().unwrap(), c.lease / 3);
        let mut c = ok();
        c.kafka.push(("message.timeout.ms".into(), "0".into()));
        assert_eq!(c.message_timeout().unwrap(), None);
    }

    #[test]
    fn offsets_are_expected_unless_acks_is_zero() {
        let mut c = ok();
        assert!(c.broker_reports_offsets());
        c.kafka.push(("request.required.acks".into(), "0".into()));
        assert!(!c.broker_reports_offsets());
        c.kafka.push(("acks".into(), "all".into()));
        assert!(c.broker_reports_offsets(), "the last setting wins");
    }
}
