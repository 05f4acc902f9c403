use sqlx::migrate::Migrator;
use sqlx::{Connection, PgPool};

use crate::error::{Error, Result};

/// The outbox schema's migrations, embedded from the crate's
/// `migrations/` folder. Their history is kept in
/// `outbox._sqlx_migrations`, apart from the application's own. Private:
/// run directly it would record its history in `public._sqlx_migrations`
/// and hold sqlx's migration lock against the application's own
/// migrations; [`migrate`] sets the search path first.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates or upgrades the `outbox` schema. Safe to call from every
/// instance at start-up: concurrent callers wait on sqlx's migration lock
/// and already-applied migrations are skipped.
///
/// Fails with [`Error::Migrate`] when a migration fails or one applied
/// earlier was changed since, or [`Error::Database`] when the database is
/// unreachable.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    // A dedicated connection: the search_path we set must not leak into
    // the pool.
    let mut conn = pool.acquire().await?.detach();
    if let Err(e) = sqlx::query("CREATE SCHEMA IF NOT EXISTS outbox")
        .execute(&mut conn)
        .await
    {
        // Two instances creating the schema at the same moment: one loses
        // with a duplicate error, which is fine.
        let duplicate = matches!(&e, sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("23505" | "42P06")));
        if !duplicate {
            return Err(e.into());
        }
    }
    sqlx::query("SET search_path TO outbox")
        .execute(&mut conn)
        .await?;
    let result = MIGRATOR.run(&mut conn).await;
    let _ = conn.close().await;
    result.map_err(Error::from)
}

/// The newest migration version this build embeds.
pub(crate) fn required_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Checks that the schema exists and is at least as new as this build
/// needs, without changing anything. Returns the applied version.
///
/// Fails with [`Error::SchemaMissing`] or [`Error::SchemaOutdated`], whose
/// messages say which command fixes it.
pub async fn check_schema(pool: &PgPool) -> Result<i64> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('outbox._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        return Err(Error::SchemaMissing);
    }
    let found: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM outbox._sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    let required = required_schema_version();
    match found {
        None => Err(Error::SchemaMissing),
        Some(found) if found < required => Err(Error::SchemaOutdated { found, required }),
        Some(found) => Ok(found),
    }
}
