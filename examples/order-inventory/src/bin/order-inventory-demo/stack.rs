//! The processes of the run: both services and their relays, started
//! with their output in the run folder, waited on until healthy, and
//! stopped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outbox_testkit::{http_get, wait_for, ChildGuard, LogMode};

/// Waits (`deadline` at most) until `GET http://ADDR/PATH` answers 200,
/// failing early if `proc` exits.
pub async fn wait_for_path(
    addr: &str,
    path: &str,
    deadline: Duration,
    proc: &mut ChildGuard,
) -> anyhow::Result<()> {
    let what = format!("http://{addr}{path} ({}) to answer 200", proc.name());
    wait_for(&what, deadline, || {
        let alive = proc.check_alive();
        async move {
            alive?;
            let ok = matches!(http_get(addr, path).await, Ok((200, _)));
            Ok::<_, anyhow::Error>(ok.then_some(()))
        }
    })
    .await
}

/// SIGTERM, then SIGKILL if `proc` is still there after 5 s.
pub async fn stop(proc: &mut ChildGuard) {
    if let Err(outbox_testkit::Error::Timeout { .. }) = proc.terminate(Duration::from_secs(5)).await
    {
        eprintln!(
            "{} did not stop on SIGTERM within 5s; killed it",
            proc.name()
        );
    }
}

/// Where everything runs: the binaries, the run folder, the broker, the
/// databases and the services' HTTP addresses.
pub struct Stack {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub brokers: String,
    pub session_timeout: Duration,
    pub topic_prefix: String,
    pub orders_url: String,
    pub inventory_url: String,
    pub order_http: String,
    pub inventory_http: String,
    pub order_relay_http: String,
    pub inventory_relay_http: String,
}

impl Stack {
    /// Starts the order service's relay.
    pub fn order_relay(&self) -> anyhow::Result<ChildGuard> {
        self.relay("order-relay", &self.orders_url, &self.order_relay_http)
    }

    /// Starts the inventory service's relay.
    pub fn inventory_relay(&self) -> anyhow::Result<ChildGuard> {
        self.relay(
            "inventory-relay",
            &self.inventory_url,
            &self.inventory_relay_http,
        )
    }

    /// Starts the relay `which` (its config file, `config/WHICH.toml`) on
    /// the database at `db`, serving `/healthz` on `http`.
    fn relay(&self, which: &'static str, db: &str, http: &str) -> anyhow::Result<ChildGuard> {
        // The same config files docker-compose.yml uses; only the addresses differ.
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/{which}.toml"));
        let mut cmd = Command::new(self.bin_dir.join("outbox-relay"));
        cmd.arg("--config").arg(config).args([
            "--database-url",
            db,
            "--brokers",
            &self.brokers,
            "--http-listen",
            http,
        ]);
        spawn(which, cmd, &self.dir)
    }

    /// Starts the order service.
    pub fn order_service(&self) -> anyhow::Result<ChildGuard> {
        let mut cmd = Command::new(self.bin_dir.join("order-service"));
        cmd.args([
            "--database-url",
            &self.orders_url,
            "--brokers",
            &self.brokers,
        ])
        .args(["--http-listen", &self.order_http])
        .arg("--session-timeout")
        .arg(humantime::format_duration(self.session_timeout).to_string())
        .args(["--topic-prefix", &self.topic_prefix]);
        spawn("order-service", cmd, &self.dir)
    }

    /// Starts the inventory service.
    pub fn inventory_service(&self) -> anyhow::Result<ChildGuard> {
        let mut cmd = Command::new(self.bin_dir.join("inventory-service"));
        cmd.args([
            "--database-url",
            &self.inventory_url,
            "--brokers",
            &self.brokers,
        ])
        .args(["--http-listen", &self.inventory_http])
        .arg("--session-timeout")
        .arg(humantime::format_duration(self.session_timeout).to_string())
        .args(["--topic-prefix", &self.topic_prefix]);
        spawn("inventory-service", cmd, &self.dir)
    }
}

/// Starts `cmd` as `name`, its output appended to `DIR/<name>.log` (a
/// restarted process keeps its first run's output there).
fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<ChildGuard> {
    let log = dir.join(format!("{name}.log"));
    Ok(ChildGuard::spawn_logged(
        name,
        &mut cmd,
        &log,
        LogMode::Append,
    )?)
}
