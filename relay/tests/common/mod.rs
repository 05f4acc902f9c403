//! Shared harness for the integration tests: a throw-away PostgreSQL
//! database, a tansu broker, `outbox-relay` processes, and a Kafka reader.
//!
//! Every test gets its own database and its own topic, so tests can run in
//! parallel. Processes are killed when their guard drops (also when a test
//! panics), and their output goes to `target/test-logs/` for debugging.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

pub mod order;

/// The relay binary under test: this package's, or the one named by
/// `OUTBOX_TEST_RELAY_BIN` (to run the tests against another build).
pub fn relay_bin() -> PathBuf {
    std::env::var_os("OUTBOX_TEST_RELAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay")))
}

/// Admin database used when `OUTBOX_TEST_DATABASE_URL` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

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

/// Random lowercase hex, for names that must not collide between tests or
/// between concurrent runs.
pub fn random_suffix() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// A TCP port nothing listens on right now.
///
/// Taken below the kernel's ephemeral range where possible: a broker that
/// is stopped and started again on its port must find it still free, and a
/// port in the ephemeral range can meanwhile become the local end of some
/// outgoing connection (even a client's own reconnect attempt to that very
/// port, which then connects to itself).
pub fn free_port() -> Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 11_000 {
        for _ in 0..200 {
            let port = rand::rng().random_range(10_000..ephemeral_low);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

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

/// A log file under `target/test-logs`, truncated.
pub fn log_file(name: &str) -> Result<(File, PathBuf)> {
    let path = log_dir().join(format!("{name}.log"));
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok((file, path))
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after
/// `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------

/// The admin URL tests create their databases through.
pub fn admin_url() -> String {
    std::env::var("OUTBOX_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .ok_or_else(|| anyhow!("not a URL: {url}"))?
        + 3;
    let host_and_path = &base[scheme_end..];
    let host = match host_and_path.find('/') {
        Some(slash) => &host_and_path[..slash],
        None => host_and_path,
    };
    let mut out = format!("{}{host}/{db}", &base[..scheme_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A database of its own for one test, dropped (WITH (FORCE)) when this
/// guard drops.
pub struct TestDb {
    /// A pool on the test database.
    pub pool: PgPool,
    /// The test database's URL, for the relay.
    pub url: String,
    /// The database's name.
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// A fresh database with the outbox schema applied.
    pub async fn new() -> Result<Self> {
        let db = Self::without_schema().await?;
        outbox::migrate(&db.pool)
            .await
            .context("outbox::migrate on the test database")?;
        Ok(db)
    }

    /// A fresh, empty database: no outbox schema.
    pub async fn without_schema() -> Result<Self> {
        let admin_url = admin_url();
        let name = format!("outbox_test_{}", random_suffix());
        let mut admin = PgConnection::connect(&admin_url).await.with_context(|| {
            format!("connecting to the admin database {admin_url} (set OUTBOX_TEST_DATABASE_URL)")
        })?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(TestDb {
            pool,
            url,
            name,
            admin_url,
        })
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

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block: do the
        // cleanup on a thread with a runtime of its own and wait for it.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

/// Where the tansu binary is: `TANSU_BIN`, `tansu` on PATH, or the copy
/// the project's setup installs under `~/.cache/outbox`.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return Ok(PathBuf::from(bin));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let candidate = Path::new(&home).join(".cache/outbox/tansu-0.6.0/bin/tansu");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("tansu not found: set TANSU_BIN, put tansu on PATH, or install it to ~/.cache/outbox/tansu-0.6.0/bin/tansu")
}

/// How the broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In memory: fast, lost when the broker stops.
    Memory,
    /// A SQLite file in the broker's temp dir: survives a restart.
    Sqlite,
}

/// A tansu broker on a port of its own. Killed when dropped.
pub struct Broker {
    name: String,
    port: u16,
    storage: Storage,
    data: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Broker {
    /// A broker, started, answering metadata requests.
    pub async fn start_new(name: &str, storage: Storage) -> Result<Self> {
        let mut broker = Self::new_stopped(name, storage)?;
        broker.start().await?;
        Ok(broker)
    }

    /// A broker with a port and a data folder, not started yet.
    pub fn new_stopped(name: &str, storage: Storage) -> Result<Self> {
        Ok(Broker {
            name: name.to_owned(),
            port: free_port()?,
            storage,
            data: tempfile::Builder::new()
                .prefix("outbox-tansu-")
                .tempdir()
                .context("creating the broker's data folder")?,
            child: None,
            starts: 0,
        })
    }

    /// `127.0.0.1:PORT`, for `--brokers` and `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again, on the same port and data) and waits until
    /// it answers Kafka metadata requests (30 s at most).
    pub async fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("broker {} is already running", self.name);
        }
        self.starts += 1;
        // Each start gets its own log so a restart does not wipe the first.
        let (log, path) = log_file(&format!("{}-tansu-{}", self.name, self.starts))?;
        let url = format!("tcp://{}", self.addr());
        let storage = match self.storage {
            Storage::Memory => "memory://tansu/".to_owned(),
            // Relative to the working directory, which is the data folder.
            Storage::Sqlite => "sqlite://tansu.db".to_owned(),
        };
        let child = Command::new(tansu_bin()?)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .current_dir(self.data.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tansu")?;
        self.child = Some(child);
        let addr: SocketAddr = self.addr().parse()?;
        let result = wait_for(
            "the broker to answer metadata",
            Duration::from_secs(30),
            || {
                let brokers = self.addr();
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                let path = path.clone();
                async move {
                    if let Some(status) = exited {
                        bail!("tansu exited at start ({status}); see {}", path.display());
                    }
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                        return Ok(None);
                    }
                    let ok = tokio::task::spawn_blocking(move || metadata_ok(&brokers)).await?;
                    Ok(ok.then_some(()))
                }
            },
        )
        .await;
        if result.is_err() {
            self.stop();
        }
        result
    }

    /// Kills the broker (SIGKILL) and waits for it to exit. The data folder
    /// stays, so [`start`](Self::start) brings back the same topics with
    /// sqlite storage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Creates `topic` with `partitions` partitions through the tansu CLI.
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let output = tokio::process::Command::new(tansu_bin()?)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.addr()))
            .args(["--partitions", &partitions.to_string(), topic])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), output)
            .await
            .context("tansu topic create timed out")??;
        if !output.status.success() {
            bail!(
                "tansu topic create {topic} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let brokers = self.addr();
        let name = topic.to_owned();
        wait_for(
            "the new topic in the metadata",
            Duration::from_secs(30),
            || {
                let brokers = brokers.clone();
                let name = name.clone();
                async move {
                    let n = tokio::task::spawn_blocking(move || partition_count(&brokers, &name))
                        .await??;
                    Ok((n == partitions as usize).then_some(()))
                }
            },
        )
        .await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A topic name of its own for one test.
pub fn unique_topic(test: &str) -> String {
    format!("{test}-{}", random_suffix())
}

fn metadata_ok(brokers: &str) -> bool {
    let producer: Result<BaseProducer, _> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("reconnect.backoff.max.ms", "200")
        .create();
    match producer {
        Ok(p) => p
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok(),
        Err(_) => false,
    }
}

fn partition_count(brokers: &str, topic: &str) -> Result<usize> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0))
}

// ---------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------

/// A running `outbox-relay`. SIGKILLed when dropped.
pub struct Relay {
    child: Child,
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
        let (log, path) = log_file(log_name)?;
        let mut cmd = relay_command(database_url, brokers, extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting outbox-relay")?;
        Ok(Relay { child, log: path })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the relay with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the relay to exit,
    /// returning its exit status. Kills it and fails if it does not exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the relay had already exited ({status}) before SIGTERM; see {}",
                self.log.display()
            );
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .context("sending SIGTERM")?;
        let result = wait_for("the relay to exit after SIGTERM", timeout, || {
            let status = self.child.try_wait();
            async move { Ok(status?) }
        })
        .await;
        if result.is_err() {
            self.kill();
        }
        result
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

    /// Stops the process (SIGSTOP), as a GC pause or a frozen VM would.
    pub fn pause(&self) -> Result<()> {
        signal(self.child.id(), nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        signal(self.child.id(), nix::sys::signal::Signal::SIGCONT)
    }

    /// Its exit status, if it exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .with_context(|| format!("sending {sig} to {pid}"))
}

/// `GET http://ADDR/healthz`: the status code and the body.
pub async fn get_healthz(addr: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
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
    let (_, path) = log_file(log_name)?;
    let _ = std::fs::write(
        &path,
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

// ---------------------------------------------------------------------------
// Consumer
// ---------------------------------------------------------------------------

/// One record read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers in record order (names may repeat); a null value is `None`.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The headers as a map (the last value wins on repeated names).
    pub fn header_map(&self) -> BTreeMap<String, Option<Vec<u8>>> {
        self.headers.iter().cloned().collect()
    }

    /// Headers that are not the relay's own `outbox-*` ones, in order.
    pub fn user_headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.headers
            .iter()
            .filter(|(n, _)| !n.starts_with(outbox::headers::RESERVED_PREFIX))
            .cloned()
            .collect()
    }

    /// The `outbox-id` header as a UUID.
    pub fn outbox_id(&self) -> Result<Uuid> {
        let raw = self.header(outbox::headers::ID).ok_or_else(|| {
            anyhow!(
                "record {}/{} has no outbox-id header",
                self.partition,
                self.offset
            )
        })?;
        Ok(Uuid::parse_str(std::str::from_utf8(raw)?)?)
    }
}

/// Reads a topic from the beginning of every partition.
pub struct TopicReader {
    consumer: StreamConsumer,
    topic: String,
    /// Everything read so far, in arrival order (offset order within a
    /// partition).
    pub records: Vec<Record>,
}

impl TopicReader {
    /// A reader of `topic` (which must exist) on `brokers`.
    pub async fn new(brokers: &str, topic: &str) -> Result<Self> {
        let partitions = {
            let brokers = brokers.to_owned();
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || partition_count(&brokers, &topic)).await??
        };
        if partitions == 0 {
            bail!("topic {topic} does not exist on {brokers}");
        }
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("outbox-test-{}", random_suffix()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("reconnect.backoff.max.ms", "500")
            .create()
            .context("creating the test consumer")?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(TopicReader {
            consumer,
            topic: topic.to_owned(),
            records: Vec::new(),
        })
    }

    /// Reads until `done(&records)` holds or `timeout` passes; returns
    /// whether `done` held. What was read stays in `self.records` either way.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.records) {
                return Ok(true);
            }
            let next = tokio::time::timeout_at(deadline, self.consumer.recv()).await;
            let Ok(next) = next else {
                return Ok(done(&self.records));
            };
            match next {
                Ok(m) => {
                    let headers = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default();
                    self.records.push(Record {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
                // Transient consumer errors (broker restarting) are retried
                // by librdkafka; keep reading.
                Err(e) => eprintln!("test consumer on {}: {e}", self.topic),
            }
        }
    }

    /// Reads until every id in `ids` was seen at least once, or `timeout`.
    pub async fn read_ids(
        &mut self,
        ids: &std::collections::HashSet<Uuid>,
        timeout: Duration,
    ) -> Result<bool> {
        let mut seen = std::collections::HashSet::new();
        let mut counted = 0;
        self.read_until(timeout, |records| {
            for r in &records[counted..] {
                if let Ok(id) = r.outbox_id() {
                    if ids.contains(&id) {
                        seen.insert(id);
                    }
                }
            }
            counted = records.len();
            seen.len() == ids.len()
        })
        .await
    }
}

/// Counts how often each `outbox-id` occurs in `records`; fails on a record
/// without one.
pub fn id_counts(records: &[Record]) -> Result<BTreeMap<Uuid, usize>> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.outbox_id()?).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Prints how many records were re-sends of an id already read.
pub fn report_duplicates(test: &str, records: &[Record]) -> Result<usize> {
    let counts = id_counts(records)?;
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let ids_twice = counts.values().filter(|c| **c > 1).count();
    eprintln!(
        "{test}: {} records, {} distinct ids, {duplicates} duplicate records ({ids_twice} ids delivered more than once)",
        records.len(),
        counts.len()
    );
    Ok(duplicates)
}
