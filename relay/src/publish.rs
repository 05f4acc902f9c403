//! Publishing a batch through the idempotent Kafka producer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outbox::headers;

use crate::store::PendingMessage;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::util::Timeout;

use crate::broker_events::BrokerEvents;
use crate::config::{RelayConfig, DEFAULT_MESSAGE_TIMEOUT};
use crate::delivery::{Batch, ProducerEvents, RelayProducer, Report};
use crate::error::{Error, Result};

/// How long the outage watch waits for each metadata answer.
const OUTAGE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the broker for metadata (on a blocking thread: librdkafka's call
/// blocks) and reports whether it answered within `timeout`, or why not.
pub(crate) async fn ask_broker(producer: &RelayProducer, timeout: Duration) -> Result<(), String> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Timeout::After(timeout))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}

/// librdkafka's complaint about a setting, with the value left out when
/// the setting is a secret (librdkafka quotes the value it refused).
fn producer_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, value)
            if crate::secrets::is_secret_setting(key) =>
        {
            crate::secrets::redact_value(description, value)
        }
        other => other.to_string(),
    }
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The broker acknowledged it (`acks=all`).
    Published,
    /// It was not published; `permanent` when the broker or producer will
    /// never accept it as it is, as opposed to the broker being unavailable.
    Failed {
        /// The producer's error.
        error: String,
        /// Whether retrying can help only after someone changes something.
        permanent: bool,
    },
    /// Not sent because an earlier message of its key failed in this batch;
    /// sending it would overtake that message.
    Held,
    /// The producer itself can send nothing more: another producer took
    /// over its identity (fenced), or the broker lost its epoch or
    /// sequence state. Not the message's fault: it is retried by a relay
    /// with a new producer, and no attempt is counted.
    ProducerBroken {
        /// The producer's error.
        error: String,
    },
}

/// The relay's Kafka producer. Idempotent, `acks=all`, so a message the
/// broker acknowledged is on every in-sync replica and client retries
/// neither duplicate nor reorder within a partition.
pub struct Publisher {
    producer: RelayProducer,
    /// The next batch's first ticket: every record of a batch gets one,
    /// sent or not, so batches never share a ticket.
    next_ticket: AtomicUsize,
    /// Whether a delivery report must carry an offset to count (every
    /// setting but `acks=0`, where the broker never answers with one).
    needs_offset: bool,
}

impl Publisher {
    /// A producer for `config.brokers`: the relay's defaults, then the
    /// user's `config.kafka` settings over them.
    ///
    /// Fails with [`Error::Producer`] when librdkafka refuses a setting. It
    /// does not contact the broker: an unreachable broker is found later and
    /// retried.
    pub fn new(config: &RelayConfig) -> Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", format!("outbox-relay-{}", config.name))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DEFAULT_MESSAGE_TIMEOUT.as_millis().to_string(),
            )
            // Batches form anyway under load (up to --in-flight batches
            // wait for acknowledgements); a longer linger only adds
            // latency when the load is light.
            .set("linger.ms", "1")
            // The Java client's partitioner, so keys land on the same
            // partitions as from Kafka Connect, Debezium or Java services.
            .set("partitioner", "murmur2_random");
        for (k, v) in &config.kafka {
            client.set(k, v);
        }
        let producer: RelayProducer = client
            .create_with_context(ProducerEvents::default())
            .map_err(|e| Error::Producer(producer_error(&e)))?;
        Ok(Publisher {
            producer,
            next_ticket: AtomicUsize::new(0),
            needs_offset: config.broker_reports_offsets(),
        })
    }

    /// Asks the broker for metadata once, at start, and waits until it
    /// answers, librdkafka reports an error, or `timeout` passes.
    ///
    /// Fails with [`Error::BrokerRefused`] when the error is a TLS or SASL
    /// refusal (certificate not accepted, wrong password), which no retry
    /// fixes. A broker that is merely down is logged and waited for while
    /// running, as always.
    pub async fn check_broker(&self, timeout: Duration) -> Result<()> {
        let metadata = ask_broker(&self.producer, timeout);
        tokio::pin!(metadata);
        let answered = tokio::select! {
            done = &mut metadata => done.is_ok(),
            _ = self.events().next_error() => {
                // The error that woke us may be the handshake's first;
                // give a refusal a moment to be told apart from a
                // transport error.
                let _ = tokio::time::timeout(Duration::from_millis(500), &mut metadata).await;
                false
            }
        };
        if let Some(reason) = self.events().refused() {
            return Err(Error::BrokerRefused(reason));
        }
        if answered {
            tracing::info!("Kafka broker reachable");
        }
        Ok(())
    }

    /// Logs the end of a broker outage within about a second of it, even
    /// when nothing is being published, by asking for metadata while one
    /// is open. Ends when `shutdown` fires.
    pub fn watch_outages(
        &self,
        shutdown: crate::shutdown::Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let producer = self.producer.clone();
        let events = self.events().clone();
        tokio::spawn(async move {
            let mut shutdown = shutdown;
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if !events.in_outage() {
                    continue;
                }
                if ask_broker(&producer, OUTAGE_PROBE_TIMEOUT).await.is_ok() {
                    events.reachable();
                }
            }
        })
    }

    /// Hands every message of `batch` to librdkafka, in order, without
    /// waiting for the broker; [`Sending::outcomes`] waits for the reports.
    ///
    /// A key's messages are sent only while they go to the same topic as
    /// its messages still in flight, in this batch or an earlier one (same
    /// partition, where the idempotent producer keeps their order); a later
    /// message of the key for another topic is [`Outcome::Held`] until the
    /// earlier ones are acknowledged. When a message fails before it could
    /// be sent, the later messages of its key in the batch are held too.
    /// `in_flight` gains the keys sent here; the caller removes them with
    /// [`KeyTopics::release`] once the batch's reports are in.
    pub async fn send_batch(&self, batch: &[PendingMessage], in_flight: &mut KeyTopics) -> Sending {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut failed_keys: HashSet<&[u8]> = HashSet::new();
        let first = self.next_ticket.fetch_add(batch.len(), Ordering::Relaxed);
        let reports = self.producer.context().reports.open(first, batch.len());

        for (i, m) in batch.iter().enumerate() {
            if let Some(key) = m.key.as_deref() {
                if failed_keys.contains(key) || !in_flight.may_send(key, &m.topic) {
                    // Hold the rest of this key for a later batch.
                    failed_keys.insert(key);
                    outcomes[i] = Some(Outcome::Held);
                    continue;
                }
            }
            reports.sending();
            match self.send(m, first.wrapping_add(i)).await {
                Ok(()) => {
                    if let Some(key) = m.key.as_deref() {
                        in_flight.add(key, &m.topic);
                    }
                }
                Err(e) => {
                    reports.not_sent();
                    if let Some(key) = m.key.as_deref() {
                        failed_keys.insert(key);
                    }
                    outcomes[i] = Some(failed(&e));
                }
            }
        }
        reports.sent();
        Sending {
            outcomes,
            reports,
            needs_offset: self.needs_offset,
        }
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    /// Its delivery report goes to the batch holding `ticket`.
    async fn send(&self, m: &PendingMessage, ticket: usize) -> Result<(), KafkaError> {
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = m.id.0.hyphenated().encode_lower(&mut id);
        let created = m
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut hdrs = OwnedHeaders::new_with_capacity(m.header_names.len() + 3);
        for (name, value) in m.header_names.iter().zip(&m.header_values) {
            hdrs = hdrs.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        hdrs = hdrs.insert(Header {
            key: headers::ID,
            value: Some(id.as_bytes()),
        });
        if let Some(t) = &m.message_type {
            hdrs = hdrs.insert(Header {
                key: headers::TYPE,
                value: Some(t),
            });
        }
        hdrs = hdrs.insert(Header {
            key: headers::CREATED_AT,
            value: Some(&created),
        });

        let mut record =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(&m.topic, ticket).headers(hdrs);
        if let Some(key) = &m.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &m.payload {
            record = record.payload(payload.as_slice());
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // librdkafka drains its queue on its own thread.
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for everything handed to librdkafka to be
    /// delivered or failed.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(Timeout::After(timeout));
    }

    /// The producer's fatal error, if it had one: librdkafka's idempotent
    /// producer cannot go on after one (e.g. a sequence gap it cannot
    /// repair), so the relay must stop and be restarted.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// What librdkafka said about the broker.
    fn events(&self) -> &BrokerEvents {
        &self.producer.context().events
    }

    /// A clone of the underlying producer, for health checks.
    pub(crate) fn producer(&self) -> RelayProducer {
        self.producer.clone()
    }
}

/// A batch handed to librdkafka: the outcomes known at once (held, refused
/// locally) and the delivery reports still to come.
pub struct Sending {
    /// `None` for the messages handed to librdkafka, whose outcome is its
    /// delivery report.
    outcomes: Vec<Option<Outcome>>,
    reports: Arc<Batch>,
    needs_offset: bool,
}

impl Sending {
    /// The messages (indexes into the batch, ascending) that reached the
    /// producer.
    pub fn sent(&self) -> Vec<usize> {
        self.outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_none())
            .map(|(i, _)| i)
            .collect()
    }

    /// The messages held or refused before they reached the producer
    /// (indexes into the batch, ascending): known before the broker
    /// answers.
    pub fn unsent(&self) -> impl Iterator<Item = usize> + '_ {
        self.outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_some())
            .map(|(i, _)| i)
    }

    /// Waits for every delivery report; one outcome per message, in batch
    /// order.
    pub async fn outcomes(self) -> Vec<Outcome> {
        let reports = self.reports.reports().await;
        let needs_offset = self.needs_offset;
        self.outcomes
            .into_iter()
            .zip(reports)
            .map(|(known, report)| match (known, report) {
                (Some(o), _) => o,
                (None, Some(Report::Delivered { offset })) => delivered(offset, needs_offset),
                (None, Some(Report::Failed(e))) => failed(&e),
                // Cannot happen (the batch waits for every record handed
                // over); if it did, sending again is the safe answer.
                (None, None) => Outcome::Failed {
                    error: "no delivery report for the message".into(),
                    permanent: false,
                },
            })
            .collect()
    }
}

/// The topic each key in flight is bound for, and how many of its
/// messages are in flight: a key may only be sent to that topic until they
/// are all acknowledged.
#[derive(Debug, Default)]
pub struct KeyTopics {
    keys: HashMap<Vec<u8>, (String, usize)>,
}

impl KeyTopics {
    /// Whether a message of `key` for `topic` may be sent now.
    pub fn may_send(&self, key: &[u8], topic: &str) -> bool {
        self.keys.get(key).is_none_or(|(t, _)| t == topic)
    }

    fn add(&mut self, key: &[u8], topic: &str) {
        match self.keys.get_mut(key) {
            Some((_, n)) => *n += 1,
            None => {
                self.keys.insert(key.to_vec(), (topic.to_owned(), 1));
            }
        }
    }

    /// Forgets the messages of `batch` at `sent` (see [`Sending::sent`])
    /// once their reports are in.
    pub fn release(&mut self, batch: &[PendingMessage], sent: &[usize]) {
        for &i in sent {
            let Some(key) = batch[i].key.as_deref() else {
                continue;
            };
            if let Some((_, n)) = self.keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.keys.remove(key);
                }
            }
        }
    }

    /// Whether no key is in flight.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A delivery report without an error. librdkafka also reports some
/// messages delivered without an offset (`-1001`, unknown): under delayed
/// answers and retried errors at once, seen against librdkafka's mock
/// cluster, such a message was not on the partition afterwards
/// (docs/limits.md). Only an offset shows the broker stored it, so a
/// report without one counts as a transient failure and the message is
/// sent again: at worst a duplicate, which consumers drop. With `acks=0`
/// the broker never answers, so no offset is expected.
fn delivered(offset: i64, needs_offset: bool) -> Outcome {
    if needs_offset && offset < 0 {
        return Outcome::Failed {
            error: format!(
                "librdkafka reported the message delivered without an offset ({offset}): not proof that the broker stored it; sending it again"
            ),
            permanent: false,
        };
    }
    Outcome::Published
}

fn failed(e: &KafkaError) -> Outcome {
    if is_producer_broken(e) {
        return Outcome::ProducerBroken {
            error: e.to_string(),
        };
    }
    Outcome::Failed {
        error: e.to_string(),
        permanent: is_permanent(e),
    }
}

/// Errors after which this producer cannot deliver anything: its epoch was
/// bumped by another producer (fenced), or the broker no longer knows its
/// id or sequence. Retrying with the same producer fails the same way
/// forever (seen against a broker that fenced the producer after a
/// pause), so the relay stops and is restarted with a fresh producer.
pub fn is_producer_broken(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            ProducerFenced
                | Fenced
                | InvalidProducerEpoch
                | UnknownProducerId
                | OutOfOrderSequenceNumber
                | InvalidProducerIdMapping
                | Fatal
        )
    )
}

/// Errors that say this message, as it is, will never be accepted. Anything
/// else (timeouts, broker unreachable, leader moving) is the broker's
/// trouble, not the message's.
pub fn is_permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidMessage
                | MessageBatchTooLarge
                | InvalidRecord
                | UnknownTopicOrPartition
                | UnknownTopic
                | InvalidTopic
                | TopicAuthorizationFailed
                | UnsupportedForMessageFormat
                | PolicyViolation
        )
    )
}

#[cfg(test)]
#[path = "publish_tests.rs"]
pub(crate) mod tests;
