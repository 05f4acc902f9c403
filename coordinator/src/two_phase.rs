use std::time::Duration;

use futures::future::join_all;

use crate::{check_prefix, Branch, DecisionLog, Gid, Participant, Result, Work};

/// A two-phase-commit coordinator with a durable [`DecisionLog`].
///
/// Protocol: every participant does its work and prepares (phase one); if
/// all voted yes, the commit decision is written to the log and committed;
/// only then is each participant told to commit (phase two). If anyone votes
/// no, everyone prepared so far is rolled back and nothing is logged.
///
/// A coordinator that dies between the two phases leaves its participants
/// *in doubt*: their rows stay locked until [`TwoPhase::recover`] runs.
#[derive(Debug, Clone)]
pub struct TwoPhase {
    prefix: String,
    log: DecisionLog,
}

/// What a global transaction did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its gid.
    pub gid: Gid,
    /// The longest time any branch held its stock row lock (see
    /// [`crate::Completed::lock_held`]).
    pub lock_held: Option<Duration>,
}

/// A global transaction whose participants have all prepared (voted yes).
///
/// Dropping it without [`Prepared::commit`] or [`Prepared::abort`] leaves
/// the branches prepared, exactly as a coordinator crash would.
#[derive(Debug)]
pub struct Prepared {
    gid: Gid,
    log: DecisionLog,
    branches: Vec<Branch>,
}

impl TwoPhase {
    /// A coordinator whose gids start with `prefix` (`[a-z0-9_-]`, at most
    /// 31 bytes). Give every coordinator its own prefix: recovery resolves
    /// all prepared transactions under it.
    pub fn new(prefix: impl Into<String>, log: DecisionLog) -> Result<Self> {
        let prefix = prefix.into();
        check_prefix(&prefix)?;
        Ok(TwoPhase { prefix, log })
    }

    /// The gid prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The decision log.
    pub fn log(&self) -> &DecisionLog {
        &self.log
    }

    /// Runs both phases. On `Err` before the decision, nothing was committed
    /// anywhere; an `Err` from phase two means the decision is commit and
    /// recovery will finish it. Not safe to retry blindly after a phase-two
    /// error (the work may be committed).
    pub async fn run(&self, shares: &[(Participant, Work)]) -> Result<Outcome> {
        self.prepare(shares).await?.commit().await
    }

    /// Phase one: begins a branch per share (concurrently), applies the work
    /// and prepares. If any participant fails or votes no, every branch is
    /// rolled back and the first error is returned.
    pub async fn prepare(&self, shares: &[(Participant, Work)]) -> Result<Prepared> {
        let gid = Gid::new(&self.prefix)?;
        let results = join_all(shares.iter().map(|(p, work)| {
            let gid = gid.clone();
            async move {
                let mut branch = p.begin(&gid).await.map_err(|e| (e, None))?;
                let done = async {
                    branch.apply(work).await?;
                    branch.prepare().await
                }
                .await;
                match done {
                    Ok(()) => Ok(branch),
                    Err(e) => Err((e, Some(branch))),
                }
            }
        }))
        .await;
        let mut branches = Vec::with_capacity(results.len());
        let mut first_error = None;
        for r in results {
            match r {
                Ok(b) => branches.push(b),
                Err((e, b)) => {
                    first_error.get_or_insert(e);
                    if let Some(b) = b {
                        branches.push(b);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            rollback_all(branches).await;
            return Err(e);
        }
        Ok(Prepared {
            gid,
            log: self.log.clone(),
            branches,
        })
    }

    /// Resolves every in-doubt transaction under this coordinator's prefix
    /// on `participants`; see [`crate::recover`]. Run it on start, before
    /// taking new work.
    pub async fn recover(&self, participants: &[Participant]) -> Result<crate::Recovered> {
        crate::recover(&self.log, &self.prefix, participants).await
    }
}

impl Prepared {
    /// The gid.
    pub fn gid(&self) -> &Gid {
        &self.gid
    }

    /// Writes the commit decision to the log (durable when this returns)
    /// without telling anyone yet. [`Prepared::commit`] does this itself;
    /// it is public so that a crash right after the decision can be staged.
    pub async fn log_commit(&self) -> Result<()> {
        let names: Vec<&str> = self
            .branches
            .iter()
            .map(|b| b.participant().name())
            .collect();
        self.log.log_commit(&self.gid, &names).await
    }

    /// Phase two: logs the decision, then commits every branch
    /// (concurrently) and marks the log entry finished. If logging fails,
    /// the branches are left in doubt for recovery (the outcome of the
    /// failed log write is unknown). If a branch fails to commit, the first
    /// error is returned and that branch stays in doubt for recovery, which
    /// will commit it.
    pub async fn commit(self) -> Result<Outcome> {
        // If logging fails we cannot know whether the row committed (the
        // ack may be what was lost), so we must not roll back either: the
        // branches stay prepared (their connections are closed on drop) and
        // recovery resolves them by what the log really says.
        self.log_commit().await?;
        let Prepared { gid, log, branches } = self;
        let results = join_all(branches.into_iter().map(Branch::commit)).await;
        let mut lock_held: Option<Duration> = None;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(c) => lock_held = lock_held.max(c.lock_held),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        log.mark_finished(&gid).await?;
        Ok(Outcome { gid, lock_held })
    }

    /// Rolls every branch back (decision: abort, which is never logged).
    pub async fn abort(self) {
        rollback_all(self.branches).await;
    }
}

async fn rollback_all(branches: Vec<Branch>) {
    // A failed rollback closes the connection: an unprepared branch dies
    // with it, a prepared one is left to recovery (presumed abort).
    let _ = join_all(branches.into_iter().map(Branch::rollback)).await;
}
