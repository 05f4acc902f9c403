//! The processes of the run: both services and their relays, started
//! with their output in the run folder, waited on until healthy, and
//! stopped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outbox_testkit::{http_get, wait_for, ChildGuard, LogMode};

/// Waits (`deadline` at most) until `GET http://ADDR/healthz` answers
/// 200, failing early if `proc` exits.
pub async fn wait_healthy(
    addr: &str,
    deadline: Duration,
    proc: &mut ChildGuard,
) -> anyhow::Result<()> {
    let what = format!("http://{addr}/healthz to answer 200");
    wait_for(&what, deadline, || {
        let alive = proc.check_alive();
        async move {
            alive?;
            let ok = matches!(http_get(addr, "/healthz").await, Ok((200, _)));
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
    pub orders_url: String,
    pub inventory_url: String,
    pub order_http: String,
    pub inventory_http: String,
}

impl Stack {
    /// Starts the relay `which` (its config file, `config/WHICH.toml`) on
    /// the database at `db`.
    pub fn relay(&self, which: &'static str, db: &str) -> anyhow::Result<ChildGuard> {
        // The same config files docker-compose.yml uses; only the addresses differ.
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/{which}.toml"));
        let mut cmd = Command::new(self.bin_dir.join("outbox-relay"));
        cmd.arg("--config").arg(config).args([
            "--database-url",
            db,
            "--brokers",
            &self.brokers,
            "--http-listen",
            "127.0.0.1:0",
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
        .args(["--http-listen", &self.order_http]);
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
        .args(["--http-listen", &self.inventory_http]);
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
