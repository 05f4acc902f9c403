//! Seeded faults, one every 2–4.5 s: relays killed and paused, the
//! database restarted, the broker paused (memory storage), killed and
//! restarted (SQLite storage), or, on the mock cluster, broker-side
//! errors, leader changes and RTT spikes.

mod broker;
mod postgres;
mod relay;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_testkit::Broker;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::pg::PgCtl;
use crate::relays::{self, SharedRelays};
use crate::util::{sleep_or_stop, Downtime};
use broker::{broker_outage, mock_op};
use outbox_testkit::MockBroker;
use postgres::pg_restart;
use relay::{relay_kill, relay_pause};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL a relay, restart it 1–4 s later.
    RelayKill,
    /// SIGSTOP a relay for 2–14 s.
    RelayPause,
    /// `pg_ctl restart -m fast`.
    PgRestart,
    /// `pg_ctl restart -m immediate`: PostgreSQL crashes and recovers,
    /// losing the commits that did not wait for the WAL flush.
    PgCrash,
    /// SIGSTOP the broker for 2–6 s (tansu, memory storage).
    BrokerPause,
    /// SIGKILL the broker and start it again (tansu, SQLite storage).
    BrokerRestart,
    /// Move a partition's leadership (mock cluster).
    LeaderChange,
    /// Produce requests fail with retriable errors (mock cluster).
    ProduceErrors,
    /// A broker's round-trip time jumps for 2–6 s (mock cluster).
    RttSpike,
}

impl Kind {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::RelayKill => "relay_kill",
            Kind::RelayPause => "relay_pause",
            Kind::PgRestart => "pg_restart",
            Kind::PgCrash => "pg_crash",
            Kind::BrokerPause => "broker_pause",
            Kind::BrokerRestart => "broker_restart",
            Kind::LeaderChange => "leader_change",
            Kind::ProduceErrors => "produce_errors",
            Kind::RttSpike => "rtt_spike",
        }
    }
}

/// The broker, as the faults see it.
#[derive(Clone)]
pub enum BrokerTarget {
    /// tansu with memory storage: pauses.
    TansuPause(Arc<Mutex<Broker>>),
    /// tansu with SQLite storage: kill and restart.
    TansuRestart(Arc<Mutex<Broker>>, String),
    /// The mock cluster.
    Mock(Arc<MockBroker>, String, i32),
}

/// Everything the faults act on.
#[derive(Clone)]
pub struct Targets {
    /// The relays.
    pub relays: SharedRelays,
    /// The database.
    pub pg: PgCtl,
    /// The broker.
    pub broker: BrokerTarget,
    /// Where deliberate outages are recorded.
    pub downtime: Arc<Downtime>,
}

/// What the injector did.
#[derive(Debug, Default, Clone)]
pub struct FaultLog {
    /// Faults started, by kind.
    pub counts: BTreeMap<Kind, u32>,
    /// Timeline.
    pub events: Vec<String>,
    /// Faults that failed to apply or to heal (e.g. the database did not
    /// come back).
    pub errors: Vec<String>,
}

impl FaultLog {
    /// Faults started in all.
    pub fn total(&self) -> u32 {
        self.counts.values().sum()
    }
}

/// The kinds that apply to this broker.
pub fn kinds(broker: &BrokerTarget, skip: &[String]) -> Vec<Kind> {
    let mut kinds = vec![
        Kind::RelayKill,
        Kind::RelayPause,
        Kind::PgRestart,
        Kind::PgCrash,
    ];
    match broker {
        BrokerTarget::TansuPause(_) => kinds.push(Kind::BrokerPause),
        BrokerTarget::TansuRestart(..) => kinds.push(Kind::BrokerRestart),
        BrokerTarget::Mock(..) => {
            kinds.extend([Kind::LeaderChange, Kind::ProduceErrors, Kind::RttSpike])
        }
    }
    kinds.retain(|k| !skip.iter().any(|s| s == k.name()));
    kinds
}

type Log = Arc<Mutex<FaultLog>>;

fn note(log: &Log, started: Instant, what: String) {
    let t = started.elapsed().as_secs_f64();
    eprintln!("chaos: {t:6.1}s {what}");
    log.lock()
        .expect("fault log lock")
        .events
        .push(format!("{t:8.3}s {what}"));
}

fn error(log: &Log, started: Instant, what: String) {
    note(log, started, format!("ERROR {what}"));
    log.lock().expect("fault log lock").errors.push(what);
}

/// Injects faults until `until`, then heals everything (resumes what is
/// paused, restarts what is down) and returns what it did. `stop` cuts
/// the run short (the same healing follows).
pub async fn run(
    targets: Targets,
    mut rng: StdRng,
    until: Instant,
    started: Instant,
    mut stop: watch::Receiver<bool>,
    kinds: Vec<Kind>,
) -> FaultLog {
    let log: Log = Arc::new(Mutex::new(FaultLog::default()));
    let (heal_tx, heal_rx) = watch::channel(false);
    let pg_busy = Arc::new(AtomicBool::new(false));
    let broker_busy = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    loop {
        let wait = Duration::from_secs_f64(rng.random_range(2.0..4.5));
        let now = Instant::now();
        if now + wait >= until {
            let _ = sleep_or_stop(until.saturating_duration_since(now), &mut stop).await;
            break;
        }
        if sleep_or_stop(wait, &mut stop).await {
            break;
        }
        // Reap finished fault tasks.
        while tasks.try_join_next().is_some() {}
        let mut order = kinds.clone();
        order.shuffle(&mut rng);
        // Draw every random number up front so the sequence of draws does
        // not depend on which kinds happen to be available.
        let pick = rng.random::<u64>();
        let secs = rng.random::<f64>();
        let mut applied = None;
        for kind in order {
            let ctx = FaultCtx {
                targets: targets.clone(),
                log: log.clone(),
                started,
                heal: heal_rx.clone(),
                pick,
                secs,
            };
            let ok = match kind {
                Kind::RelayKill => relay_kill(&ctx),
                Kind::RelayPause => relay_pause(&ctx, &mut tasks),
                Kind::PgRestart => pg_restart(&ctx, &pg_busy, &mut tasks, false),
                Kind::PgCrash => pg_restart(&ctx, &pg_busy, &mut tasks, true),
                Kind::BrokerPause | Kind::BrokerRestart | Kind::RttSpike => {
                    broker_outage(&ctx, kind, &broker_busy, &mut tasks)
                }
                Kind::LeaderChange | Kind::ProduceErrors => mock_op(&ctx, kind),
            };
            if ok {
                applied = Some(kind);
                break;
            }
        }
        if let Some(kind) = applied {
            *log.lock()
                .expect("fault log lock")
                .counts
                .entry(kind)
                .or_insert(0) += 1;
        }
    }
    note(&log, started, "faults stop: healing".into());
    let _ = heal_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error(&log, started, format!("fault task failed: {e}"));
        }
    }
    if let Err(e) = relays::lock(&targets.relays).heal_all() {
        error(&log, started, format!("restarting relays: {e:#}"));
    }
    let out = log.lock().expect("fault log lock").clone();
    out
}

struct FaultCtx {
    targets: Targets,
    log: Log,
    started: Instant,
    heal: watch::Receiver<bool>,
    /// A random number for choosing the target.
    pick: u64,
    /// A random number in [0, 1) for choosing the duration.
    secs: f64,
}

impl FaultCtx {
    fn duration(&self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(lo + (hi - lo) * self.secs)
    }

    /// A running relay to hit, keeping at least one relay untouched.
    fn relay(&self) -> Option<usize> {
        let relays = relays::lock(&self.targets.relays);
        let running = relays.running();
        if running.len() < 2 {
            return None;
        }
        Some(running[(self.pick % running.len() as u64) as usize])
    }
}
