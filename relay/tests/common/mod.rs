//! Shared harness for the integration tests: a throw-away PostgreSQL
//! database, a tansu broker, `outbox-relay` processes, and a Kafka reader.
//!
//! Every test gets its own database and its own topic, so tests can run in
//! parallel. Processes are killed when their guard drops (also when a test
//! panics), and their output goes to `target/test-logs/` for debugging.
//!
//! The databases, the broker process and the child guards come from
//! `outbox-testkit`; what is here is what only the relay's tests need: the
//! relay's command line, Kafka-level readiness for the broker, and reading
//! topics back.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use outbox_testkit::{kafka, ChildGuard, LogMode, ScratchDb};
use sqlx::PgPool;
use uuid::Uuid;

// Not every test binary uses each of these either.
#[allow(unused_imports)]
pub use outbox_testkit::{free_port, random_suffix, Storage};

pub mod order;
mod reader;

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use reader::{id_counts, report_duplicates, Record, TopicReader};

/// The relay binary under test: this package's, or the one named by
/// `OUTBOX_TEST_RELAY_BIN` (to run the tests against another build).
pub fn relay_bin() -> PathBuf {
    std::env::var_os("OUTBOX_TEST_RELAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay")))
}

/// Relay flags that keep crash recovery fast: a killed relay's shards are
/// free again after 6 s, and a delivery gives up after 2 s.
pub const FAST_RECOVERY: &[&str] = &[
    "--lease",
    "6s",
    "--kafka",
    "message.timeout.ms=2000",
    "--poll-interval",
    "200ms",
];

/// How long a broker may take to answer metadata after a start, and a new
/// topic to show its partitions.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// `target/test-logs`, created if needed.
pub fn log_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("test-logs"))
        .unwrap_or_else(|| PathBuf::from("target/test-logs"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// `target/test-logs/<name>.log`.
pub fn log_path(name: &str) -> PathBuf {
    log_dir().join(format!("{name}.log"))
}

/// `outbox_testkit::wait_for` with the tests' error type, so a check
/// written with `?` on any error needs no annotation: polls `check` every
/// 50 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    outbox_testkit::wait_for(what, timeout, check).await
}

// ---------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------

/// A database of its own for one test (an `outbox_testkit::ScratchDb`),
/// dropped (WITH (FORCE)) when this guard drops.
pub struct TestDb {
    /// A pool on the test database.
    pub pool: PgPool,
    /// The test database's URL, for the relay.
    pub url: String,
    /// The database's name.
    pub name: String,
    /// Drops the database when the guard drops.
    _scratch: ScratchDb,
}

impl TestDb {
    /// A fresh database with the outbox schema applied.
    pub async fn new() -> Result<Self> {
        Ok(Self::from(ScratchDb::new().await?))
    }

    /// A fresh, empty database: no outbox schema.
    pub async fn without_schema() -> Result<Self> {
        Ok(Self::from(ScratchDb::without_schema().await?))
    }

    /// Enqueues `count` messages to `topic`, `tx_size` per transaction;
    /// message n has payload `n` and key `key-{n % 13}`. Returns the ids in
    /// enqueue order.
    pub async fn enqueue_numbered(
        &self,
        topic: &str,
        count: usize,
        tx_size: usize,
    ) -> Result<Vec<Uuid>> {
        let outbox = outbox::Outbox::new();
        let mut ids = Vec::with_capacity(count);
        while ids.len() < count {
            let first = ids.len();
            let batch = (first..count.min(first + tx_size))
                .map(|n| outbox::Message::new(topic, n.to_string()).key(format!("key-{}", n % 13)));
            let mut tx = self.pool.begin().await?;
            ids.extend(
                outbox
                    .enqueue_all(&mut *tx, batch)
                    .await?
                    .into_iter()
                    .map(|id| id.0),
            );
            tx.commit().await?;
        }
        Ok(ids)
    }

    /// Counts of `outbox.message` rows by status.
    pub async fn status_counts(&self) -> Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM outbox.message GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Waits until no message is pending and `published` are published.
    pub async fn wait_all_published(&self, published: i64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let counts = self.status_counts().await?;
            if counts.get("published").copied().unwrap_or(0) == published
                && counts.get("pending").copied().unwrap_or(0) == 0
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("after {timeout:?}, expected {published} published and none pending; status counts: {counts:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The relay names currently holding shards, with how many each holds.
    pub async fn shard_owners(&self) -> Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT coalesce(r.name, l.owner::text), count(*) \
             FROM outbox.shard_lease l LEFT JOIN outbox.relay r ON r.id = l.owner \
             WHERE l.owner IS NOT NULL AND l.lease_until > now() \
             GROUP BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }
}

impl From<ScratchDb> for TestDb {
    fn from(scratch: ScratchDb) -> Self {
        TestDb {
            pool: scratch.pool().clone(),
            url: scratch.url().to_owned(),
            name: scratch.name().to_owned(),
            _scratch: scratch,
        }
    }
}

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

/// An `outbox_testkit::Broker` whose starts wait until it answers Kafka
/// metadata requests, not just until its port accepts, and whose topics
/// are awaited in the metadata. Each start logs to
/// `target/test-logs/<name>-tansu-<n>.log`. Killed when dropped.
pub struct Broker {
    inner: outbox_testkit::Broker,
}

impl Broker {
    /// A broker, started, answering metadata requests.
    pub async fn start_new(name: &str, storage: Storage) -> Result<Self> {
        let inner = outbox_testkit::Broker::builder()
            .storage(storage)
            .log_dir(log_dir())
            .log_stem(format!("{name}-tansu"))
            .build()?;
        let mut broker = Broker { inner };
        broker.start().await?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`, for `--brokers` and `bootstrap.servers`.
    pub fn addr(&self) -> String {
        self.inner.addr()
    }

    /// Starts the broker (again, on the same port and data) and waits until
    /// it answers Kafka metadata requests (30 s at most); fails at once if
    /// it exits meanwhile, leaving it stopped either way.
    pub async fn start(&mut self) -> Result<()> {
        self.inner.spawn()?;
        let addr = self.inner.addr();
        let inner = &mut self.inner;
        let ready =
            kafka::wait_for_metadata_while(&addr, BROKER_TIMEOUT, || inner.check_alive()).await;
        if ready.is_err() {
            self.inner.stop();
        }
        let log = self.inner.log().unwrap_or_default();
        ready.with_context(|| format!("starting tansu; see {}", log.display()))
    }

    /// Kills the broker (SIGKILL) and waits for it to exit. The data folder
    /// stays, so [`start`](Self::start) brings back the same topics with
    /// sqlite storage.
    pub fn stop(&mut self) {
        self.inner.stop();
    }

    /// Whether the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }

    /// Creates `topic` with `partitions` partitions through the tansu CLI
    /// and waits (30 s at most) until the metadata shows them.
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        self.inner.create_topic(topic, partitions).await?;
        kafka::wait_for_partitions(&self.addr(), topic, partitions, BROKER_TIMEOUT).await?;
        Ok(())
    }
}

/// A topic name of its own for one test.
pub fn unique_topic(test: &str) -> String {
    format!("{test}-{}", random_suffix())
}

// ---------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------

/// A running `outbox-relay`: its `ChildGuard` (kill, terminate, pause,
/// resume, exit status, SIGKILL on drop) plus where its output goes.
pub struct Relay {
    child: ChildGuard,
    /// The file its stdout and stderr go to.
    pub log: PathBuf,
}

impl Relay {
    /// Starts `outbox-relay --database-url DB --brokers BROKERS
    /// --http-listen 127.0.0.1:0 EXTRA...`, its output in
    /// `target/test-logs/<log_name>.log`.
    pub fn spawn(
        log_name: &str,
        database_url: &str,
        brokers: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::spawn_command(log_name, &mut relay_command(database_url, brokers, extra))
    }

    /// Starts `cmd` (usually a [`relay_command`] with something changed),
    /// its output in `target/test-logs/<log_name>.log`.
    pub fn spawn_command(log_name: &str, cmd: &mut Command) -> Result<Self> {
        let log = log_path(log_name);
        let child = ChildGuard::spawn_logged("outbox-relay", cmd, &log, LogMode::Truncate)?;
        Ok(Relay { child, log })
    }

    /// The relay's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of its `/healthz` and `/metrics` endpoint, from its
    /// start-up line (waits for it, 30 s at most).
    pub async fn http_addr(&self) -> Result<String> {
        wait_for("the relay's start-up line", Duration::from_secs(30), || {
            let out = self.output();
            async move {
                Ok(out
                    .lines()
                    .find(|l| l.contains("relay started"))
                    .and_then(|l| {
                        let at = l.find("http=")? + "http=".len();
                        l[at..].split_whitespace().next().map(str::to_owned)
                    }))
            }
        })
        .await
    }
}

impl Deref for Relay {
    type Target = ChildGuard;

    fn deref(&self) -> &ChildGuard {
        &self.child
    }
}

impl DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut ChildGuard {
        &mut self.child
    }
}

/// The relay command line every test starts from.
pub fn relay_command(database_url: &str, brokers: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(relay_bin());
    cmd.args(["--database-url", database_url])
        .args(["--brokers", brokers])
        .args(["--http-listen", "127.0.0.1:0"])
        .args(extra);
    if !extra.contains(&"--retention") {
        // Most tests look at the published rows (when, by which relay), so
        // they keep them; the default deletes them on acknowledgement.
        cmd.args(["--retention", "1h"]);
    }
    isolate_env(&mut cmd);
    cmd
}

/// Keeps the developer's own relay settings out of the test.
pub fn isolate_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if key.starts_with("OUTBOX_") || key == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env(
            "RUST_LOG",
            "info,outbox_relay=debug,tokio_cron_scheduler=warn",
        );
    }
    // Plain text in the log files.
    cmd.env("NO_COLOR", "1");
}

/// What a relay run that was expected to exit left behind.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `outbox-relay ARGS` to completion, failing if it takes longer than
/// `timeout`. Output is also written to `target/test-logs/<log_name>.log`.
pub async fn run_relay_to_exit(log_name: &str, args: &[&str], timeout: Duration) -> Result<Exited> {
    let mut cmd = Command::new(relay_bin());
    cmd.args(args);
    isolate_env(&mut cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| anyhow!("outbox-relay {args:?} was still running after {timeout:?}"))?
        .context("running outbox-relay")?;
    let exited = Exited {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    let _ = std::fs::write(
        log_path(log_name),
        format!(
            "args: {args:?}\nstatus: {} after {:?}\n--- stdout\n{}\n--- stderr\n{}\n",
            exited.status,
            started.elapsed(),
            exited.stdout,
            exited.stderr
        ),
    );
    Ok(exited)
}
