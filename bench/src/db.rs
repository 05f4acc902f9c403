//! Databases: one fresh database per scenario, bulk loading, sizes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use outbox_testkit::ScratchDb;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::relay::Relay;
use crate::workload;

/// `application_name` of the benchmark's own connections, so the profiler
/// can tell them from the relay's.
const APPLICATION_NAME: &str = "outbox-bench";

/// The server the benchmark creates its databases on.
pub struct Server {
    admin: PgPool,
    base_url: String,
    keep: bool,
}

/// A database created for one scenario; dropped by [`Server::drop_db`], or
/// when it goes out of scope.
pub type Db = ScratchDb;

impl Server {
    /// Connects to `base_url` (any database of the server, used to create
    /// and drop the benchmark's own).
    pub async fn connect(base_url: &str, keep: bool) -> Result<Self> {
        let options: PgConnectOptions = base_url
            .parse()
            .with_context(|| format!("{base_url} is not a PostgreSQL URL"))?;
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.application_name(APPLICATION_NAME))
            .await
            .with_context(|| format!("connecting to {base_url}"))?;
        Ok(Server {
            admin,
            base_url: base_url.to_owned(),
            keep,
        })
    }

    /// Writes out the dirty pages earlier scenarios left (a 1,000,000-row
    /// load leaves hundreds of MiB), so their checkpoint does not land in
    /// the middle of a latency measurement. Needs superuser (or
    /// pg_checkpoint); skipped quietly without it.
    pub async fn checkpoint(&self) {
        let _ = sqlx::query("CHECKPOINT").execute(&self.admin).await;
    }

    /// A new, empty database `name` (dropped first if an earlier run left
    /// it) with the outbox schema, and a pool of `connections` to it.
    pub async fn fresh_db(&self, name: &str, connections: u32) -> Result<Db> {
        Ok(ScratchDb::builder()
            .admin_url(&self.base_url)
            .name(name)
            .pool_options(PgPoolOptions::new().max_connections(connections))
            .application_name(APPLICATION_NAME)
            .migrate(true)
            .keep(self.keep)
            .create()
            .await?)
    }

    /// Closes a scenario's pool and drops its database (unless
    /// `--keep-databases`). A failed drop is ignored: the next run of the
    /// same scenario drops it first.
    pub async fn drop_db(&self, db: Db) {
        let _ = db.close().await;
    }
}

/// Bulk-loads `n` messages for `topic`, numbered from `first`, in
/// statements of at most 250,000 rows. Returns the time it took.
pub async fn load(pool: &PgPool, topic: &str, first: u64, n: u64) -> Result<Duration> {
    let started = Instant::now();
    let ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(250_000);
        sqlx::query(workload::BULK_INSERT)
            .bind(topic)
            .bind((first + done) as i64)
            .bind(chunk as i64)
            .bind(ms)
            .execute(pool)
            .await
            .context("bulk-loading messages")?;
        done += chunk;
    }
    Ok(started.elapsed())
}

/// Makes a freshly loaded backlog look like one that waited for a while:
/// statistics and visibility map up to date, and no checkpoint debt left
/// over from the load to land in the middle of the measurement.
pub async fn settle(pool: &PgPool) -> Result<()> {
    sqlx::query("VACUUM (ANALYZE) outbox.message")
        .execute(pool)
        .await?;
    // Needs superuser (or pg_checkpoint); skip quietly without it.
    let _ = sqlx::query("CHECKPOINT").execute(pool).await;
    Ok(())
}

/// Sizes of `outbox.message`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sizes {
    /// Table, TOAST and indexes.
    pub total_bytes: i64,
    /// Indexes only.
    pub index_bytes: i64,
    /// Rows in the table.
    pub rows: i64,
}

/// Current sizes of `outbox.message`.
pub async fn sizes(pool: &PgPool) -> Result<Sizes> {
    let (total_bytes, index_bytes, rows): (i64, i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('outbox.message'), pg_indexes_size('outbox.message'), \
                (SELECT count(*) FROM outbox.message)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Sizes {
        total_bytes,
        index_bytes,
        rows,
    })
}

/// Pending messages.
pub async fn pending(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE status = 'pending'")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until no pending message is left, while `relay` keeps running.
/// Cheap to poll: it watches the newest message (the relay works in `seq`
/// order), and counts pending rows only once that one is published.
/// Returns the instant the drain was seen complete.
pub async fn wait_drained(pool: &PgPool, relay: &mut Relay, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    let last: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM outbox.message")
        .fetch_one(pool)
        .await?;
    let Some(last) = last else {
        return Ok(Instant::now());
    };
    loop {
        relay.check_alive()?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM outbox.message WHERE seq = $1")
                .bind(last)
                .fetch_optional(pool)
                .await?;
        let seen = Instant::now();
        if status.as_deref() != Some("pending") && pending(pool).await? == 0 {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!(
                "the relay did not drain the backlog within {}s ({} messages still pending)",
                timeout.as_secs(),
                pending(pool).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts messages by status.
pub async fn status_counts(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT status, count(*) FROM outbox.message GROUP BY status ORDER BY status",
    )
    .fetch_all(pool)
    .await?)
}
