//! Kafka security and codecs, against a real broker: the relay publishes
//! over TLS (a TLS-terminating proxy in front of tansu, which has no TLS
//! listener), verifying the server certificate; a CA that did not sign it
//! stops the relay at start with librdkafka's reason and loses nothing;
//! zstd-compressed batches come back byte-equal and really were
//! compressed on the wire; SASL/SCRAM over TLS logs in and publishes with
//! the right password and stops the relay at start with the wrong one,
//! neither password ever showing in its output.
//!
//! The broker advertises the proxy's address, so after bootstrapping every
//! client connection goes through TLS; the proxy counts what clients sent,
//! which proves the traffic went through it, and measures compression.
//!
//! What tansu 0.6.0 offers: no TLS listener (`--cert` and `--key` are
//! mutually exclusive flags and the acceptor they would build is never
//! used), hence the proxy; SASL with `--authentication`: SCRAM-SHA-256
//! and SCRAM-SHA-512, checked against credentials stored with
//! `tansu user create`. Its SASL library is built without PLAIN (a PLAIN
//! login fails with "NoSharedMechanism" and a closed connection), and
//! OAUTHBEARER logins are refused by its validation callback, so those two
//! are only checked to be built into librdkafka.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{log_dir, random_suffix, Relay, Storage, TestDb, TopicReader};
use outbox::{Message, Outbox};
use outbox_testkit::tls::{Certs, TlsProxy};
use outbox_testkit::{kafka, Scram};
use rand::{Rng, RngCore};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use uuid::Uuid;

/// How long the broker may take to answer, and a topic to show up.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// A tansu broker behind a TLS proxy, advertising the proxy, with the
/// certificates in a temporary folder. Everything stops when dropped.
struct TlsBroker {
    // Dropped in this order: the proxy, then the broker, then the folder.
    proxy: TlsProxy,
    broker: outbox_testkit::Broker,
    certs: Certs,
    _dir: tempfile::TempDir,
}

impl TlsBroker {
    /// Certificates, a proxy in front of a tansu port, and tansu started
    /// on that port advertising the proxy; waits until tansu answers
    /// metadata on its own (plain) port.
    async fn start(name: &str) -> Result<Self> {
        Self::start_with(name, Storage::Memory).await
    }

    /// [`start`](Self::start) with a choice of storage.
    async fn start_with(name: &str, storage: Storage) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let certs = Certs::generate(dir.path())?;
        let mut broker = outbox_testkit::Broker::builder()
            .storage(storage)
            .log_dir(log_dir())
            .log_stem(format!("{name}-tansu"))
            .build()?;
        let proxy = TlsProxy::start(&certs, &broker.addr())?;
        broker.set_advertised_listener(Some(proxy.addr()));
        broker.spawn()?;
        let plain = broker.addr();
        let ready =
            kafka::wait_for_metadata_while(&plain, BROKER_TIMEOUT, || broker.check_alive()).await;
        ready.with_context(|| format!("starting tansu; see {:?}", broker.log()))?;
        Ok(TlsBroker {
            proxy,
            broker,
            certs,
            _dir: dir,
        })
    }

    /// Creates `topic` (through tansu's plain port) and waits until the
    /// metadata shows its partitions.
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        self.broker.create_topic(topic, partitions).await?;
        kafka::wait_for_partitions(&self.broker.addr(), topic, partitions, BROKER_TIMEOUT).await?;
        Ok(())
    }

    /// A reader of `topic` over TLS through the proxy, trusting the CA.
    async fn reader(&self, topic: &str) -> Result<TopicReader> {
        let ca = path(&self.certs.ca());
        TopicReader::with_settings(
            &self.proxy.addr(),
            topic,
            &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)],
        )
        .await
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `--kafka security.protocol=SSL --kafka ssl.ca.location=CA`, leaving
/// certificate and host name verification at librdkafka's defaults
/// (`enable.ssl.certificate.verification=true`,
/// `ssl.endpoint.identification.algorithm=https`).
fn ssl_args(ca: &Path) -> Vec<String> {
    vec![
        "--kafka".into(),
        "security.protocol=SSL".into(),
        "--kafka".into(),
        format!("ssl.ca.location={}", ca.display()),
    ]
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The last non-empty line of `text`.
fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// Runs a relay against `db` and `brokers` with `kafka_settings` (flags)
/// that the broker must refuse: returns how it exited, how long it took
/// and its last stderr line, having checked that it exited non-zero with
/// the relay's error line.
async fn run_refused(
    log_name: &str,
    db: &TestDb,
    brokers: &str,
    kafka_settings: Vec<String>,
) -> Result<(common::Exited, Duration, String)> {
    let mut args: Vec<String> = [
        "--database-url",
        db.url.as_str(),
        "--brokers",
        brokers,
        "--http-listen",
        "127.0.0.1:0",
        "--connect-timeout",
        "10s",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(kafka_settings);
    let started = Instant::now();
    let exited = common::run_relay_to_exit(log_name, &refs(&args), Duration::from_secs(30)).await?;
    let took = started.elapsed();
    let last = last_line(&exited.stderr).to_owned();
    assert!(
        !exited.status.success(),
        "the relay exited {} after {took:?}; last line: {last}",
        exited.status
    );
    assert!(
        last.starts_with("outbox-relay: error:"),
        "last line of stderr: {last:?}"
    );
    Ok((exited, took, last))
}

/// Every one of the `messages` rows is still pending: nothing was marked.
async fn assert_all_pending(db: &TestDb, messages: usize) -> Result<()> {
    let counts = db.status_counts().await?;
    assert_eq!(
        counts.get("pending"),
        Some(&(messages as i64)),
        "{counts:?}"
    );
    assert_eq!(counts.len(), 1, "{counts:?}");
    Ok(())
}

#[tokio::test]
async fn publishes_over_verified_tls() -> Result<()> {
    const MESSAGES: usize = 500;
    let db = TestDb::new().await?;
    let kafka = TlsBroker::start("kafka_tls-verified").await?;
    let topic = common::unique_topic("tls");
    kafka.create_topic(&topic, 3).await?;
    let ids = db.enqueue_numbered(&topic, MESSAGES, 50).await?;
    let payload_bytes: u64 = (0..MESSAGES).map(|n| n.to_string().len() as u64).sum();

    let args = ssl_args(&kafka.certs.ca());
    let mut relay = Relay::spawn(
        "kafka_tls-verified-relay",
        &db.url,
        &kafka.proxy.addr(),
        &refs(&args),
    )?;
    let published = db
        .wait_all_published(MESSAGES as i64, Duration::from_secs(60))
        .await;
    assert!(
        published.is_ok(),
        "{published:?}; proxy: {} connections, {} handshakes ({} failed), {} bytes from clients; see {}",
        kafka.proxy.connections(),
        kafka.proxy.handshakes(),
        kafka.proxy.failed_handshakes(),
        kafka.proxy.bytes_from_clients(),
        relay.log.display()
    );
    // The relay reached the broker only through the proxy (it speaks TLS,
    // and the proxy is the only TLS listener): what it sent holds every
    // payload.
    let relay_handshakes = kafka.proxy.handshakes();
    assert!(relay_handshakes >= 1, "no TLS handshake completed");
    assert!(
        kafka.proxy.bytes_from_clients() > payload_bytes,
        "{} bytes went through the proxy for {payload_bytes} bytes of payloads",
        kafka.proxy.bytes_from_clients()
    );
    assert!(relay.is_running(), "see {}", relay.log.display());

    // Read back over TLS too.
    let mut reader = kafka.reader(&topic).await?;
    let wanted: HashSet<Uuid> = ids.iter().copied().collect();
    let all = reader.read_ids(&wanted, Duration::from_secs(60)).await?;
    assert!(
        all,
        "{} of {MESSAGES} records read back over TLS",
        reader.records.len()
    );
    assert!(kafka.proxy.handshakes() > relay_handshakes);
    let order: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(n, id)| (*id, n)).collect();
    for r in &reader.records {
        let n = order[&r.outbox_id()?];
        assert_eq!(r.payload.as_deref(), Some(n.to_string().as_bytes()));
        assert_eq!(r.key.as_deref(), Some(format!("key-{}", n % 13).as_bytes()));
    }
    let out = relay.output();
    assert!(
        !out.contains("certificate verify failed"),
        "see {}",
        relay.log.display()
    );
    relay.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_broker_stops_the_relay_at_start() -> Result<()> {
    const MESSAGES: usize = 20;
    let db = TestDb::new().await?;
    let kafka = TlsBroker::start("kafka_tls-bad-ca").await?;
    let topic = common::unique_topic("tls-bad-ca");
    kafka.create_topic(&topic, 1).await?;
    db.enqueue_numbered(&topic, MESSAGES, 10).await?;

    let (exited, took, last) = run_refused(
        "kafka_tls-bad-ca-relay",
        &db,
        &kafka.proxy.addr(),
        ssl_args(&kafka.certs.other_ca()),
    )
    .await?;
    assert!(
        last.contains("certificate verify failed"),
        "last line of stderr: {last:?}"
    );
    assert!(
        kafka.proxy.failed_handshakes() >= 1,
        "the relay never tried a handshake with the proxy"
    );
    // Nothing reached the broker, nothing was marked.
    assert_eq!(kafka.proxy.bytes_from_clients(), 0);
    assert_all_pending(&db, MESSAGES).await?;
    eprintln!(
        "bad CA: the relay exited {} after {took:?}: {last}",
        exited.status
    );
    Ok(())
}

/// Incompressible and highly compressible payloads, with keys of both
/// kinds, enqueued with the outbox library; published with
/// `compression.type=zstd` through the proxy and read back byte-equal.
#[tokio::test]
async fn zstd_batches_come_back_byte_equal() -> Result<()> {
    const TEXT: usize = 2_000;
    const TEXT_SIZE: usize = 8 * 1024;
    const RANDOM: usize = 200;
    const RANDOM_SIZE: usize = 4 * 1024;
    let db = TestDb::new().await?;
    let kafka = TlsBroker::start("kafka_tls-zstd").await?;
    let topic = common::unique_topic("zstd");
    kafka.create_topic(&topic, 3).await?;

    let mut rng = rand::rng();
    let mut messages: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for n in 0..TEXT {
        let line = format!("{n:06} the quick brown fox jumps over the lazy dog; ");
        let payload: Vec<u8> = line.bytes().cycle().take(TEXT_SIZE).collect();
        messages.push((format!("text-{}", n % 17).into_bytes(), payload));
    }
    for _ in 0..RANDOM {
        let mut payload = vec![0u8; RANDOM_SIZE];
        rng.fill_bytes(&mut payload);
        let key = vec![0xff, 0, rng.random()];
        messages.push((key, payload));
    }
    let raw: usize = messages.iter().map(|(k, p)| k.len() + p.len()).sum();
    let random_bytes = (RANDOM * RANDOM_SIZE) as u64;

    let outbox = Outbox::new();
    let mut expected: HashMap<Uuid, (Vec<u8>, Vec<u8>)> = HashMap::new();
    // Interleave the two kinds in transactions of 100.
    let mut order: Vec<usize> = (0..messages.len()).collect();
    order.sort_by_key(|i| (i % 11, *i));
    for chunk in order.chunks(100) {
        let mut tx = db.pool.begin().await?;
        let batch = chunk
            .iter()
            .map(|&i| Message::new(&topic, messages[i].1.clone()).key(messages[i].0.clone()));
        let ids = outbox.enqueue_all(&mut *tx, batch).await?;
        tx.commit().await?;
        for (id, &i) in ids.into_iter().zip(chunk) {
            expected.insert(id.0, messages[i].clone());
        }
    }

    let mut args = ssl_args(&kafka.certs.ca());
    args.extend(["--kafka".into(), "compression.type=zstd".into()]);
    let mut relay = Relay::spawn(
        "kafka_tls-zstd-relay",
        &db.url,
        &kafka.proxy.addr(),
        &refs(&args),
    )?;
    db.wait_all_published(expected.len() as i64, Duration::from_secs(120))
        .await
        .with_context(|| format!("see {}", relay.log.display()))?;
    let sent = kafka.proxy.bytes_from_clients();
    eprintln!(
        "zstd: {} messages, {raw} bytes of keys and payloads, {sent} bytes sent through the proxy",
        expected.len()
    );
    // The random payloads cannot shrink; the text ones (16 MiB) shrink
    // to almost nothing. Uncompressed, the relay would have sent more
    // than `raw`.
    assert!(
        sent > random_bytes && sent < random_bytes + (raw as u64 - random_bytes) / 10,
        "{sent} bytes sent for {raw} bytes of keys and payloads ({random_bytes} incompressible)"
    );

    let mut reader = kafka.reader(&topic).await?;
    let wanted: HashSet<Uuid> = expected.keys().copied().collect();
    let all = reader.read_ids(&wanted, Duration::from_secs(120)).await?;
    assert!(
        all,
        "{} of {} records read back; see {}",
        reader.records.len(),
        expected.len(),
        relay.log.display()
    );
    for r in &reader.records {
        let id = r.outbox_id()?;
        let (key, payload) = &expected[&id];
        assert_eq!(r.key.as_ref(), Some(key), "key of {id}");
        assert!(
            r.payload.as_ref() == Some(payload),
            "payload of {id} differs: {} bytes read, {} enqueued",
            r.payload.as_ref().map_or(0, Vec::len),
            payload.len()
        );
    }
    relay.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

impl TlsBroker {
    /// Turns SASL on: stores SCRAM credentials for `users` (user,
    /// password, mechanism) while tansu runs without authentication, then
    /// restarts it with `--authentication` (its sqlite storage keeps the
    /// topics and the users) and waits until the first user's login over
    /// TLS gets metadata.
    async fn require_sasl(&mut self, users: &[(&str, &str, Scram)]) -> Result<()> {
        for (user, password, mechanism) in users {
            self.broker
                .create_scram_user(user, password, *mechanism)
                .await?;
        }
        self.broker.stop();
        self.broker.set_authentication(true);
        self.broker.spawn()?;
        let brokers = self.proxy.addr();
        let ca = path(&self.certs.ca());
        let (user, password, mechanism) = users[0];
        let settings = sasl_settings(&ca, mechanism.sasl_mechanism(), user, password);
        let log = self.broker.log();
        let broker = &mut self.broker;
        common::wait_for(
            "tansu to answer metadata after a SASL login",
            BROKER_TIMEOUT,
            || {
                let alive = broker.check_alive();
                let (brokers, settings) = (brokers.clone(), settings.clone());
                async move {
                    alive?;
                    let answered = tokio::task::spawn_blocking(move || {
                        let mut config = ClientConfig::new();
                        config.set("bootstrap.servers", &brokers);
                        for (k, v) in &settings {
                            config.set(k, v);
                        }
                        let producer: BaseProducer = config.create()?;
                        producer
                            .client()
                            .fetch_metadata(None, Duration::from_secs(2))
                            .map(drop)
                    })
                    .await?;
                    Ok(answered.ok())
                }
            },
        )
        .await
        .with_context(|| format!("restarting tansu with --authentication; see {log:?}"))
    }
}

/// librdkafka settings for SASL over TLS, trusting `ca`.
fn sasl_settings(ca: &str, mechanism: &str, user: &str, password: &str) -> Vec<(String, String)> {
    [
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", ca),
        ("sasl.mechanism", mechanism),
        ("sasl.username", user),
        ("sasl.password", password),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

/// The same as `--kafka KEY=VALUE` arguments.
fn kafka_args(settings: &[(String, String)]) -> Vec<String> {
    settings
        .iter()
        .flat_map(|(k, v)| ["--kafka".to_owned(), format!("{k}={v}")])
        .collect()
}

/// A broker requiring SASL behind the TLS proxy, with users `relay`
/// (SCRAM-SHA-512, `relay_password`) and `reader` (SCRAM-SHA-256,
/// `reader_password`), and `topic` with `messages` enqueued in `db`.
async fn sasl_setup(
    name: &str,
    db: &TestDb,
    topic: &str,
    messages: usize,
    relay_password: &str,
    reader_password: &str,
) -> Result<(TlsBroker, Vec<Uuid>)> {
    let mut kafka = TlsBroker::start_with(name, Storage::Sqlite).await?;
    kafka.create_topic(topic, 2).await?;
    kafka
        .require_sasl(&[
            ("relay", relay_password, Scram::Sha512),
            ("reader", reader_password, Scram::Sha256),
        ])
        .await?;
    let ids = db.enqueue_numbered(topic, messages, 20).await?;
    Ok((kafka, ids))
}

#[tokio::test]
async fn scram_over_tls_logs_in_and_publishes() -> Result<()> {
    const MESSAGES: usize = 100;
    let db = TestDb::new().await?;
    let topic = common::unique_topic("scram");
    let relay_password = format!("relay-secret-{}", random_suffix());
    let reader_password = format!("reader-secret-{}", random_suffix());
    let (kafka, ids) = sasl_setup(
        "kafka_tls-scram",
        &db,
        &topic,
        MESSAGES,
        &relay_password,
        &reader_password,
    )
    .await?;
    let ca = path(&kafka.certs.ca());

    let relay_settings = sasl_settings(&ca, "SCRAM-SHA-512", "relay", &relay_password);
    let mut relay = Relay::spawn(
        "kafka_tls-scram-relay",
        &db.url,
        &kafka.proxy.addr(),
        &refs(&kafka_args(&relay_settings)),
    )?;
    db.wait_all_published(MESSAGES as i64, Duration::from_secs(60))
        .await
        .with_context(|| format!("see {}", relay.log.display()))?;

    let reader_settings = sasl_settings(&ca, "SCRAM-SHA-256", "reader", &reader_password);
    let reader_settings: Vec<(&str, &str)> = reader_settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut reader =
        TopicReader::with_settings(&kafka.proxy.addr(), &topic, &reader_settings).await?;
    let wanted: HashSet<Uuid> = ids.iter().copied().collect();
    let all = reader.read_ids(&wanted, Duration::from_secs(60)).await?;
    assert!(
        all,
        "{} of {MESSAGES} records read back with SCRAM-SHA-256",
        reader.records.len()
    );
    relay.terminate(Duration::from_secs(20)).await?;
    let out = relay.output();
    assert!(
        !out.contains(&relay_password),
        "the SASL password appeared in {}",
        relay.log.display()
    );
    Ok(())
}

#[tokio::test]
async fn a_wrong_scram_password_stops_the_relay_at_start() -> Result<()> {
    const MESSAGES: usize = 20;
    let db = TestDb::new().await?;
    let topic = common::unique_topic("scram-wrong");
    let relay_password = format!("relay-secret-{}", random_suffix());
    let wrong_password = format!("wrong-secret-{}", random_suffix());
    let (kafka, _) = sasl_setup(
        "kafka_tls-scram-wrong",
        &db,
        &topic,
        MESSAGES,
        &relay_password,
        "unused",
    )
    .await?;
    let ca = path(&kafka.certs.ca());
    let mut kafka_settings = kafka_args(&sasl_settings(
        &ca,
        "SCRAM-SHA-512",
        "relay",
        &wrong_password,
    ));
    // librdkafka's security debugging on, to show that even then no
    // password is printed.
    kafka_settings.extend(["--kafka".into(), "debug=security,broker".into()]);
    let (exited, took, last) = run_refused(
        "kafka_tls-scram-wrong-relay",
        &db,
        &kafka.proxy.addr(),
        kafka_settings,
    )
    .await?;
    let all = format!("{}{}", exited.stdout, exited.stderr);
    eprintln!(
        "wrong SCRAM password: the relay exited {} after {took:?}: {last}",
        exited.status
    );
    assert!(
        !all.contains(&wrong_password) && !all.contains(&relay_password),
        "a SASL password appeared in the relay's output"
    );
    assert!(
        kafka.proxy.handshakes() >= 1,
        "no TLS handshake completed before SASL"
    );
    assert!(
        last.to_lowercase().contains("sasl") && last.to_lowercase().contains("authentication"),
        "last line of stderr: {last:?}"
    );
    assert_all_pending(&db, MESSAGES).await?;
    Ok(())
}

/// Every SASL mechanism and compression codec the relay documents is
/// built into this librdkafka: a producer with each is created (no broker
/// is contacted). Without the `ssl` and `zstd` features creating these
/// failed: the SASL ones with "No provider for SASL mechanism", zstd as an
/// unsupported value.
#[test]
fn librdkafka_has_every_sasl_mechanism_and_codec() {
    let unused = format!("127.0.0.1:{}", common::free_port().unwrap());
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &unused)
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", mechanism);
        if mechanism == "OAUTHBEARER" {
            // A token source that needs no identity provider.
            config
                .set("enable.sasl.oauthbearer.unsecure.jwt", "true")
                .set("sasl.oauthbearer.config", "principal=relay");
        } else {
            config
                .set("sasl.username", "relay")
                .set("sasl.password", "secret");
        }
        let created: Result<BaseProducer, _> = config.create();
        assert!(created.is_ok(), "{mechanism}: {:?}", created.err());
    }
    for codec in ["zstd", "lz4", "snappy", "gzip"] {
        let created: Result<BaseProducer, _> = ClientConfig::new()
            .set("bootstrap.servers", &unused)
            .set("compression.type", codec)
            .create();
        assert!(created.is_ok(), "{codec}: {:?}", created.err());
    }
}
