//! Starting, watching and stopping `outbox-relay` processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_testkit::{free_port, http_get, ChildGuard, LogMode};

/// How to start a relay.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// The binary.
    pub bin: PathBuf,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// `notify` or `poll`.
    pub wakeup: &'static str,
    /// Extra flags (`--retention 0s`, `--sweep-schedule …`, the user's
    /// `--relay-arg`s).
    pub args: Vec<String>,
    /// `RUST_LOG` for the relay; `None` keeps the relay's default.
    pub rust_log: Option<String>,
}

/// A running relay, killed if dropped before [`Relay::stop`].
pub struct Relay {
    child: ChildGuard,
    http: String,
    log: PathBuf,
}

impl Relay {
    /// Starts a relay on `database_url`, logging to `log`, and waits until
    /// its `/healthz` answers 200 (database and broker reachable, the
    /// publish loop about to start). Returns the relay and the instant it
    /// became ready.
    pub async fn start(
        spec: &RelaySpec,
        database_url: &str,
        log: &Path,
    ) -> Result<(Relay, Instant)> {
        let port = free_port()?;
        let http = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(&spec.bin);
        cmd.arg("--database-url")
            .arg(database_url)
            .arg("--brokers")
            .arg(&spec.brokers)
            .arg("--wakeup")
            .arg(spec.wakeup)
            .arg("--http-listen")
            .arg(&http)
            .arg("--name")
            .arg(format!("bench-{port}"))
            .args(&spec.args)
            .arg("run")
            .env("NO_COLOR", "1");
        if let Some(filter) = &spec.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let child = ChildGuard::spawn_logged("the relay", &mut cmd, log, LogMode::Truncate)?;
        let mut relay = Relay {
            child,
            http,
            log: log.to_owned(),
        };
        // Polled every 20 ms, not at wait_for's 50 ms: the ready instant
        // starts the clock of some measurements.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            relay.check_alive()?;
            if let Ok((200, _)) = http_get(&relay.http, "/healthz").await {
                return Ok((relay, Instant::now()));
            }
            if Instant::now() > deadline {
                bail!(
                    "the relay did not become healthy within 30s; see {}",
                    relay.log().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Fails when the relay process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        Ok(self.child.check_alive()?)
    }

    /// The relay's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        match http_get(&self.http, "/metrics").await? {
            (200, body) => Ok(body),
            (code, _) => bail!("/metrics answered {code}"),
        }
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("reading the relay's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }

    /// Sends SIGTERM and waits for a clean exit (SIGKILL after 20 s).
    pub async fn stop(mut self) -> Result<()> {
        let status = self
            .child
            .terminate(Duration::from_secs(20))
            .await
            .context("stopping the relay")?;
        if !status.success() {
            bail!(
                "the relay exited with {status} on SIGTERM; see {}",
                self.log().display()
            );
        }
        Ok(())
    }

    /// The relay's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// The value of metric `name` in Prometheus text, summed over its label
/// sets; `None` when absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_metrics() {
        let text = "# TYPE a counter\na 3\na_total 5\nb{kind=\"x\"} 1\nb{kind=\"y\"} 2.5\n";
        assert_eq!(super::metric(text, "a"), Some(3.0));
        assert_eq!(super::metric(text, "a_total"), Some(5.0));
        assert_eq!(super::metric(text, "b"), Some(3.5));
        assert_eq!(super::metric(text, "c"), None);
    }
}
