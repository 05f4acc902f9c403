//! What librdkafka says about the broker, turned into a few log lines a
//! person can read: an outage is logged once when it starts, then as a
//! summary at most every [`SUMMARY_EVERY`], and once when it ends. A TLS
//! or SASL refusal is remembered, so that the relay can fail at start
//! with librdkafka's reason instead of retrying a setting that cannot
//! work.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::Notify;

/// How often an ongoing outage is summarised.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// The producer's librdkafka context; clones share their state, so the
/// publisher keeps one to ask.
#[derive(Clone, Default)]
pub(crate) struct BrokerEvents {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    outage: Mutex<Option<Outage>>,
    refused: Mutex<Option<String>>,
    /// Woken by every error librdkafka reports.
    errors: Notify,
}

/// An outage being logged.
struct Outage {
    started: Instant,
    last_summary: Instant,
    errors_since_summary: u64,
    errors: u64,
    latest: String,
}

impl BrokerEvents {
    /// The first TLS or SASL refusal librdkafka reported, if any.
    pub(crate) fn refused(&self) -> Option<String> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Completes at the next error librdkafka reports.
    pub(crate) async fn next_error(&self) {
        self.inner.errors.notified().await
    }

    /// Whether an outage is open (logged and not yet over).
    pub(crate) fn in_outage(&self) -> bool {
        self.inner
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The broker answered: closes an open outage with one line.
    pub(crate) fn reachable(&self) {
        let mut outage = self.inner.outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = outage.take() {
            tracing::info!(
                after = %humantime::format_duration(round(o.started.elapsed())),
                errors = o.errors,
                "Kafka broker reachable again"
            );
        }
    }

    /// Counts one broker error; logs it when it opens an outage or a
    /// summary is due.
    fn broker_error(&self, reason: &str) {
        let mut outage = self.inner.outage.lock().unwrap_or_else(|p| p.into_inner());
        match outage.as_mut() {
            None => {
                tracing::warn!(
                    reason,
                    "Kafka broker unreachable; messages wait and are published once it is back (further errors are summarised every {})",
                    humantime::format_duration(SUMMARY_EVERY)
                );
                let now = Instant::now();
                *outage = Some(Outage {
                    started: now,
                    last_summary: now,
                    errors_since_summary: 0,
                    errors: 1,
                    latest: reason.to_owned(),
                });
            }
            Some(o) => {
                o.errors += 1;
                o.errors_since_summary += 1;
                o.latest = reason.to_owned();
                if o.last_summary.elapsed() >= SUMMARY_EVERY {
                    tracing::warn!(
                        down_for = %humantime::format_duration(round(o.started.elapsed())),
                        errors = o.errors_since_summary,
                        latest = %o.latest,
                        "Kafka broker still unreachable"
                    );
                    o.last_summary = Instant::now();
                    o.errors_since_summary = 0;
                }
            }
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// Whether an error means the broker will not take this client as it is
/// configured: certificate not accepted, TLS or SASL failed.
fn is_refusal(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::UnsupportedSASLMechanism
                | RDKafkaErrorCode::IllegalSASLState
        )
    )
}

impl ClientContext for BrokerEvents {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // FAIL and ERROR lines repeat what `error` reports (each broker
        // error came out twice, once per callback); `error` logs them,
        // rate-limited.
        if fac == "FAIL" || fac == "ERROR" {
            tracing::debug!(target: "librdkafka", "{fac} {message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::Fatal) {
            // The loop stops on it and says so; log it at once anyway.
            tracing::error!(reason, "fatal Kafka producer error");
        } else {
            if is_refusal(code) {
                let mut refused = self.inner.refused.lock().unwrap_or_else(|p| p.into_inner());
                if refused.is_none() {
                    *refused = Some(reason.to_owned());
                }
            }
            self.broker_error(reason);
        }
        self.inner.errors.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_remembered_outages_are_not() {
        let events = BrokerEvents::default();
        events.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(events.in_outage());
        assert_eq!(events.refused(), None);
        events.error(
            KafkaError::Global(RDKafkaErrorCode::SSL),
            "SSL handshake failed: certificate verify failed",
        );
        assert_eq!(
            events.refused().as_deref(),
            Some("SSL handshake failed: certificate verify failed")
        );
        events.reachable();
        assert!(!events.in_outage());
    }
}
