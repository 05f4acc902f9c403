use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::{random_suffix, Error, Result};

/// Admin database used when `OUTBOX_TEST_DATABASE_URL` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL scratch databases are created through:
/// `OUTBOX_TEST_DATABASE_URL`, or [`DEFAULT_ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var("OUTBOX_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` with its database (the path) replaced by `db`, query string kept:
/// `with_database("postgres://u@h:5432/postgres?sslmode=disable", "x")` is
/// `postgres://u@h:5432/x?sslmode=disable`. Works for any `scheme://`
/// URL (MariaDB's too). Fails with [`Error::Invalid`] when `url` has no
/// `://`.
pub fn with_database(url: &str, db: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .ok_or_else(|| Error::Invalid(format!("not a URL: {url}")))?
        + 3;
    let host_and_path = &base[scheme_end..];
    let host = match host_and_path.find('/') {
        Some(slash) => &host_and_path[..slash],
        None => host_and_path,
    };
    let mut out = format!("{}{host}/{db}", &base[..scheme_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A PostgreSQL database of its own, created for one test or one
/// measurement and dropped (`WITH (FORCE)`, cutting any connection still
/// open) when the guard drops or on [`close`](Self::close).
///
/// Dropping the guard blocks the current thread until the `DROP` is done
/// (it runs on a thread with a runtime of its own, so it works inside a
/// test's runtime too); errors are ignored there. Call
/// [`close`](Self::close) to see them, e.g. to learn that prepared
/// transactions still hold the database.
#[derive(Debug)]
pub struct ScratchDb {
    pool: PgPool,
    url: String,
    name: String,
    admin: PgConnectOptions,
    keep: bool,
    dropped: bool,
}

/// How to create a [`ScratchDb`]; see each method for its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct ScratchDbBuilder {
    admin_url: Option<String>,
    name: Option<String>,
    prefix: String,
    pool: PgPoolOptions,
    application_name: Option<String>,
    migrate: bool,
    keep: bool,
}

impl ScratchDb {
    /// A fresh database on [`admin_url()`]'s server, with the outbox schema
    /// (`outbox::migrate`) applied and a pool of up to 10 connections.
    pub async fn new() -> Result<Self> {
        Self::builder().migrate(true).create().await
    }

    /// A fresh, empty database: no outbox schema.
    pub async fn without_schema() -> Result<Self> {
        Self::builder().create().await
    }

    /// Options for a scratch database, to be created with
    /// [`ScratchDbBuilder::create`].
    pub fn builder() -> ScratchDbBuilder {
        ScratchDbBuilder {
            admin_url: None,
            name: None,
            prefix: "outbox_test".to_owned(),
            pool: PgPoolOptions::new().max_connections(10),
            application_name: None,
            migrate: false,
            keep: false,
        }
    }

    /// A pool on the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database's URL, to hand to a relay or a service.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the pool and drops the database (unless it is kept), and
    /// reports whether the `DROP` worked; the guard's drop does nothing
    /// afterwards, whatever the outcome. Fails with [`Error::Connect`],
    /// [`Error::DropDatabase`] (e.g. while a prepared transaction lives in
    /// the database) or [`Error::Timeout`] (30 s).
    pub async fn close(mut self) -> Result<()> {
        self.dropped = true;
        self.pool.close().await;
        if self.keep {
            return Ok(());
        }
        drop_database(&self.admin, &self.name).await
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if self.dropped || self.keep {
            return;
        }
        // Drop runs inside the caller's runtime, which cannot block on a
        // future: do the cleanup on a thread with a runtime of its own and
        // wait for it, so the database is gone when the guard is.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let _ = rt.block_on(drop_database(&admin, &name));
        });
        let _ = cleanup.join();
    }
}

impl ScratchDbBuilder {
    /// The server's admin URL (any database the user may connect to).
    /// Default: [`admin_url()`].
    pub fn admin_url(mut self, url: impl Into<String>) -> Self {
        self.admin_url = Some(url.into());
        self
    }

    /// Names the database `{prefix}_{16 random hex digits}`. Default
    /// prefix: `outbox_test`. Must be `[a-z0-9_]`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Names the database exactly `name` (`[a-z0-9_]`, at most 63 bytes)
    /// instead of a random name. A database of that name left over from an
    /// earlier run is dropped first. Default: a random name, see
    /// [`prefix`](Self::prefix).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Options of the pool on the new database. Default: at most 10
    /// connections, sqlx's defaults otherwise.
    pub fn pool_options(mut self, options: PgPoolOptions) -> Self {
        self.pool = options;
        self
    }

    /// `application_name` of every connection made (the admin one too), so
    /// `pg_stat_activity` tells them from others. Default: sqlx's.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Whether to apply the outbox schema (`outbox::migrate`). Default:
    /// no.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Whether to leave the database in place when the guard drops or
    /// closes (for a post-mortem). Default: no, it is dropped.
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Creates the database, connects the pool and applies the schema if
    /// asked to. On failure, whatever was created is dropped again.
    ///
    /// Fails with [`Error::Invalid`] for a bad URL or name,
    /// [`Error::Connect`], [`Error::CreateDatabase`] or
    /// [`Error::Migrate`]. Retrying creates another database (or, with an
    /// exact [`name`](Self::name), replaces it).
    pub async fn create(self) -> Result<ScratchDb> {
        let admin_url = self.admin_url.unwrap_or_else(admin_url);
        let exact = self.name.is_some();
        let name = self
            .name
            .unwrap_or_else(|| format!("{}_{}", self.prefix, random_suffix()));
        check_name(&name)?;
        let mut admin: PgConnectOptions = admin_url
            .parse()
            .map_err(|_| Error::Invalid(format!("not a PostgreSQL URL: {admin_url}")))?;
        if let Some(app) = &self.application_name {
            admin = admin.application_name(app);
        }
        let url = with_database(&admin_url, &name)?;

        let mut conn = admin.connect().await.map_err(|source| Error::Connect {
            url: format!("{admin_url} (the admin database; set OUTBOX_TEST_DATABASE_URL)"),
            source,
        })?;
        let create = |source| Error::CreateDatabase {
            name: name.clone(),
            source,
        };
        if exact {
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            sqlx::raw_sql(&sql)
                .execute(&mut conn)
                .await
                .map_err(create)?;
        }
        let sql = format!("CREATE DATABASE \"{name}\"");
        sqlx::raw_sql(&sql)
            .execute(&mut conn)
            .await
            .map_err(create)?;
        let _ = conn.close().await;

        let options = admin.clone().database(&name);
        match connect(options, self.pool, self.migrate).await {
            Ok(pool) => Ok(ScratchDb {
                pool,
                url,
                name,
                admin,
                keep: self.keep,
                dropped: false,
            }),
            Err(e) => {
                // Do not leave a half-made database behind.
                if !self.keep {
                    let _ = drop_database(&admin, &name).await;
                }
                Err(e)
            }
        }
    }
}

async fn connect(options: PgConnectOptions, pool: PgPoolOptions, migrate: bool) -> Result<PgPool> {
    let name = options.get_database().unwrap_or_default().to_owned();
    let pool = pool
        .connect_with(options)
        .await
        .map_err(|source| Error::Connect {
            url: name.clone(),
            source,
        })?;
    if migrate {
        outbox::migrate(&pool)
            .await
            .map_err(|source| Error::Migrate { name, source })?;
    }
    Ok(pool)
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)` through a connection of its
/// own to the admin database; gives up after 30 s rather than hang a test.
async fn drop_database(admin: &PgConnectOptions, name: &str) -> Result<()> {
    let drop = async {
        let mut conn = admin.connect().await.map_err(|source| Error::Connect {
            url: "the admin database".to_owned(),
            source,
        })?;
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let result = sqlx::raw_sql(&sql).execute(&mut conn).await;
        let _ = conn.close().await;
        result.map_err(|source| Error::DropDatabase {
            name: name.to_owned(),
            source,
        })?;
        Ok(())
    };
    let limit = Duration::from_secs(30);
    tokio::time::timeout(limit, drop)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("DROP DATABASE {name}"),
            after: limit,
            log: None,
        })?
}

/// Names go into SQL unescaped (inside quotes): allow only what needs no
/// escaping and means the same quoted or not.
fn check_name(name: &str) -> Result<()> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if name.is_empty() || name.len() > 63 || !name.chars().all(plain) {
        return Err(Error::Invalid(format!(
            "database name {name:?}: use [a-z0-9_], at most 63 bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_the_database() {
        let swap = |url, db| with_database(url, db).unwrap();
        assert_eq!(
            swap("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            swap("postgres://u:p@h/db?sslmode=disable", "b"),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(swap("postgres://h", "b"), "postgres://h/b");
        assert_eq!(
            swap("mysql://root@h:3306/test", "x"),
            "mysql://root@h:3306/x"
        );
        assert!(with_database("nothing", "b").is_err());
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("outbox_test_0123abcd").is_ok());
        for bad in ["", "Upper", "semi;colon", "quote\"", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
