//! Starting, watching and stopping `outbox-relay` processes.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

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

/// A running relay.
pub struct Relay {
    child: Child,
    pid: u32,
    http: SocketAddr,
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
        let http = free_addr()?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&spec.bin);
        cmd.arg("--database-url")
            .arg(database_url)
            .arg("--brokers")
            .arg(&spec.brokers)
            .arg("--wakeup")
            .arg(spec.wakeup)
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--name")
            .arg(format!("bench-{}", http.port()))
            .args(&spec.args)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        if let Some(filter) = &spec.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        let pid = child.id().context("the relay exited at once")?;
        let mut relay = Relay {
            child,
            pid,
            http,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            relay.check_alive()?;
            if let Ok((200, _)) = http_get(http, "/healthz").await {
                return Ok((relay, Instant::now()));
            }
            if Instant::now() > deadline {
                bail!(
                    "the relay did not become healthy within 30s; see {}",
                    relay.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails when the relay process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the relay exited unexpectedly ({status}); see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// The relay's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        match http_get(self.http, "/metrics").await? {
            (200, body) => Ok(body),
            (code, _) => bail!("/metrics answered {code}"),
        }
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("reading the relay's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }

    /// Sends SIGTERM and waits for a clean exit (SIGKILL after 20 s).
    pub async fn stop(mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            bail!("the relay had already exited; see {}", self.log.display());
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "the relay exited with {status} on SIGTERM; see {}",
                        self.log.display()
                    );
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "the relay did not stop within 20s of SIGTERM; see {}",
                    self.log.display()
                )
            }
        }
    }

    /// The relay's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// A free port on 127.0.0.1 (released again, to be bound by the relay).
fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A minimal HTTP/1.0 GET: status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("malformed HTTP response")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok::<_, anyhow::Error>((code, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("HTTP request timed out")?
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
