//! Small helpers: signals, the shared "something is deliberately down"
//! clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Sends `signal` to process `pid`; a process that is gone already is not
/// an error.
pub fn signal(pid: u32, signal: Signal) -> Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("sending {signal} to {pid}")),
    }
}

/// Whether this process runs as root (then the PostgreSQL binaries run as
/// the `postgres` user through `runuser`).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Tracks the windows during which the harness itself took the database or
/// the broker away (restart, SIGSTOP, injected RTT), so the stall watchdog
/// does not blame the relays for them.
#[derive(Debug)]
pub struct Downtime {
    inner: Mutex<DownInner>,
}

#[derive(Debug)]
struct DownInner {
    active: u32,
    last_end: Option<Instant>,
    total: Duration,
    since: Option<Instant>,
}

impl Default for Downtime {
    fn default() -> Self {
        Downtime {
            inner: Mutex::new(DownInner {
                active: 0,
                last_end: None,
                total: Duration::ZERO,
                since: None,
            }),
        }
    }
}

impl Downtime {
    /// Something went down on purpose.
    pub fn begin(&self) {
        let mut d = self.inner.lock().expect("downtime lock");
        if d.active == 0 {
            d.since = Some(Instant::now());
        }
        d.active += 1;
    }

    /// Something that went down on purpose is back.
    pub fn end(&self) {
        let mut d = self.inner.lock().expect("downtime lock");
        d.active = d.active.saturating_sub(1);
        if d.active == 0 {
            let now = Instant::now();
            if let Some(since) = d.since.take() {
                d.total += now - since;
            }
            d.last_end = Some(now);
        }
    }

    /// Whether anything was down at some moment after `since`.
    pub fn overlaps(&self, since: Instant) -> bool {
        let d = self.inner.lock().expect("downtime lock");
        d.active > 0 || d.last_end.is_some_and(|end| end >= since)
    }

    /// Total time something was down on purpose so far.
    pub fn total(&self) -> Duration {
        let d = self.inner.lock().expect("downtime lock");
        d.total + d.since.map(|s| s.elapsed()).unwrap_or_default()
    }
}

/// Sleeps `d`, or less when `stop` turns true (or its sender is gone).
/// Returns whether the sleep was cut short.
pub async fn sleep_or_stop(d: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}
