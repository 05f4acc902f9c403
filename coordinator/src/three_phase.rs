use std::time::Duration;

use futures::future::join_all;

use crate::agent::{CanCommitRequest, Faults, GidRequest, Vote};
use crate::http::post_json;
use crate::{check_prefix, Error, Gid, Result, Work};

/// How long the 3PC coordinator waits for one agent's answer: 5 s (longer
/// than a CanCommit that waits behind a hot row lock).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Talks to one 3PC [`crate::Agent`] over HTTP.
///
/// Every call is one request on a fresh connection with a deadline. An
/// `Err` does not say whether the agent acted (the answer may be what was
/// lost); every message is idempotent on the agent, so resending is safe.
#[derive(Debug, Clone)]
pub struct AgentClient {
    url: String,
    timeout: Duration,
}

impl AgentClient {
    /// A client for the agent at `url` (`http://host:port`).
    pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
        AgentClient {
            url: url.into(),
            timeout,
        }
    }

    /// The agent's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Phase one: the agent does `work` and prepares it. `Ok` is a yes vote;
    /// [`Error::VotedNo`] a no.
    pub async fn can_commit(&self, gid: &Gid, work: &Work) -> Result<()> {
        let req = CanCommitRequest {
            gid: gid.to_string(),
            work: work.clone(),
        };
        self.send("/can-commit", &req).await
    }

    /// Phase two: everyone voted yes; the agent acknowledges.
    pub async fn pre_commit(&self, gid: &Gid) -> Result<()> {
        self.send(
            "/pre-commit",
            &GidRequest {
                gid: gid.to_string(),
            },
        )
        .await
    }

    /// Phase three: commit.
    pub async fn do_commit(&self, gid: &Gid) -> Result<()> {
        self.send(
            "/do-commit",
            &GidRequest {
                gid: gid.to_string(),
            },
        )
        .await
    }

    /// Roll back whatever the agent holds for `gid`.
    pub async fn abort(&self, gid: &Gid) -> Result<()> {
        self.send(
            "/abort",
            &GidRequest {
                gid: gid.to_string(),
            },
        )
        .await
    }

    /// Tells the agent which faults to simulate.
    pub async fn set_faults(&self, faults: Faults) -> Result<()> {
        self.send("/faults", &faults).await
    }

    async fn send(&self, path: &str, body: &impl serde::Serialize) -> Result<()> {
        let (status, body) = post_json(&self.url, path, body, self.timeout).await?;
        let vote: Option<Vote> = serde_json::from_slice(&body).ok();
        let reason = vote
            .as_ref()
            .and_then(|v| v.reason.clone())
            .unwrap_or_default();
        match (status, vote) {
            (200, Some(v)) if v.yes => Ok(()),
            (200, _) => Err(Error::VotedNo {
                participant: self.url.clone(),
                reason,
            }),
            (status, _) => Err(Error::Agent {
                url: self.url.clone(),
                reason: format!("{path}: {status} {reason}"),
            }),
        }
    }
}

/// A three-phase-commit coordinator: CanCommit → PreCommit → DoCommit.
///
/// It keeps no log: the agents' timers finish a transaction whose
/// coordinator went silent (abort before PreCommit, commit after it). Any
/// failure before every agent acknowledged PreCommit makes it abort.
#[derive(Debug, Clone)]
pub struct ThreePhase {
    prefix: String,
}

impl ThreePhase {
    /// A coordinator whose gids start with `prefix` (`[a-z0-9_-]`, at most
    /// 31 bytes).
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        check_prefix(&prefix)?;
        Ok(ThreePhase { prefix })
    }

    /// Runs all three phases and returns the gid. `Err` from CanCommit or
    /// PreCommit means the coordinator decided abort (and told every agent
    /// it could reach); `Err` from DoCommit means the decision was commit
    /// and the agents that did not hear it commit by timeout.
    pub async fn run(&self, shares: &[(AgentClient, Work)]) -> Result<Gid> {
        let gid = self.can_commit(shares).await?;
        let agents: Vec<AgentClient> = shares.iter().map(|(a, _)| a.clone()).collect();
        self.pre_commit(&gid, &agents).await?;
        self.do_commit(&gid, &agents).await?;
        Ok(gid)
    }

    /// Phase one, concurrently. On any no vote or failure, sends Abort to
    /// every agent and returns the first error.
    pub async fn can_commit(&self, shares: &[(AgentClient, Work)]) -> Result<Gid> {
        let gid = Gid::new(&self.prefix)?;
        let votes = join_all(shares.iter().map(|(a, w)| a.can_commit(&gid, w))).await;
        if let Some(e) = votes.into_iter().find_map(Result::err) {
            abort_all(&gid, shares.iter().map(|(a, _)| a)).await;
            return Err(e);
        }
        Ok(gid)
    }

    /// Phase two, concurrently. On any failure, sends Abort to every agent
    /// and returns the first error.
    pub async fn pre_commit(&self, gid: &Gid, agents: &[AgentClient]) -> Result<()> {
        let acks = join_all(agents.iter().map(|a| a.pre_commit(gid))).await;
        if let Some(e) = acks.into_iter().find_map(Result::err) {
            abort_all(gid, agents.iter()).await;
            return Err(e);
        }
        Ok(())
    }

    /// Phase three, concurrently; returns the first error (the agents that
    /// missed it commit by timeout).
    pub async fn do_commit(&self, gid: &Gid, agents: &[AgentClient]) -> Result<()> {
        let done = join_all(agents.iter().map(|a| a.do_commit(gid))).await;
        done.into_iter().collect::<Result<Vec<()>>>().map(drop)
    }
}

async fn abort_all<'a>(gid: &Gid, agents: impl Iterator<Item = &'a AgentClient>) {
    // Best effort: an agent we cannot reach aborts by timeout, unless it
    // already acknowledged PreCommit (the case where 3PC can disagree).
    let _ = join_all(agents.map(|a| a.abort(gid))).await;
}
