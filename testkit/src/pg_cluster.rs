use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Pid, User};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::{free_port, random_suffix, wait_for, ChildGuard, Error, LogMode, Result};

/// How long [`PgClusterBuilder::start`] waits for the new server to accept
/// connections by default.
pub const PG_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a programme of the set-up (`initdb`) may run.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The superuser every cluster has.
pub const PG_SUPERUSER: &str = "postgres";

/// Where PostgreSQL's programs (`initdb`, `postgres`) are:
/// `OUTBOX_TEST_PG_BIN` if set, else the folder of `initdb` on `PATH`, else
/// the newest `/usr/lib/postgresql/<version>/bin` (Debian and Ubuntu),
/// else `/usr/lib/postgresql/15/bin` (returned even when missing; starting
/// a cluster then fails naming it).
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTBOX_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| d.join("initdb").is_file()) {
            return dir;
        }
    }
    let newest = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max();
    newest
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Who may connect over TCP and how: the `host…` lines of the cluster's
/// `pg_hba.conf` (after any [`PgClusterBuilder::hba_line`]). The Unix
/// socket in the cluster's folder always trusts everyone, for set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PgAccess {
    /// TLS required, then a password (SCRAM):
    /// `hostssl all all 127.0.0.1/32 scram-sha-256` and
    /// `hostnossl all all 127.0.0.1/32 reject`. A client without TLS is
    /// told `pg_hba.conf rejects connection … no encryption`.
    #[default]
    PasswordOverTls,
    /// TLS with a client certificate signed by the CA and naming the role
    /// in its common name (CN), no password:
    /// `hostssl all all 127.0.0.1/32 cert` and
    /// `hostnossl all all 127.0.0.1/32 reject`.
    ClientCertificate,
    /// A password (SCRAM), with TLS or without:
    /// `host all all 127.0.0.1/32 scram-sha-256`.
    Password,
}

impl PgAccess {
    fn hba_lines(self) -> &'static [&'static str] {
        match self {
            PgAccess::PasswordOverTls => &[
                "hostssl all all 127.0.0.1/32 scram-sha-256",
                "hostnossl all all 127.0.0.1/32 reject",
            ],
            PgAccess::ClientCertificate => &[
                "hostssl all all 127.0.0.1/32 cert",
                "hostnossl all all 127.0.0.1/32 reject",
            ],
            PgAccess::Password => &["host all all 127.0.0.1/32 scram-sha-256"],
        }
    }
}

/// The server's certificate, its key and the CA its clients' certificates
/// are checked against, all PEM files; see [`PgClusterBuilder::tls`].
#[derive(Debug, Clone)]
struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
}

/// How to start a [`PgCluster`]; see each method for its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct PgClusterBuilder {
    bin_dir: Option<PathBuf>,
    tls: Option<ServerTls>,
    ssl: bool,
    access: PgAccess,
    hba: Vec<String>,
    password: Option<String>,
    log: Option<PathBuf>,
    start_timeout: Duration,
    keep: bool,
}

/// A PostgreSQL server of its own (an `initdb` cluster in a temp folder,
/// on a free port of 127.0.0.1), for what the shared server cannot be made
/// to do in a test: TLS with certificates the test made, a `pg_hba.conf`
/// that requires TLS or a client certificate, TLS switched off.
///
/// The superuser is `postgres`, with a random password (SCRAM) for TCP;
/// the Unix socket in the folder trusts everyone and is what the guard's
/// own set-up statements use. As root (as in CI), `initdb` and `postgres`
/// run as the `postgres` user, which then owns the folder.
///
/// When the guard drops, the server is stopped the way
/// `pg_ctl stop -m immediate` does (SIGQUIT, SIGKILL after 5 s) and the
/// folder is deleted (unless [`keep`](PgClusterBuilder::keep)).
///
/// ```no_run
/// # async fn demo() -> outbox_testkit::Result<()> {
/// use outbox_testkit::{PgAccess, PgCluster};
///
/// let cluster = PgCluster::builder()
///     .tls("certs/server.pem", "certs/server-key.pem", Some("certs/ca.pem".as_ref()))
///     .access(PgAccess::PasswordOverTls)
///     .start()
///     .await?;
/// let url = format!(
///     "{}?sslmode=verify-full&sslrootcert=certs/ca.pem",
///     cluster.superuser_url("postgres")
/// );
/// // … connect to `url` …
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgCluster {
    // `None` only while dropping.
    server: Option<ChildGuard>,
    dir: PathBuf,
    log: PathBuf,
    port: u16,
    password: String,
    has_tls: bool,
    keep: bool,
}

impl PgCluster {
    /// Options for a cluster, to be started with
    /// [`PgClusterBuilder::start`].
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder {
            bin_dir: None,
            tls: None,
            ssl: true,
            access: PgAccess::default(),
            hba: Vec::new(),
            password: None,
            log: None,
            start_timeout: PG_START_TIMEOUT,
            keep: false,
        }
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's (`postgres`) password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's folder: `data/` (the data directory), `socket/`, the
    /// server's copies of the TLS files, and the server log unless
    /// [`PgClusterBuilder::log`] put it elsewhere.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/DB`, user and password
    /// percent-encoded; append `?sslmode=…` as the test needs.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{db}",
            percent_encode(user),
            percent_encode(password),
            self.port
        )
    }

    /// [`url`](Self::url) for the superuser `postgres` and its password.
    pub fn superuser_url(&self, db: &str) -> String {
        self.url(PG_SUPERUSER, &self.password, db)
    }

    /// Connection options for the superuser over the cluster's Unix socket
    /// (trusted: no password, no TLS), database `postgres`.
    pub fn socket_options(&self) -> PgConnectOptions {
        socket_options(&self.dir.join("socket"), self.port)
    }

    /// A superuser connection over the Unix socket (see
    /// [`socket_options`](Self::socket_options)). Fails with
    /// [`Error::Connect`].
    pub async fn admin(&self) -> Result<PgConnection> {
        self.socket_options()
            .connect()
            .await
            .map_err(|source| Error::Connect {
                url: format!("the cluster on port {} (Unix socket)", self.port),
                source,
            })
    }

    /// Switches TLS on or off (`ALTER SYSTEM SET ssl = …` and
    /// `pg_reload_conf()`) and waits until new connections see it: with it
    /// off, the server answers a client's TLS request with "no" (sqlx then
    /// says "server does not support TLS"). Connections already open keep
    /// what they have.
    ///
    /// Fails with [`Error::Invalid`] when switching on a cluster started
    /// without [`PgClusterBuilder::tls`] files, with [`Error::Statement`],
    /// or with [`Error::Timeout`] when the server does not take the new
    /// setting within 10 s (its log says why).
    pub async fn set_ssl(&self, on: bool) -> Result<()> {
        if on && !self.has_tls {
            return Err(Error::Invalid(
                "set_ssl(true) on a cluster started without TLS files".to_owned(),
            ));
        }
        let value = if on { "on" } else { "off" };
        let mut conn = self.admin().await?;
        let sql = format!("ALTER SYSTEM SET ssl = {value}");
        self.execute(&mut conn, &sql).await?;
        self.execute(&mut conn, "SELECT pg_reload_conf()").await?;
        let _ = conn.close().await;
        // A new backend starts with the postmaster's settings: once one
        // shows the value, the postmaster has reloaded.
        let what = format!("ssl = {value} to take effect; see {}", self.log.display());
        wait_for(&what, Duration::from_secs(10), || async move {
            let mut conn = self.admin().await?;
            let now: String = sqlx::query_scalar("SHOW ssl")
                .fetch_one(&mut conn)
                .await
                .map_err(|source| Error::Statement {
                    what: "SHOW ssl".to_owned(),
                    source,
                })?;
            let _ = conn.close().await;
            Ok::<_, Error>((now == value).then_some(()))
        })
        .await
    }

    /// `CREATE ROLE name LOGIN`, with a password (stored as SCRAM) when
    /// given: a role for a client certificate whose CN is `name`, or a
    /// non-superuser. `name` must be `[a-z0-9_]`; fails with
    /// [`Error::Invalid`] otherwise, or with [`Error::Statement`].
    pub async fn create_role(&self, name: &str, password: Option<&str>) -> Result<()> {
        check_plain(name)?;
        let mut sql = format!("CREATE ROLE \"{name}\" LOGIN");
        if let Some(password) = password {
            let _ = write!(sql, " PASSWORD '{}'", password.replace('\'', "''"));
        }
        let mut conn = self.admin().await?;
        let result = self.execute(&mut conn, &sql).await;
        let _ = conn.close().await;
        result
    }

    /// `CREATE DATABASE name`, owned by `owner` when given (a role made
    /// with [`create_role`](Self::create_role)). Names must be
    /// `[a-z0-9_]`; fails with [`Error::Invalid`] otherwise, or with
    /// [`Error::Statement`].
    pub async fn create_database(&self, name: &str, owner: Option<&str>) -> Result<()> {
        check_plain(name)?;
        let mut sql = format!("CREATE DATABASE \"{name}\"");
        if let Some(owner) = owner {
            check_plain(owner)?;
            let _ = write!(sql, " OWNER \"{owner}\"");
        }
        let mut conn = self.admin().await?;
        let result = self.execute(&mut conn, &sql).await;
        let _ = conn.close().await;
        result
    }

    async fn execute(&self, conn: &mut PgConnection, sql: &str) -> Result<()> {
        sqlx::raw_sql(sql)
            .execute(conn)
            .await
            .map(drop)
            .map_err(|source| Error::Statement {
                what: redact_password(sql),
                source,
            })
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            stop(server);
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Immediate shutdown (what `pg_ctl stop -m immediate` sends): the
/// postmaster SIGQUITs its backends and exits; SIGKILL if it has not
/// within 5 s. The guard reaps it.
fn stop(mut server: ChildGuard) {
    let pid = Pid::from_raw(server.pid() as i32);
    if nix::sys::signal::kill(pid, Signal::SIGQUIT).is_ok() {
        for _ in 0..100 {
            if !server.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(server);
}

impl PgClusterBuilder {
    /// Where `initdb` and `postgres` are. Default: [`pg_bin_dir()`].
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// TLS on (`ssl = on`) with this certificate and key (PEM files), and
    /// `ca` as `ssl_ca_file`: the CA client certificates are checked
    /// against (needed for [`PgAccess::ClientCertificate`]). The files are
    /// copied into the cluster's folder (the key with mode 0600, owned by
    /// the server's user, as PostgreSQL requires). Default: no TLS, `ssl
    /// = off`.
    pub fn tls(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: Option<&Path>,
    ) -> Self {
        self.tls = Some(ServerTls {
            cert: cert.into(),
            key: key.into(),
            ca: ca.map(Path::to_owned),
        });
        self
    }

    /// Whether the server starts with TLS on, given [`tls`](Self::tls)
    /// files: `false` starts it refusing TLS (switch it on later with
    /// [`PgCluster::set_ssl`]). Default: on when there are TLS files.
    pub fn ssl(mut self, on: bool) -> Self {
        self.ssl = on;
        self
    }

    /// Who may connect over TCP, and how. Default:
    /// [`PgAccess::PasswordOverTls`].
    pub fn access(mut self, access: PgAccess) -> Self {
        self.access = access;
        self
    }

    /// A `pg_hba.conf` line checked before the [`access`](Self::access)
    /// ones, e.g. `hostssl all app 127.0.0.1/32 cert` for one role that
    /// signs in with a client certificate. May be given several times, in
    /// order. Default: none.
    pub fn hba_line(mut self, line: impl Into<String>) -> Self {
        self.hba.push(line.into());
        self
    }

    /// The superuser's password. Default: `pw-` and 16 random hex digits,
    /// distinctive enough to look for in output that must not show it.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Where the server's log goes (appended to). Default:
    /// `postgres.log` in the cluster's folder, deleted with it.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// How long to wait for the new server to accept connections. Default:
    /// [`PG_START_TIMEOUT`].
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Whether to leave the cluster's folder in place when the guard drops
    /// (the server is stopped either way). Default: no, it is deleted.
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Makes the cluster (`initdb`), writes its configuration and starts
    /// the server, waiting until it accepts connections. Takes a few
    /// seconds. On failure the server is stopped and the folder deleted
    /// (unless kept).
    ///
    /// Fails with [`Error::PgCluster`] when PostgreSQL's programs are
    /// missing, `initdb` fails, or the server exits at start (the error
    /// holds the end of its log); with [`Error::Io`] for the folder and
    /// files; with [`Error::Timeout`] after the start timeout.
    pub async fn start(self) -> Result<PgCluster> {
        let bin = self.bin_dir.clone().unwrap_or_else(pg_bin_dir);
        for program in ["initdb", "postgres"] {
            if !bin.join(program).is_file() {
                return Err(Error::PgCluster {
                    what: format!("looking for {program}"),
                    detail: format!(
                        "not in {}; set OUTBOX_TEST_PG_BIN to PostgreSQL's bin folder",
                        bin.display()
                    ),
                });
            }
        }
        let owner = server_user()?;
        let dir = std::env::temp_dir().join(format!("outbox-pg-{}", random_suffix()));
        let password = self
            .password
            .clone()
            .unwrap_or_else(|| format!("pw-{}", random_suffix()));
        let log = self.log.clone().unwrap_or_else(|| dir.join("postgres.log"));
        let mut cluster = PgCluster {
            server: None,
            dir,
            log,
            port: 0,
            password,
            has_tls: self.tls.is_some(),
            keep: self.keep,
        };
        // From here on, dropping `cluster` cleans up whatever was made.
        self.set_up(&bin, owner, &mut cluster).await?;
        Ok(cluster)
    }

    async fn set_up(
        &self,
        bin: &Path,
        owner: Option<(u32, u32)>,
        cluster: &mut PgCluster,
    ) -> Result<()> {
        let dir = cluster.dir.clone();
        make_dir(&dir, owner)?;
        make_dir(&dir.join("socket"), owner)?;

        // initdb: the superuser's password from a file, removed at once.
        let pwfile = dir.join("pwfile");
        write_file(&pwfile, &cluster.password, owner, 0o600)?;
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", PG_SUPERUSER, "-E", "UTF8", "--locale=C", "-N"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run_as(&mut initdb, owner, &dir);
        let output = tokio::process::Command::from(initdb)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(SETUP_TIMEOUT, output)
            .await
            .map_err(|_| Error::Timeout {
                what: "initdb".to_owned(),
                after: SETUP_TIMEOUT,
                log: None,
            })?
            .map_err(Error::io("running initdb"))?;
        let _ = fs::remove_file(&pwfile);
        if !output.status.success() {
            return Err(Error::PgCluster {
                what: format!("initdb -D {} ({})", data.display(), output.status),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }

        // TLS files: the server's own copies, owned by its user.
        let mut conf = String::new();
        if let Some(tls) = &self.tls {
            let copy = |from: &Path, name: &str, mode: u32| {
                let to = dir.join(name);
                let text =
                    fs::read(from).map_err(Error::io(format!("reading {}", from.display())))?;
                write_file(&to, text, owner, mode)?;
                Ok::<_, Error>(to)
            };
            let cert = copy(&tls.cert, "server.crt", 0o644)?;
            let key = copy(&tls.key, "server.key", 0o600)?;
            let _ = writeln!(conf, "ssl = {}", if self.ssl { "on" } else { "off" });
            let _ = writeln!(conf, "ssl_cert_file = '{}'", cert.display());
            let _ = writeln!(conf, "ssl_key_file = '{}'", key.display());
            if let Some(ca) = &tls.ca {
                let ca = copy(ca, "ca.crt", 0o644)?;
                let _ = writeln!(conf, "ssl_ca_file = '{}'", ca.display());
            }
        } else {
            conf.push_str("ssl = off\n");
        }
        cluster.port = free_port()?;
        let _ = writeln!(conf, "port = {}", cluster.port);
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        let _ = writeln!(
            conf,
            "unix_socket_directories = '{}'",
            dir.join("socket").display()
        );
        conf.push_str(
            "password_encryption = 'scram-sha-256'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 16MB\n\
             max_connections = 50\n\
             log_connections = on\n\
             lc_messages = 'C'\n",
        );
        append_file(&data.join("postgresql.conf"), &conf)?;

        let mut hba = String::from("local all all trust\n");
        for line in self
            .hba
            .iter()
            .map(String::as_str)
            .chain(self.access.hba_lines().iter().copied())
        {
            hba.push_str(line);
            hba.push('\n');
        }
        let hba_path = data.join("pg_hba.conf");
        fs::write(&hba_path, hba).map_err(Error::io(format!("writing {}", hba_path.display())))?;

        // The server, as a child of ours.
        let mut postgres = Command::new(bin.join("postgres"));
        postgres.arg("-D").arg(&data);
        run_as(&mut postgres, owner, &dir);
        let server =
            ChildGuard::spawn_logged("postgres", &mut postgres, &cluster.log, LogMode::Append)?;
        cluster.server = Some(server);

        let options = cluster.socket_options();
        let what = format!("postgres on port {} to accept connections", cluster.port);
        let server = cluster.server.as_mut().expect("just set");
        let ready = wait_for(&what, self.start_timeout, || {
            let alive = server.check_alive();
            let options = options.clone();
            async move {
                alive?;
                Ok::<_, Error>(match options.connect().await {
                    Ok(conn) => {
                        let _ = conn.close().await;
                        Some(())
                    }
                    Err(_) => None,
                })
            }
        })
        .await;
        ready.map_err(|e| {
            let detail = format!(
                "{e}\n--- end of {}:\n{}",
                cluster.log.display(),
                tail(&cluster.log)
            );
            Error::PgCluster {
                what: "starting postgres".to_owned(),
                detail,
            }
        })
    }
}

/// The uid and gid `initdb` and `postgres` run as: the `postgres` user's
/// when running as root (`initdb` refuses root), else `None` (ours).
fn server_user() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name(PG_SUPERUSER) {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        Ok(None) => Err(Error::PgCluster {
            what: "running as root".to_owned(),
            detail: "initdb refuses root, and there is no `postgres` user to run it as".to_owned(),
        }),
        Err(e) => Err(Error::io("looking up the postgres user")(e.into())),
    }
}

/// Runs `cmd` in `dir` (readable by the server's user, unlike root's home)
/// and, as root, as the server's user with no supplementary groups.
fn run_as(cmd: &mut Command, owner: Option<(u32, u32)>, dir: &Path) {
    cmd.current_dir(dir)
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env("LC_ALL", "C");
    if let Some((uid, gid)) = owner {
        // std drops root's supplementary groups when it changes the uid.
        cmd.uid(uid).gid(gid);
    }
}

fn make_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    fs::create_dir(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    set_owner(dir, owner, 0o700)
}

fn write_file(
    path: &Path,
    contents: impl AsRef<[u8]>,
    owner: Option<(u32, u32)>,
    mode: u32,
) -> Result<()> {
    fs::write(path, contents).map_err(Error::io(format!("writing {}", path.display())))?;
    set_owner(path, owner, mode)
}

fn set_owner(path: &Path, owner: Option<(u32, u32)>, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(Error::io(format!("chmod {mode:o} {}", path.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(Error::io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

fn append_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(Error::io(format!("opening {}", path.display())))?;
    file.write_all(format!("\n# outbox-testkit PgCluster\n{text}").as_bytes())
        .map_err(Error::io(format!("writing {}", path.display())))
}

fn socket_options(socket_dir: &Path, port: u16) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .socket(socket_dir)
        .port(port)
        .username(PG_SUPERUSER)
        .database("postgres")
        .ssl_mode(PgSslMode::Disable)
}

/// The last 40 lines of a log file (or why it cannot be read).
fn tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        Err(e) => format!("({e})"),
    }
}

/// Names go into SQL unescaped (inside quotes): allow only what needs no
/// escaping and means the same quoted or not.
fn check_plain(name: &str) -> Result<()> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if name.is_empty() || name.len() > 63 || !name.chars().all(plain) {
        return Err(Error::Invalid(format!(
            "name {name:?}: use [a-z0-9_], at most 63 bytes"
        )));
    }
    Ok(())
}

/// A statement as errors may show it: without the password it sets.
fn redact_password(sql: &str) -> String {
    match sql.find(" PASSWORD '") {
        Some(at) => format!("{} PASSWORD '***'", &sql[..at]),
        None => sql.to_owned(),
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_url_parts() {
        assert_eq!(percent_encode("pw-0123abcd"), "pw-0123abcd");
        assert_eq!(percent_encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
    }

    #[test]
    fn hides_passwords_in_statements() {
        assert_eq!(
            redact_password("CREATE ROLE \"app\" LOGIN PASSWORD 'secret'"),
            "CREATE ROLE \"app\" LOGIN PASSWORD '***'"
        );
        assert_eq!(
            redact_password("CREATE DATABASE \"x\""),
            "CREATE DATABASE \"x\""
        );
    }

    /// Without certificates: password over plain TCP, the socket for
    /// set-up, a role and a database, TLS refused.
    #[tokio::test]
    async fn starts_answers_and_cleans_up() {
        let cluster = PgCluster::builder()
            .access(PgAccess::Password)
            .start()
            .await
            .unwrap();
        let dir = cluster.dir().to_owned();
        cluster.create_role("app", Some("it's-me")).await.unwrap();
        cluster.create_database("appdb", Some("app")).await.unwrap();
        let url = format!("{}?sslmode=disable", cluster.url("app", "it's-me", "appdb"));
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let (user, db): (String, String) =
            sqlx::query_as("SELECT current_user::text, current_database()::text")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!((user.as_str(), db.as_str()), ("app", "appdb"));
        let _ = conn.close().await;

        let wrong = format!("{}?sslmode=disable", cluster.url("app", "nope", "appdb"));
        let err = PgConnection::connect(&wrong).await.unwrap_err();
        assert!(
            err.to_string().contains("password authentication failed"),
            "{err}"
        );
        assert!(matches!(
            cluster.set_ssl(true).await,
            Err(Error::Invalid(_))
        ));

        drop(cluster);
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}
