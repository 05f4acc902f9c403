//! The broker side: topics, the raw producer ceiling, a latency consumer and
//! the raw produce-to-consume latency probe.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::workload;

/// Creates `name` with `partitions` partitions (replication factor 1).
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .with_context(|| format!("creating topic {name}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    // Wait until the broker lists the topic with all its partitions.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let name_owned = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let md =
                probe.fetch_metadata(Some(&name_owned), Timeout::After(Duration::from_secs(5)));
            if let Ok(md) = md {
                if md
                    .topics()
                    .iter()
                    .any(|t| t.error().is_none() && t.partitions().len() == partitions as usize)
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("topic {name_owned} did not appear with {partitions} partitions");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?
}

/// Deletes `name`, to give the in-memory broker its memory back. Errors are
/// ignored: a broker that cannot delete topics just keeps them.
pub async fn delete_topic(brokers: &str, name: &str) {
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ =
        tokio::time::timeout(Duration::from_secs(15), admin.delete_topics(&[name], &opts)).await;
}

/// Reads `topic` back from the start and returns how many distinct
/// `outbox-id`s it holds, once `expected` of them arrived or no new one
/// arrived for `idle`. (The in-memory broker's watermarks count batches,
/// not records, so reading back is the only reliable count.)
pub async fn distinct_ids(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    idle: Duration,
) -> Result<usize> {
    let consumer = ArrivalRecorder::start(brokers, topic, partitions)?;
    let mut last = (0, Instant::now());
    while consumer.seen() < expected {
        let seen = consumer.seen();
        if seen != last.0 {
            last = (seen, Instant::now());
        } else if last.1.elapsed() > idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(consumer.finish()?.len())
}

/// Counts delivery reports.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap();
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The producer settings the relay uses, which the ceiling and the raw
/// latency probe share: idempotent, `acks=all`, the Java partitioner.
fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "1")
        .set("partitioner", "murmur2_random");
    c
}

/// The librdkafka settings the ceiling uses on top of [`producer_config`]:
/// a deep queue and large batches, so the producer never waits on itself.
pub const CEILING_TUNING: &[(&str, &str)] = &[
    ("linger.ms", "20"),
    ("batch.num.messages", "10000"),
    ("batch.size", "1000000"),
    ("queue.buffering.max.messages", "1000000"),
    ("queue.buffering.max.kbytes", "1048576"),
];

/// Records the ceiling sends, untimed, before it starts the clock.
pub const WARMUP: u64 = 1_000;

/// The result of the ceiling run.
pub struct Ceiling {
    pub messages: u64,
    pub elapsed: Duration,
}

impl Ceiling {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// Produces `n` records shaped like the relay's (same key set, payload,
/// and the `outbox-id` / `outbox-created-at` headers) as fast as the
/// broker acknowledges them; returns the time from the first send to the
/// last acknowledgement.
pub fn ceiling(brokers: &str, topic: &str, n: u64) -> Result<Ceiling> {
    let mut config = producer_config(brokers);
    for (k, v) in CEILING_TUNING {
        config.set(*k, *v);
    }
    let producer: ThreadedProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .context("creating the ceiling producer")?;
    // Connect and learn the topic's partitions before the clock starts.
    producer
        .client()
        .fetch_metadata(Some(topic), Timeout::After(Duration::from_secs(10)))
        .context("fetching the topic metadata")?;

    let keys = workload::keys();
    let created = "2026-01-01T00:00:00.000000Z";
    let mut payload = String::with_capacity(workload::PAYLOAD_BYTES);
    let mut started = Instant::now();
    // The first WARMUP records (not timed) pay for the producer id and the
    // connections to the partition leaders.
    for i in 0..n + WARMUP {
        if i == WARMUP {
            producer
                .flush(Timeout::After(Duration::from_secs(30)))
                .context("flushing the warm-up records")?;
            started = Instant::now();
        }
        let id = uuid::Uuid::now_v7().to_string();
        workload::payload_into(i, &mut payload);
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: outbox::headers::ID,
                value: Some(&id),
            })
            .insert(Header {
                key: outbox::headers::CREATED_AT,
                value: Some(created),
            });
        let mut record = BaseRecord::to(topic)
            .key(keys[(i % workload::KEYS) as usize].as_bytes())
            .payload(payload.as_bytes())
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("ceiling producer refused message {i}: {e}"),
            }
        }
    }
    producer
        .flush(Timeout::After(Duration::from_secs(120)))
        .context("flushing the ceiling producer")?;
    let elapsed = started.elapsed();
    let ctx = producer.context();
    let ok = ctx.ok.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    if ok != n + WARMUP {
        bail!(
            "ceiling: {ok} of {n} records acknowledged, {failed} failed (first error: {})",
            ctx.first_error.lock().unwrap().as_deref().unwrap_or("none")
        );
    }
    Ok(Ceiling {
        messages: n,
        elapsed,
    })
}

/// A consumer on its own thread that reads every partition of a fresh
/// topic from the start and notes when each `outbox-id` first arrived.
pub struct ArrivalRecorder {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
    duplicates: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Result<HashMap<String, Arrival>>>>,
}

/// When a record first arrived, and how long before that its producer
/// created it (its Kafka timestamp, CreateTime: when the producer was
/// handed the record; millisecond resolution, read against the wall
/// clock of this same machine).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: Instant,
    pub since_produced: Option<Duration>,
}

impl ArrivalRecorder {
    /// Starts consuming `topic` (partitions 0..`partitions`, from offset 0)
    /// with `fetch.wait.max.ms=5`. Returns once the consumer is set up.
    pub fn start(brokers: &str, topic: &str, partitions: i32) -> Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("outbox-bench-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "5")
            .set("fetch.min.bytes", "1")
            .create()
            .context("creating the latency consumer")?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(0))?;
        }
        consumer.assign(&tpl).context("assigning partitions")?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let duplicates = Arc::new(AtomicUsize::new(0));
        let (stop2, seen2, dup2) = (stop.clone(), seen.clone(), duplicates.clone());
        let handle = std::thread::Builder::new()
            .name("latency-consumer".into())
            .spawn(move || {
                let mut arrivals: HashMap<String, Arrival> = HashMap::new();
                while !stop2.load(Ordering::Relaxed) {
                    let Some(m) = consumer.poll(Timeout::After(Duration::from_millis(50))) else {
                        continue;
                    };
                    let now = Instant::now();
                    let wall_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let m = m.context("consuming")?;
                    let since_produced = m
                        .timestamp()
                        .to_millis()
                        .map(|created| Duration::from_millis((wall_ms - created).max(0) as u64));
                    let id = m
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == outbox::headers::ID))
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    match arrivals.entry(id) {
                        // A duplicate (at-least-once): the first arrival
                        // stays (inserting first, as this did, replaced it
                        // with the later one).
                        Entry::Occupied(_) => {
                            dup2.fetch_add(1, Ordering::Relaxed);
                        }
                        Entry::Vacant(v) => {
                            v.insert(Arrival {
                                at: now,
                                since_produced,
                            });
                            seen2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(arrivals)
            })?;
        Ok(ArrivalRecorder {
            stop,
            seen,
            duplicates,
            handle: Some(handle),
        })
    }

    /// Distinct ids received so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }

    /// Duplicates received so far.
    pub fn duplicates(&self) -> usize {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Waits until `n` distinct ids arrived or `timeout` passed.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.seen() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops the consumer and returns the first arrival of every id.
    pub fn finish(self) -> Result<HashMap<String, Instant>> {
        Ok(self
            .finish_with_produce_times()?
            .into_iter()
            .map(|(id, a)| (id, a.at))
            .collect())
    }

    /// Stops the consumer and returns the first arrival of every id, with
    /// its producer's timestamp.
    pub fn finish_with_produce_times(mut self) -> Result<HashMap<String, Arrival>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| anyhow::anyhow!("the latency consumer panicked"))?
    }
}

impl Drop for ArrivalRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Produces straight to the broker at `rate` records/s for `duration`
/// with the relay's producer settings (no database), and returns the send
/// instant of every record by `outbox-id`: the latency floor the broker and
/// client allow at that rate.
pub fn paced_produce(
    brokers: &str,
    topic: &str,
    rate: f64,
    count: u64,
    id_prefix: &str,
) -> Result<HashMap<String, Instant>> {
    let mut config = producer_config(brokers);
    config.set("linger.ms", "5");
    let producer: ThreadedProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .context("creating the probe producer")?;
    producer
        .client()
        .fetch_metadata(Some(topic), Timeout::After(Duration::from_secs(10)))
        .context("fetching the topic metadata")?;
    let keys = workload::keys();
    let mut sent = HashMap::with_capacity(count as usize);
    let mut payload = String::new();
    let started = Instant::now();
    for i in 0..count {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let id = format!("{id_prefix}-{i}");
        workload::payload_into(i, &mut payload);
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: outbox::headers::ID,
            value: Some(&id),
        });
        let record = BaseRecord::to(topic)
            .key(keys[(i % workload::KEYS) as usize].as_bytes())
            .payload(payload.as_bytes())
            .headers(headers);
        let at = Instant::now();
        producer
            .send(record)
            .map_err(|(e, _)| anyhow::anyhow!("probe producer refused a record: {e}"))?;
        sent.insert(id, at);
    }
    producer
        .flush(Timeout::After(Duration::from_secs(30)))
        .context("flushing the probe producer")?;
    let ctx = producer.context();
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "probe producer: {failed} records failed ({})",
            ctx.first_error.lock().unwrap().as_deref().unwrap_or("")
        );
    }
    Ok(sent)
}
