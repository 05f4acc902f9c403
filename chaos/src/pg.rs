//! A private PostgreSQL cluster: initdb'd into a temp folder, started on a
//! free port, restarted by the harness at will, stopped and deleted when
//! its guard drops. The machine's shared server is never touched.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use outbox_testkit::{free_port, random_suffix};

use crate::util::is_root;

/// Where the PostgreSQL 15 binaries are.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How to run `pg_ctl` on the cluster; cheap to clone, so fault tasks can
/// restart the cluster while the guard stays with the main task.
#[derive(Debug, Clone)]
pub struct PgCtl {
    bin_dir: PathBuf,
    root: PathBuf,
    data: PathBuf,
    server_log: PathBuf,
    ctl_log: PathBuf,
    as_postgres: bool,
}

impl PgCtl {
    /// `BIN ARGS`, as the `postgres` user when we are root, its output
    /// appended to the cluster's `pg_ctl.log`.
    fn command(&self, bin: &str) -> Result<std::process::Command> {
        let path = self.bin_dir.join(bin);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.ctl_log)
            .with_context(|| format!("opening {}", self.ctl_log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(&self.root);
        Ok(cmd)
    }

    /// Runs `pg_ctl ARGS` to completion (60 s at most).
    async fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let mut cmd = tokio::process::Command::from(self.command("pg_ctl")?);
        cmd.arg("-D").arg(&self.data).args(args).kill_on_drop(true);
        let status = tokio::time::timeout(Duration::from_secs(90), cmd.status())
            .await
            .with_context(|| format!("pg_ctl {args:?} timed out"))?
            .context("running pg_ctl")?;
        if !status.success() {
            bail!(
                "pg_ctl {args:?} failed ({status}); see {} and {}",
                self.ctl_log.display(),
                self.server_log.display()
            );
        }
        Ok(())
    }

    /// `pg_ctl restart -m fast`: every connection is cut, in-progress
    /// transactions are rolled back, committed ones survive. With `crash`,
    /// `-m immediate` instead: the server stops as if it crashed, and
    /// recovers from the WAL on start, so what was committed without
    /// waiting for the flush (the relay's marks) may be gone.
    pub async fn restart(&self, crash: bool) -> Result<()> {
        let log = self.server_log.to_string_lossy().into_owned();
        let mode = if crash { "immediate" } else { "fast" };
        self.pg_ctl(&["restart", "-m", mode, "-w", "-t", "60", "-l", &log])
            .await
    }
}

/// The running cluster. Stopped (immediate) and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    ctl: PgCtl,
    port: u16,
    keep_log: PathBuf,
    running: bool,
}

impl PgCluster {
    /// initdb, start, wait until it accepts connections. The server log is
    /// copied to `keep_log` when the cluster is dropped.
    pub async fn start(keep_log: &Path) -> Result<Self> {
        let bin_dir = PathBuf::from(PG_BIN_DIR);
        if !bin_dir.join("initdb").is_file() {
            bail!("PostgreSQL 15 binaries not found in {PG_BIN_DIR}");
        }
        let root = std::env::temp_dir().join(format!("outbox-chaos-pg-{}", random_suffix()));
        std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        let as_postgres = is_root();
        let ctl = PgCtl {
            bin_dir,
            data: root.join("data"),
            server_log: root.join("postgres.log"),
            ctl_log: root.join("pg_ctl.log"),
            root,
            as_postgres,
        };
        let port = free_port()?;
        // From here on the guard deletes the folder, also on error.
        let mut cluster = PgCluster {
            ctl,
            port,
            keep_log: keep_log.to_owned(),
            running: false,
        };
        if as_postgres {
            let status = std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.ctl.root)
                .status()
                .context("chown of the cluster folder")?;
            if !status.success() {
                bail!("chown postgres {} failed", cluster.ctl.root.display());
            }
        }
        // The log file must be writable by the server's user.
        File::create(&cluster.ctl.ctl_log)?;
        if as_postgres {
            let _ = std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.ctl.ctl_log)
                .status();
        }
        let mut initdb = tokio::process::Command::from(cluster.ctl.command("initdb")?);
        initdb
            .arg("-D")
            .arg(&cluster.ctl.data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .kill_on_drop(true);
        let status = tokio::time::timeout(Duration::from_secs(120), initdb.status())
            .await
            .context("initdb timed out")??;
        if !status.success() {
            bail!(
                "initdb failed ({status}); see {}",
                cluster.ctl.ctl_log.display()
            );
        }
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            cluster.ctl.root.display()
        );
        let log = cluster.ctl.server_log.to_string_lossy().into_owned();
        cluster.running = true;
        cluster
            .ctl
            .pg_ctl(&["-o", &opts, "-l", &log, "start", "-w", "-t", "60"])
            .await?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A handle that can restart the cluster.
    pub fn ctl(&self) -> PgCtl {
        self.ctl.clone()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            if let Ok(mut cmd) = self.ctl.command("pg_ctl") {
                let _ = cmd
                    .arg("-D")
                    .arg(&self.ctl.data)
                    .args(["stop", "-m", "immediate", "-w", "-t", "30"])
                    .status();
            }
        }
        let _ = std::fs::copy(&self.ctl.server_log, &self.keep_log);
        let _ = std::fs::remove_dir_all(&self.ctl.root);
    }
}
