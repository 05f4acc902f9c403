use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::{free_port, random_suffix, wait_for, ChildGuard, Error, LogMode, Result};

/// How long [`Broker::start`] waits for the port by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Broker::create_topic`] lets `tansu topic create` run (and
/// [`Broker::create_scram_user`] `tansu user create`).
pub const CREATE_TOPIC_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the tansu binary is: `TANSU_BIN` if set, else `tansu` on `PATH`,
/// else the copy the project's setup installs,
/// `$HOME/.cache/outbox/tansu-0.6.0/bin/tansu` (returned even when it is
/// missing; starting it then fails with [`Error::TansuNotFound`]).
pub fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/outbox/tansu-0.6.0/bin/tansu")
}

/// How the broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In memory (`memory://tansu/`): fast, lost when the broker stops.
    Memory,
    /// A SQLite file in the data folder (`sqlite://tansu.db`): survives a
    /// restart.
    Sqlite,
}

/// Where each start's output goes: `file` (appended to) if set, else
/// `{dir}/{stem}-{start}.log` with `dir` defaulting to the data folder.
#[derive(Debug, Clone)]
struct Logs {
    dir: Option<PathBuf>,
    stem: String,
    file: Option<PathBuf>,
}

impl Logs {
    fn path(&self, data: &Path, start: u32) -> PathBuf {
        match &self.file {
            Some(file) => file.clone(),
            None => {
                let dir = self.dir.as_deref().unwrap_or(data);
                dir.join(format!("{}-{start}.log", self.stem))
            }
        }
    }
}

/// A tansu broker process on a port of its own, in a data folder of its
/// own. SIGKILLed when the guard drops; a data folder the guard made up is
/// deleted then too.
///
/// The port and the folder stay the same across [`stop`](Self::stop) and
/// [`start`](Self::start), so a restarted broker with [`Storage::Sqlite`]
/// comes back with its topics and records.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    port: u16,
    storage: Storage,
    data: PathBuf,
    remove_data: bool,
    logs: Logs,
    env_remove: Vec<String>,
    start_timeout: Duration,
    advertised: Option<String>,
    authentication: bool,
    child: Option<ChildGuard>,
    starts: u32,
}

/// How to set up a [`Broker`]; see each method for its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct BrokerBuilder {
    bin: Option<PathBuf>,
    storage: Storage,
    data_dir: Option<PathBuf>,
    logs: Logs,
    env_remove: Vec<String>,
    start_timeout: Duration,
    advertised: Option<String>,
    authentication: bool,
}

impl BrokerBuilder {
    /// The tansu binary. Default: [`tansu_bin()`].
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// How the broker keeps its data. Default: [`Storage::Memory`].
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// The broker's working folder (created if needed, kept afterwards).
    /// Default: a new folder under the system's temp folder, deleted when
    /// the guard drops.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Writes each start's output to `{dir}/{stem}-{n}.log` (n counts
    /// starts from 1), so a restart does not wipe the first run's log.
    /// Default: the data folder.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.logs.dir = Some(dir.into());
        self
    }

    /// The `{stem}` of [`log_dir`](Self::log_dir)'s file names. Default:
    /// `tansu`.
    pub fn log_stem(mut self, stem: impl Into<String>) -> Self {
        self.logs.stem = stem.into();
        self
    }

    /// Appends the output of every start to this one file instead of
    /// [`log_dir`](Self::log_dir)'s.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.logs.file = Some(path.into());
        self
    }

    /// Removes `key` from the broker's environment (e.g. `RUST_LOG`: tansu
    /// logs every request at `info`). Default: the whole environment is
    /// inherited.
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// How long [`Broker::start`] waits for the port to accept. Default:
    /// [`DEFAULT_START_TIMEOUT`] (30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The address (`host:port`) the broker advertises in its metadata,
    /// which is where clients go after bootstrapping: say, a TLS proxy in
    /// front of it (`outbox_testkit::tls::TlsProxy`, feature `tls`).
    /// Default: its own [`addr`](Broker::addr). It still listens on its
    /// own port. See also [`Broker::set_advertised_listener`].
    pub fn advertised_listener(mut self, addr: impl Into<String>) -> Self {
        self.advertised = Some(addr.into());
        self
    }

    /// Starts tansu with `--authentication`: every request but
    /// `ApiVersions`, `SaslHandshake` and `SaslAuthenticate` needs a SASL
    /// login first: SCRAM-SHA-256 or SCRAM-SHA-512, checked against the
    /// users of [`Broker::create_scram_user`] (tansu 0.6.0 is built without
    /// PLAIN and refuses OAUTHBEARER logins). The tansu CLI cannot log in,
    /// so create topics and users
    /// before switching it on ([`Broker::set_authentication`], then
    /// [`Broker::restart`] with [`Storage::Sqlite`]). Default: off.
    pub fn authentication(mut self, on: bool) -> Self {
        self.authentication = on;
        self
    }

    /// Picks the port ([`free_port`]) and creates the data folder; does
    /// not start the broker. Fails with [`Error::Io`].
    pub fn build(self) -> Result<Broker> {
        let (data, remove_data) = match self.data_dir {
            Some(dir) => (dir, false),
            None => (
                std::env::temp_dir().join(format!("outbox-tansu-{}", random_suffix())),
                true,
            ),
        };
        std::fs::create_dir_all(&data)
            .map_err(Error::io(format!("creating {}", data.display())))?;
        Ok(Broker {
            bin: self.bin.unwrap_or_else(tansu_bin),
            port: free_port()?,
            storage: self.storage,
            data,
            remove_data,
            logs: self.logs,
            env_remove: self.env_remove,
            start_timeout: self.start_timeout,
            advertised: self.advertised,
            authentication: self.authentication,
            child: None,
            starts: 0,
        })
    }

    /// [`build`](Self::build), then [`Broker::start`].
    pub async fn start(self) -> Result<Broker> {
        let mut broker = self.build()?;
        broker.start().await?;
        Ok(broker)
    }
}

impl Broker {
    /// Options for a broker; see [`BrokerBuilder`].
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            bin: None,
            storage: Storage::Memory,
            data_dir: None,
            logs: Logs {
                dir: None,
                stem: "tansu".to_owned(),
                file: None,
            },
            env_remove: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
            advertised: None,
            authentication: false,
        }
    }

    /// A broker with every default but `storage`, started.
    pub async fn start_new(storage: Storage) -> Result<Self> {
        Self::builder().storage(storage).start().await
    }

    /// `127.0.0.1:PORT`, for `--brokers` and `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the broker advertises in its metadata (`host:port`): the
    /// [`BrokerBuilder::advertised_listener`] if one was set, else
    /// [`addr`](Self::addr).
    pub fn advertised_addr(&self) -> String {
        self.advertised.clone().unwrap_or_else(|| self.addr())
    }

    /// Sets (or with `None` clears) the address advertised from the next
    /// start on, for when it is known only after [`BrokerBuilder::build`]
    /// picked the port: a proxy in front of the broker needs the broker's
    /// address first. See [`BrokerBuilder::advertised_listener`].
    pub fn set_advertised_listener(&mut self, addr: Option<String>) {
        self.advertised = addr;
    }

    /// Switches [`BrokerBuilder::authentication`] on or off from the next
    /// start on.
    pub fn set_authentication(&mut self, on: bool) {
        self.authentication = on;
    }

    /// The process id while the broker runs (to pause it, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// The broker's working folder.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The log file of the latest start (`None` before the first).
    pub fn log(&self) -> Option<PathBuf> {
        (self.starts > 0).then(|| self.logs.path(&self.data, self.starts))
    }

    /// Starts the broker process and returns at once, without waiting for
    /// it to listen (see [`start`](Self::start) for that). A broker that
    /// exited by itself may be spawned again. Fails with
    /// [`Error::AlreadyRunning`], [`Error::TansuNotFound`] or
    /// [`Error::Io`].
    pub fn spawn(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::AlreadyRunning("tansu".into()));
        }
        // A broker that exited by itself is reaped and started afresh.
        self.stop();
        self.starts += 1;
        let url = format!("tcp://{}", self.addr());
        let advertised = format!("tcp://{}", self.advertised_addr());
        let storage = match self.storage {
            Storage::Memory => "memory://tansu/",
            // Relative to the working directory, which is the data folder.
            Storage::Sqlite => "sqlite://tansu.db",
        };
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", storage])
            .current_dir(&self.data);
        if self.authentication {
            cmd.arg("--authentication");
        }
        for key in &self.env_remove {
            cmd.env_remove(key);
        }
        let log = self.logs.path(&self.data, self.starts);
        let mode = match self.logs.file {
            Some(_) => LogMode::Append,
            None => LogMode::Truncate,
        };
        match ChildGuard::spawn_logged("tansu", &mut cmd, &log, mode) {
            Ok(child) => self.child = Some(child),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::TansuNotFound(self.bin.clone()));
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Starts the broker (again, on the same port and data) and waits until
    /// its port accepts connections, for the builder's start timeout (30 s
    /// by default). Kafka requests may need a moment more; a client's
    /// metadata request is the surer sign.
    ///
    /// Fails, leaving the broker stopped, with [`Error::Exited`] if tansu
    /// exits meanwhile, [`Error::Timeout`] (naming the log), or what
    /// [`spawn`](Self::spawn) fails with.
    pub async fn start(&mut self) -> Result<()> {
        self.spawn()?;
        let addr = self.addr();
        let (timeout, log) = (self.start_timeout, self.log());
        let what = format!("tansu to accept connections on {addr}");
        let result = wait_for(&what, timeout, || {
            let alive = self.check_alive();
            let addr = addr.clone();
            async move {
                alive?;
                Ok(TcpStream::connect(&addr).await.ok().map(drop))
            }
        })
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stop();
                Err(match e {
                    Error::Timeout { what, after, .. } => Error::Timeout { what, after, log },
                    e => e,
                })
            }
        }
    }

    /// SIGKILLs the broker and reaps it. The data folder stays, so
    /// [`start`](Self::start) brings back the same topics with
    /// [`Storage::Sqlite`]. Does nothing to a stopped broker.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start().await
    }

    /// Whether the broker process is alive (a paused one counts).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Fails with [`Error::NotRunning`] when the broker was not started or
    /// was stopped, and with [`Error::Exited`] (naming the log) when it
    /// exited by itself.
    pub fn check_alive(&mut self) -> Result<()> {
        match &mut self.child {
            Some(child) => child.check_alive(),
            None => Err(Error::NotRunning("tansu".into())),
        }
    }

    /// Creates `topic` with `partitions` partitions through
    /// `tansu topic create`. Fails with [`Error::CreateTopic`] (with the
    /// CLI's output), [`Error::Timeout`] after [`CREATE_TOPIC_TIMEOUT`] or
    /// [`Error::Io`]. Not safe to retry blindly: a second call for a topic
    /// that now exists fails.
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let partitions = partitions.to_string();
        let args = ["topic", "create", "--partitions", &partitions, topic];
        match self
            .cli(&args, &format!("tansu topic create {topic}"))
            .await?
        {
            Ok(()) => Ok(()),
            Err((status, output)) => Err(Error::CreateTopic {
                topic: topic.to_owned(),
                status,
                output,
            }),
        }
    }

    /// Stores SCRAM credentials for `user` with `password` through
    /// `tansu user create` (`AlterUserScramCredentials`), for a broker
    /// started with [`BrokerBuilder::authentication`] to check logins
    /// against. The broker must run without authentication meanwhile.
    /// Fails with [`Error::Io`] (with the CLI's output) or
    /// [`Error::Timeout`]. Safe to repeat: the credentials are replaced.
    pub async fn create_scram_user(
        &self,
        user: &str,
        password: &str,
        mechanism: Scram,
    ) -> Result<()> {
        let args = [
            "user",
            "create",
            "--mechanism",
            mechanism.cli_name(),
            user,
            password,
        ];
        let what = format!("tansu user create {user}");
        match self.cli(&args, &what).await? {
            Ok(()) => Ok(()),
            Err((status, output)) => Err(Error::Io {
                what,
                source: std::io::Error::other(format!("{status}: {output}")),
            }),
        }
    }

    /// Runs `tansu ARGS[0] ARGS[1] --broker tcp://ADDR ARGS[2..]` for
    /// [`CREATE_TOPIC_TIMEOUT`] at most: `Ok(Err(status, output))` when it
    /// ran and failed.
    async fn cli(
        &self,
        args: &[&str],
        what: &str,
    ) -> Result<Result<(), (std::process::ExitStatus, String)>> {
        let (command, rest) = args.split_at(2.min(args.len()));
        let output = tokio::process::Command::new(&self.bin)
            .args(command)
            .arg("--broker")
            .arg(format!("tcp://{}", self.addr()))
            .args(rest)
            .current_dir(&self.data)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(CREATE_TOPIC_TIMEOUT, output)
            .await
            .map_err(|_| Error::Timeout {
                what: what.to_owned(),
                after: CREATE_TOPIC_TIMEOUT,
                log: None,
            })?
            .map_err(Error::io(format!("running {}", self.bin.display())))?;
        if output.status.success() {
            return Ok(Ok(()));
        }
        Ok(Err((
            output.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )))
    }
}

/// A SCRAM mechanism for [`Broker::create_scram_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scram {
    /// `SCRAM-SHA-256`.
    Sha256,
    /// `SCRAM-SHA-512`.
    Sha512,
}

impl Scram {
    /// The `sasl.mechanism` value librdkafka knows it by.
    pub fn sasl_mechanism(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn cli_name(self) -> &'static str {
        match self {
            Scram::Sha256 => "scram256",
            Scram::Sha512 => "scram512",
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if self.remove_data {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_numbered_or_appended() {
        let mut broker = Broker::builder()
            .log_dir("/logs")
            .log_stem("t1-tansu")
            .build()
            .unwrap();
        assert_eq!(broker.log(), None);
        broker.starts = 2;
        assert_eq!(broker.log(), Some(PathBuf::from("/logs/t1-tansu-2.log")));
        let mut broker = Broker::builder()
            .log_file("/logs/tansu.log")
            .build()
            .unwrap();
        broker.starts = 3;
        assert_eq!(broker.log(), Some(PathBuf::from("/logs/tansu.log")));
    }
}
