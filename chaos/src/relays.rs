//! The relay processes and their supervisor: a relay that exits on its own
//! is restarted after a second and counted; the fault injector kills,
//! pauses and resumes relays through the same state, so its kills are not
//! counted as self-exits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::Signal;
use outbox_testkit::{ChildGuard, LogMode};

use crate::util::signal;

/// How to start a relay.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// The `outbox-relay` binary.
    pub bin: PathBuf,
    /// The private cluster's URL.
    pub database_url: String,
    /// Bootstrap servers.
    pub brokers: String,
    /// The harness's standard flags followed by the user's `--relay-arg`s.
    pub args: Vec<String>,
    /// Where `relay-{i}-{generation}.log` go.
    pub log_dir: PathBuf,
    /// `RUST_LOG` for the relays.
    pub rust_log: String,
}

/// What the harness is doing with a relay slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Running, free for a fault.
    Running,
    /// SIGSTOPped by the harness.
    Paused,
    /// Not running; started again at the instant.
    Down(Instant),
    /// Being shut down at the end: never restarted.
    Stopping,
}

/// A relay slot; its guard kills and reaps the process when the slot (or
/// the whole [`Relays`]) drops.
#[derive(Debug)]
struct Slot {
    child: Option<ChildGuard>,
    pid: Option<u32>,
    generation: u32,
    state: SlotState,
}

/// All relay slots, behind a lock shared by the supervisor, the fault
/// injector and the main task.
#[derive(Debug)]
pub struct Relays {
    spec: RelaySpec,
    slots: Vec<Slot>,
    self_exits: BTreeMap<String, u32>,
    events: Vec<String>,
    started: Instant,
}

/// A shared handle on the relays.
pub type SharedRelays = Arc<Mutex<Relays>>;

/// Locks the relays (a poisoned lock is still usable: the state is plain
/// data).
pub fn lock(relays: &SharedRelays) -> MutexGuard<'_, Relays> {
    relays.lock().unwrap_or_else(|p| p.into_inner())
}

impl Relays {
    /// `count` relay slots, none started yet.
    pub fn new(spec: RelaySpec, count: usize) -> Self {
        let now = Instant::now();
        Relays {
            spec,
            slots: (0..count)
                .map(|_| Slot {
                    child: None,
                    pid: None,
                    generation: 0,
                    state: SlotState::Down(now),
                })
                .collect(),
            self_exits: BTreeMap::new(),
            events: Vec::new(),
            started: now,
        }
    }

    fn note(&mut self, what: String) {
        let t = self.started.elapsed().as_secs_f64();
        tracing::debug!("{what}");
        self.events.push(format!("{t:8.3}s {what}"));
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        let generation = slot.generation;
        let path = self
            .spec
            .log_dir
            .join(format!("relay-{i}-{generation}.log"));
        let mut cmd = Command::new(&self.spec.bin);
        cmd.args(["--database-url", &self.spec.database_url])
            .args(["--brokers", &self.spec.brokers])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--name", &format!("chaos-relay-{i}")])
            .args(&self.spec.args);
        for (key, _) in std::env::vars_os() {
            if let Some(key) = key.to_str() {
                if key.starts_with("OUTBOX_") || key == "DATABASE_URL" {
                    cmd.env_remove(key);
                }
            }
        }
        cmd.env("RUST_LOG", &self.spec.rust_log)
            .env("NO_COLOR", "1");
        let child =
            ChildGuard::spawn_logged(format!("relay {i}"), &mut cmd, &path, LogMode::Truncate)?;
        let pid = child.pid();
        let slot = &mut self.slots[i];
        slot.pid = Some(pid);
        slot.child = Some(child);
        slot.state = SlotState::Running;
        self.note(format!(
            "relay {i} generation {generation} started (pid {pid})"
        ));
        Ok(())
    }

    /// One supervision round: reaps relays that exited (counting those the
    /// harness did not kill) and starts those whose restart time came.
    pub fn supervise(&mut self) -> Result<()> {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let exited = self.slots[i]
                .child
                .as_mut()
                .and_then(ChildGuard::exit_status);
            if let Some(status) = exited {
                let slot = &mut self.slots[i];
                slot.child = None;
                slot.pid = None;
                let generation = slot.generation;
                match slot.state {
                    SlotState::Running | SlotState::Paused => {
                        slot.state = SlotState::Down(now + Duration::from_secs(1));
                        let how = match (
                            status.code(),
                            std::os::unix::process::ExitStatusExt::signal(&status),
                        ) {
                            (Some(code), _) => format!("exit code {code}"),
                            (None, Some(sig)) => format!("signal {sig}"),
                            _ => status.to_string(),
                        };
                        *self.self_exits.entry(how.clone()).or_insert(0) += 1;
                        self.note(format!(
                            "relay {i} generation {generation} exited on its own ({how}); restarting in 1s; see relay-{i}-{generation}.log"
                        ));
                        eprintln!(
                            "chaos: relay {i} (generation {generation}) exited on its own ({how}); restarting it"
                        );
                    }
                    SlotState::Down(_) | SlotState::Stopping => {}
                }
            }
            if let SlotState::Down(at) = self.slots[i].state {
                if at <= now && self.slots[i].child.is_none() {
                    self.spawn(i)?;
                }
            }
        }
        Ok(())
    }

    /// Relay slots that are running and not under a fault.
    pub fn running(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].state == SlotState::Running && self.slots[i].child.is_some())
            .collect()
    }

    /// SIGKILLs relay `i`; the supervisor starts it again after `down`.
    pub fn kill(&mut self, i: usize, down: Duration) {
        let slot = &mut self.slots[i];
        slot.state = SlotState::Down(Instant::now() + down);
        // The supervisor reaps the exit status and, the slot being down,
        // does not count it as a self-exit.
        if let Some(child) = slot.child.as_mut() {
            child.kill();
        }
        let generation = slot.generation;
        self.note(format!(
            "relay {i} generation {generation} SIGKILLed; restart in {down:?}"
        ));
    }

    /// SIGSTOPs relay `i`; returns its pid.
    pub fn pause(&mut self, i: usize) -> Result<Option<u32>> {
        let slot = &mut self.slots[i];
        let Some(pid) = slot.pid else {
            return Ok(None);
        };
        signal(pid, Signal::SIGSTOP)?;
        slot.state = SlotState::Paused;
        let generation = slot.generation;
        self.note(format!("relay {i} generation {generation} SIGSTOPped"));
        Ok(Some(pid))
    }

    /// SIGCONTs relay `i` if it is still the process paused as `pid`.
    pub fn resume(&mut self, i: usize, pid: u32) -> Result<()> {
        let slot = &mut self.slots[i];
        if slot.pid == Some(pid) && slot.state == SlotState::Paused {
            signal(pid, Signal::SIGCONT)?;
            slot.state = SlotState::Running;
            let generation = slot.generation;
            self.note(format!("relay {i} generation {generation} SIGCONTed"));
        }
        Ok(())
    }

    /// Resumes every paused relay and starts every killed one now.
    pub fn heal_all(&mut self) -> Result<()> {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            match self.slots[i].state {
                SlotState::Paused => {
                    if let Some(pid) = self.slots[i].pid {
                        self.resume(i, pid)?;
                    }
                }
                SlotState::Down(at) if at > now => self.slots[i].state = SlotState::Down(now),
                _ => {}
            }
        }
        self.supervise()
    }

    /// Marks every relay as stopping and sends SIGTERM to those running;
    /// returns their pids.
    pub fn terminate_all(&mut self) -> Vec<u32> {
        let mut pids = Vec::new();
        for slot in &mut self.slots {
            slot.state = SlotState::Stopping;
            if let Some(pid) = slot.pid {
                let _ = signal(pid, Signal::SIGCONT);
                let _ = signal(pid, Signal::SIGTERM);
                pids.push(pid);
            }
        }
        self.note("SIGTERM to every relay".into());
        pids
    }

    /// Reaps relays that exited after [`terminate_all`](Self::terminate_all);
    /// returns how many still run, and notes non-zero exits.
    pub fn reap_stopping(&mut self) -> usize {
        let mut still = 0;
        let mut notes = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(child) = slot.child.as_mut() {
                match child.exit_status() {
                    Some(status) => {
                        notes.push(format!(
                            "relay {i} generation {} exited after SIGTERM: {status}",
                            slot.generation
                        ));
                        slot.child = None;
                        slot.pid = None;
                    }
                    None => still += 1,
                }
            }
        }
        for n in notes {
            self.note(n);
        }
        still
    }

    /// SIGKILLs (and reaps) every relay still running.
    pub fn kill_all(&mut self) {
        for slot in &mut self.slots {
            slot.state = SlotState::Stopping;
            // Dropping the guard kills and reaps the process.
            slot.child = None;
            slot.pid = None;
        }
    }

    /// Self-exits by how the relay ended ("exit code 1", "signal 6").
    pub fn self_exits(&self) -> &BTreeMap<String, u32> {
        &self.self_exits
    }

    /// The supervisor's timeline.
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// Relay generations started so far, per slot.
    pub fn generations(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.generation).collect()
    }
}

/// Kills every relay when dropped (the main task holds it, so the relays
/// die with the harness also on error, Ctrl-C or panic).
#[derive(Debug)]
pub struct RelaysGuard(pub SharedRelays);

impl Drop for RelaysGuard {
    fn drop(&mut self) {
        lock(&self.0).kill_all();
    }
}

/// Runs the supervisor every 100 ms until `stop`.
pub async fn supervise(relays: SharedRelays, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = lock(&relays).supervise() {
            eprintln!("chaos: supervisor: {e:#}");
        }
        if crate::util::sleep_or_stop(Duration::from_millis(100), &mut stop).await {
            return;
        }
    }
}
