use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{AgentClient, Branch, Error, Gid, Participant, Result, Work};

/// How long an agent waits for the coordinator's next message: 2 s. Without
/// PreCommit within this time after voting yes it aborts; without DoCommit
/// (or Abort) within this time after PreCommit it commits.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A 3PC `CanCommit` request: the gid and this participant's share of the
/// work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanCommitRequest {
    /// The global transaction id.
    pub gid: String,
    /// What to do.
    pub work: Work,
}

/// A 3PC `PreCommit`, `DoCommit` or `Abort` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GidRequest {
    /// The global transaction id.
    pub gid: String,
}

/// An agent's vote on `CanCommit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vote {
    /// Yes: the work is done and prepared.
    pub yes: bool,
    /// Why not, when `yes` is false.
    pub reason: Option<String>,
}

/// Faults an agent can be told to simulate (all off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Every `PreCommit` is lost: answered 503, not acted on.
    pub lose_pre_commit: bool,
    /// After acknowledging a `PreCommit`, the agent is cut off from the
    /// coordinator for that transaction: every later message for it is
    /// answered 503 and not acted on (a partition right after PreCommit).
    pub deaf_after_pre_commit: bool,
}

/// How an agent finished a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Committed (else rolled back).
    pub committed: bool,
    /// Decided by the agent's own timer rather than a coordinator message.
    pub by_timeout: bool,
    /// How long the stock row lock was held, when it committed.
    pub lock_held: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prepared,
    PreCommitted,
}

struct Slot {
    phase: Phase,
    // Bumped on every phase change so a stale timer does nothing.
    epoch: u64,
    branch: Option<Branch>,
}

type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

struct Shared {
    participant: Participant,
    timeout: Duration,
    slots: Mutex<HashMap<Gid, SlotRef>>,
    resolved: Mutex<HashMap<Gid, Resolved>>,
    faults: Mutex<Faults>,
    deaf: Mutex<HashSet<Gid>>,
}

/// A 3PC participant agent: an HTTP server in front of one database that
/// holds each transaction's work as a prepared transaction between phases
/// and keeps its own timers.
///
/// Endpoints (POST, JSON): `/can-commit` ([`CanCommitRequest`] → [`Vote`]):
/// does the work and prepares it; `/pre-commit`, `/do-commit`, `/abort`
/// ([`GidRequest`]); `/faults` ([`Faults`]). Timeout rules: prepared and no
/// PreCommit within the timeout → roll back; pre-committed and no DoCommit
/// or Abort within the timeout → commit.
///
/// Dropping or stopping the agent abandons whatever it still holds: those
/// transactions stay prepared on the database (as after a crash).
pub struct Agent {
    shared: Arc<Shared>,
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("url", &self.url).finish()
    }
}

impl Agent {
    /// Starts an agent for `participant` on `addr` (`127.0.0.1:0` for any
    /// free port). Fails with [`Error::Agent`] if it cannot bind.
    pub async fn start(participant: Participant, timeout: Duration, addr: &str) -> Result<Agent> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Agent {
                url: addr.to_owned(),
                reason: e.to_string(),
            })?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| Error::Agent {
                url: addr.to_owned(),
                reason: e.to_string()
            })?
        );
        let shared = Arc::new(Shared {
            participant,
            timeout,
            slots: Mutex::default(),
            resolved: Mutex::default(),
            faults: Mutex::default(),
            deaf: Mutex::default(),
        });
        let router = Router::new()
            .route("/can-commit", post(can_commit))
            .route("/pre-commit", post(pre_commit))
            .route("/do-commit", post(do_commit))
            .route("/abort", post(abort))
            .route("/faults", post(set_faults))
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Agent {
            shared,
            url,
            shutdown: Some(tx),
            server,
        })
    }

    /// The agent's base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client for this agent.
    pub fn client(&self, request_timeout: Duration) -> AgentClient {
        AgentClient::new(self.url.clone(), request_timeout)
    }

    /// How the agent finished `gid`, if it has.
    pub fn resolution(&self, gid: &Gid) -> Option<Resolved> {
        self.shared.resolved.lock().unwrap().get(gid).copied()
    }

    /// How many transactions the agent still holds prepared.
    pub fn in_flight(&self) -> usize {
        self.shared.slots.lock().unwrap().len()
    }

    /// Sets the faults to simulate from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// Stops serving; pending timers keep running while the runtime does.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

type Reply<T> = (StatusCode, Json<T>);

fn reply(status: StatusCode, msg: impl Into<String>) -> Reply<Vote> {
    (
        status,
        Json(Vote {
            yes: status.is_success(),
            reason: Some(msg.into()),
        }),
    )
}

async fn can_commit(
    State(s): State<Arc<Shared>>,
    Json(req): Json<CanCommitRequest>,
) -> Reply<Vote> {
    let gid = match Gid::parse(&req.gid) {
        Ok(g) => g,
        Err(e) => return reply(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let branch = async {
        let mut b = s.participant.begin(&gid).await?;
        let done = async {
            b.apply(&req.work).await?;
            b.prepare().await
        }
        .await;
        match done {
            Ok(()) => Ok(b),
            Err(e) => {
                let _ = b.rollback().await;
                Err(e)
            }
        }
    }
    .await;
    match branch {
        Ok(branch) => {
            let slot = Arc::new(tokio::sync::Mutex::new(Slot {
                phase: Phase::Prepared,
                epoch: 0,
                branch: Some(branch),
            }));
            s.slots.lock().unwrap().insert(gid.clone(), slot);
            spawn_timer(s.clone(), gid, 0);
            (
                StatusCode::OK,
                Json(Vote {
                    yes: true,
                    reason: None,
                }),
            )
        }
        Err(e) => {
            s.resolved.lock().unwrap().insert(
                gid,
                Resolved {
                    committed: false,
                    by_timeout: false,
                    lock_held: None,
                },
            );
            (
                StatusCode::OK,
                Json(Vote {
                    yes: false,
                    reason: Some(e.to_string()),
                }),
            )
        }
    }
}

fn lookup(s: &Shared, gid: &str) -> std::result::Result<(Gid, Option<SlotRef>), Reply<Vote>> {
    let gid = Gid::parse(gid).map_err(|e| reply(StatusCode::BAD_REQUEST, e.to_string()))?;
    if s.deaf.lock().unwrap().contains(&gid) {
        return Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "cut off from the coordinator (fault)",
        ));
    }
    let slot = s.slots.lock().unwrap().get(&gid).cloned();
    Ok((gid, slot))
}

async fn pre_commit(State(s): State<Arc<Shared>>, Json(req): Json<GidRequest>) -> Reply<Vote> {
    let (gid, slot) = match lookup(&s, &req.gid) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let faults = *s.faults.lock().unwrap();
    if faults.lose_pre_commit {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "PreCommit lost (fault)");
    }
    let Some(slot) = slot else {
        return reply(
            StatusCode::CONFLICT,
            "not prepared here (aborted or unknown)",
        );
    };
    let mut slot = slot.lock().await;
    if slot.branch.is_none() {
        return reply(StatusCode::CONFLICT, "already resolved");
    }
    if slot.phase == Phase::Prepared {
        slot.phase = Phase::PreCommitted;
        slot.epoch += 1;
        spawn_timer(s.clone(), gid.clone(), slot.epoch);
    }
    if faults.deaf_after_pre_commit {
        s.deaf.lock().unwrap().insert(gid);
    }
    reply(StatusCode::OK, "pre-committed")
}

async fn do_commit(State(s): State<Arc<Shared>>, Json(req): Json<GidRequest>) -> Reply<Vote> {
    let (gid, slot) = match lookup(&s, &req.gid) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(slot) = slot else {
        return match s.resolved.lock().unwrap().get(&gid) {
            Some(r) if r.committed => reply(StatusCode::OK, "committed"),
            _ => reply(
                StatusCode::CONFLICT,
                "not prepared here (aborted or unknown)",
            ),
        };
    };
    let mut slot = slot.lock().await;
    if slot.phase != Phase::PreCommitted {
        return reply(StatusCode::CONFLICT, "DoCommit before PreCommit");
    }
    finish(&s, &gid, &mut slot, true, false).await
}

async fn abort(State(s): State<Arc<Shared>>, Json(req): Json<GidRequest>) -> Reply<Vote> {
    let (gid, slot) = match lookup(&s, &req.gid) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(slot) = slot else {
        return match s.resolved.lock().unwrap().get(&gid) {
            Some(r) if r.committed => reply(StatusCode::CONFLICT, "already committed"),
            _ => reply(StatusCode::OK, "aborted"),
        };
    };
    let mut slot = slot.lock().await;
    finish(&s, &gid, &mut slot, false, false).await
}

async fn set_faults(State(s): State<Arc<Shared>>, Json(f): Json<Faults>) -> Reply<Vote> {
    *s.faults.lock().unwrap() = f;
    reply(StatusCode::OK, "faults set")
}

/// Commits or rolls back the slot's branch and records the result.
async fn finish(
    s: &Shared,
    gid: &Gid,
    slot: &mut Slot,
    commit: bool,
    by_timeout: bool,
) -> Reply<Vote> {
    let Some(branch) = slot.branch.take() else {
        return match s.resolved.lock().unwrap().get(gid) {
            Some(r) if r.committed == commit => reply(StatusCode::OK, "already done"),
            _ => reply(StatusCode::CONFLICT, "already resolved the other way"),
        };
    };
    slot.epoch += 1;
    let result = if commit {
        branch.commit().await.map(|c| c.lock_held)
    } else {
        branch.rollback().await.map(|()| None)
    };
    s.slots.lock().unwrap().remove(gid);
    match result {
        Ok(lock_held) => {
            s.resolved.lock().unwrap().insert(
                gid.clone(),
                Resolved {
                    committed: commit,
                    by_timeout,
                    lock_held,
                },
            );
            reply(StatusCode::OK, if commit { "committed" } else { "aborted" })
        }
        // The branch stays prepared on the database, for an operator.
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn spawn_timer(s: Arc<Shared>, gid: Gid, epoch: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(s.timeout).await;
        let Some(slot) = s.slots.lock().unwrap().get(&gid).cloned() else {
            return;
        };
        let mut slot = slot.lock().await;
        if slot.epoch != epoch || slot.branch.is_none() {
            return;
        }
        // The 3PC rule: before PreCommit, silence means abort; after it,
        // silence means everyone voted yes, so commit.
        let commit = slot.phase == Phase::PreCommitted;
        let _ = finish(&s, &gid, &mut slot, commit, true).await;
    });
}
