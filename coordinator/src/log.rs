use sqlx::PgPool;

use crate::{Error, Gid, Result};

/// The coordinator's durable decision log: a table in the coordinator's own
/// PostgreSQL database.
///
/// Only *commit* decisions are written (presumed abort): a gid with no
/// commit row was never decided, so recovery rolls it back. The row is
/// committed before any participant is told to commit, which is what makes
/// a coordinator crash after the decision recoverable in the commit
/// direction.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    pool: PgPool,
}

const TARGET: &str = "decision log";

impl DecisionLog {
    /// A log in the database behind `pool`. Call [`DecisionLog::migrate`] once.
    pub fn new(pool: PgPool) -> Self {
        DecisionLog { pool }
    }

    /// Creates the `coordinator_log` table if it is missing. Safe to run on
    /// every start.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS coordinator_log (
                gid          text        PRIMARY KEY,
                participants text[]      NOT NULL,
                decided_at   timestamptz NOT NULL DEFAULT now(),
                -- Set once every participant confirmed the commit.
                finished_at  timestamptz
            );
            CREATE INDEX IF NOT EXISTS coordinator_log_unfinished
                ON coordinator_log (gid) WHERE finished_at IS NULL;",
        )
        .execute(&self.pool)
        .await
        .map_err(Error::db(TARGET))?;
        Ok(())
    }

    /// Durably records the decision to commit `gid` (its own transaction,
    /// committed when this returns). Idempotent.
    pub async fn log_commit(&self, gid: &Gid, participants: &[&str]) -> Result<()> {
        sqlx::query("INSERT INTO coordinator_log (gid, participants) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(gid.as_str())
            .bind(participants)
            .execute(&self.pool)
            .await
            .map_err(Error::db(TARGET))?;
        Ok(())
    }

    /// Whether a commit decision was logged for `gid`.
    pub async fn is_committed(&self, gid: &Gid) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM coordinator_log WHERE gid = $1)")
            .bind(gid.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(TARGET))
    }

    /// Marks `gid` finished: every participant committed it.
    pub async fn mark_finished(&self, gid: &Gid) -> Result<()> {
        sqlx::query(
            "UPDATE coordinator_log SET finished_at = now() WHERE gid = $1 AND finished_at IS NULL",
        )
        .bind(gid.as_str())
        .execute(&self.pool)
        .await
        .map_err(Error::db(TARGET))?;
        Ok(())
    }

    /// Commit decisions under `prefix` not yet marked finished.
    pub async fn unfinished(&self, prefix: &str) -> Result<Vec<Gid>> {
        let gids: Vec<String> = sqlx::query_scalar(
            "SELECT gid FROM coordinator_log WHERE finished_at IS NULL ORDER BY decided_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db(TARGET))?;
        Ok(gids
            .iter()
            .filter_map(|g| Gid::parse(g).ok())
            .filter(|g| g.has_prefix(prefix))
            .collect())
    }
}
