//! Where a drain's time goes, seen from outside the relay (so it needs no
//! cooperation from the relay's code): `pg_stat_activity` sampled every few
//! milliseconds shows which of the relay's statements is running, and
//! `/proc` shows how much CPU the relay process itself burns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// How often `pg_stat_activity` is sampled.
const INTERVAL: Duration = Duration::from_millis(10);

/// Shares of the sampled wall time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Profile {
    /// Samples taken.
    pub samples: u64,
    /// Share of samples in which a statement of this kind was running on
    /// one of the relay's connections (several may overlap).
    pub statements: BTreeMap<String, f64>,
    /// Share of samples in which none of the relay's statements was
    /// running: the relay was publishing, waiting for the broker, or busy
    /// on its own CPU.
    pub outside_database: f64,
    /// Top wait events of running relay statements (share of samples).
    pub waits: BTreeMap<String, f64>,
    /// CPU seconds the relay process used over the sampled wall time.
    pub relay_cpu_seconds: f64,
    /// Sampled wall time, seconds.
    pub wall_seconds: f64,
    /// Busy CPU time of the whole machine (every process: relay, database,
    /// broker) over the sampled wall time, in cores, and the cores there are.
    pub machine_busy_cores: f64,
    pub machine_cores: usize,
}

impl Profile {
    /// "fetch 62% · mark 21% · no SQL running 17% · relay CPU 9% of a core"
    /// (statement shares can overlap: the relay marks one batch while it
    /// fetches the next).
    pub fn summary(&self) -> String {
        let mut parts: Vec<(f64, String)> = self
            .statements
            .iter()
            .filter(|(_, s)| **s >= 0.01)
            .map(|(k, s)| (*s, format!("{k} {:.0}%", s * 100.0)))
            .collect();
        parts.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut out: Vec<String> = parts.into_iter().map(|(_, s)| s).collect();
        out.push(format!(
            "no SQL running {:.0}%",
            self.outside_database * 100.0
        ));
        if self.wall_seconds > 0.0 {
            out.push(format!(
                "relay CPU {:.0}% of a core",
                100.0 * self.relay_cpu_seconds / self.wall_seconds
            ));
        }
        if self.machine_cores > 0 {
            out.push(format!(
                "machine CPU {:.0}% busy ({:.2} of {} cores)",
                100.0 * self.machine_busy_cores / self.machine_cores as f64,
                self.machine_busy_cores,
                self.machine_cores
            ));
        }
        out.join(" · ")
    }
}

/// A running sampler.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Profile>>,
}

impl Sampler {
    /// Starts sampling the relay's connections to the database of `pool`
    /// (every client backend except the benchmark's own, whose connections
    /// are named `outbox-bench`), and the CPU time of process `relay_pid`.
    pub fn start(pool: PgPool, relay_pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = tokio::spawn(async move { sample(pool, relay_pid, stop2).await });
        Sampler { stop, handle }
    }

    /// Stops sampling and returns the profile.
    pub async fn finish(self) -> Result<Profile> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await?
    }
}

async fn sample(pool: PgPool, relay_pid: u32, stop: Arc<AtomicBool>) -> Result<Profile> {
    let mut conn = pool.acquire().await?;
    let cpu_start = cpu_seconds(relay_pid);
    let machine_start = machine_ticks();
    let started = Instant::now();
    let mut samples = 0u64;
    let mut statements: BTreeMap<String, u64> = BTreeMap::new();
    let mut waits: BTreeMap<String, u64> = BTreeMap::new();
    let mut idle = 0u64;
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut cpu_end = cpu_start;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT query, wait_event_type || ':' || wait_event FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend' AND state = 'active' \
               AND application_name <> 'outbox-bench'",
        )
        .fetch_all(&mut *conn)
        .await?;
        samples += 1;
        if let Some(c) = cpu_seconds(relay_pid) {
            cpu_end = Some(c);
        }
        let mut kinds: Vec<String> = rows.iter().map(|(q, _)| classify(q)).collect();
        kinds.sort();
        kinds.dedup();
        if kinds.is_empty() {
            idle += 1;
        }
        for k in kinds {
            *statements.entry(k).or_default() += 1;
        }
        for (q, w) in &rows {
            if let Some(w) = w {
                *waits.entry(format!("{} {w}", classify(q))).or_default() += 1;
            }
        }
    }
    let machine = match (machine_start, machine_ticks()) {
        (Some((busy_a, total_a)), Some((busy_b, total_b))) if total_b > total_a => {
            (busy_b - busy_a) as f64 / (total_b - total_a) as f64
        }
        _ => 0.0,
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let n = samples.max(1) as f64;
    let share = |m: BTreeMap<String, u64>| m.into_iter().map(|(k, v)| (k, v as f64 / n)).collect();
    Ok(Profile {
        samples,
        statements: share(statements),
        outside_database: idle as f64 / n,
        waits: share(waits),
        relay_cpu_seconds: match (cpu_start, cpu_end) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        },
        wall_seconds: started.elapsed().as_secs_f64(),
        machine_busy_cores: machine * cores as f64,
        machine_cores: cores,
    })
}

/// The name of one of the relay's statements: each starts with a line
/// `-- outbox-relay: NAME` (its file name under relay/src/store/queries/),
/// which PostgreSQL keeps in `pg_stat_activity.query`. Anything else is
/// shown by its first 40 characters.
fn classify(query: &str) -> String {
    let named = query
        .lines()
        .next()
        .and_then(|first| first.trim().strip_prefix("-- outbox-relay: "));
    match named {
        Some(name) => name.trim().to_owned(),
        None => query
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(40)
            .collect(),
    }
}

/// (busy, total) jiffies of all CPUs since boot, from /proc/stat; busy is
/// everything but idle and iowait.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime of process `pid`, in seconds (assumes 100 ticks/s, the
/// Linux default).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn classifies_the_relay_statements_by_name() {
        assert_eq!(
            super::classify("-- outbox-relay: fetch_pending\n-- Up to $2 …\nWITH delayed AS …"),
            "fetch_pending"
        );
        assert_eq!(
            super::classify("-- outbox-relay: delete_published\nDELETE FROM outbox.message …"),
            "delete_published"
        );
        assert_eq!(super::classify("SELECT   1"), "SELECT 1");
    }

    #[test]
    fn reads_machine_cpu_time() {
        let (busy, total) = super::machine_ticks().expect("/proc/stat");
        assert!(busy <= total && total > 0);
    }

    #[test]
    fn reads_own_cpu_time() {
        assert!(super::cpu_seconds(std::process::id()).is_some());
    }
}
