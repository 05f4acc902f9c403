use crate::{DecisionLog, Gid, Participant, Result};

/// What [`recover`] did.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Prepared branches committed because the log holds a commit decision:
    /// `(participant, gid)`.
    pub committed: Vec<(String, Gid)>,
    /// Prepared branches rolled back because the log holds no decision
    /// (presumed abort).
    pub rolled_back: Vec<(String, Gid)>,
    /// Branches that could not be resolved this time (for example a MariaDB
    /// XA branch whose crashed session the server has not noticed yet):
    /// `(participant, gid, error)`. Run recovery again.
    pub failed: Vec<(String, Gid, String)>,
}

impl Recovered {
    /// Whether every in-doubt branch was resolved.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Resolves every in-doubt transaction of the coordinator with gid
/// `prefix`.
///
/// The rule is **presumed abort**: each participant is asked for its
/// prepared transactions (`pg_prepared_xacts`, `XA RECOVER`) whose gid
/// starts with `prefix`; a gid with a logged commit decision is committed,
/// any other gid, including ones the log has never heard of, is rolled
/// back. That is safe because the coordinator logs the commit decision
/// before telling anyone to commit: without a log row no participant can
/// have committed. Finally, logged decisions that no participant still
/// holds prepared are marked finished.
///
/// Run it only while no coordinator with this prefix is running (on start):
/// a live coordinator's prepared-but-undecided transaction would be rolled
/// back under it. Safe to run again; each run picks up what is left.
pub async fn recover(
    log: &DecisionLog,
    prefix: &str,
    participants: &[Participant],
) -> Result<Recovered> {
    let mut out = Recovered::default();
    for p in participants {
        for gid in p.prepared(prefix).await? {
            let commit = log.is_committed(&gid).await?;
            let result = if commit {
                p.commit_prepared(&gid).await
            } else {
                p.rollback_prepared(&gid).await
            };
            let entry = (p.name().to_owned(), gid);
            match result {
                Ok(()) if commit => out.committed.push(entry),
                Ok(()) => out.rolled_back.push(entry),
                Err(e) => out.failed.push((entry.0, entry.1, e.to_string())),
            }
        }
    }
    let still_in_doubt: Vec<&Gid> = out.failed.iter().map(|f| &f.1).collect();
    for gid in log.unfinished(prefix).await? {
        if !still_in_doubt.contains(&&gid) {
            log.mark_finished(&gid).await?;
        }
    }
    Ok(out)
}
