use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::pool::PoolConnection;
use sqlx::{MySql, MySqlPool, PgPool, Postgres, Row};
use uuid::Uuid;

use crate::{Error, Gid, Result};

/// One participant's share of the business operation.
///
/// The order/inventory operation has two shares: the orders database inserts
/// the order, the inventory database decrements the stock row (and records
/// the reservation, so the two databases can be checked against each other).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Work {
    /// `INSERT INTO orders (id, sku, qty)`.
    InsertOrder {
        /// The order's id.
        order_id: Uuid,
        /// What was ordered.
        sku: String,
        /// How many.
        qty: i32,
    },
    /// `UPDATE stock SET available = available - qty` (the CHECK
    /// `available >= 0` makes this fail when short) and
    /// `INSERT INTO reservation`.
    ReserveStock {
        /// The order the stock is reserved for.
        order_id: Uuid,
        /// The stock row.
        sku: String,
        /// How many.
        qty: i32,
    },
}

/// Which database a participant is and how to reach it.
#[derive(Debug, Clone)]
pub enum Backend {
    /// PostgreSQL: `BEGIN` … `PREPARE TRANSACTION` / `COMMIT PREPARED`.
    Postgres(PgPool),
    /// MariaDB/MySQL: `XA START` … `XA END; XA PREPARE` / `XA COMMIT`.
    MariaDb(MySqlPool),
}

/// A resource manager that can prepare a transaction and later commit or
/// roll it back by gid, from any connection.
#[derive(Debug, Clone)]
pub struct Participant {
    name: Arc<str>,
    backend: Backend,
}

/// How a committed branch went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Completed {
    /// From the moment the branch's stock `UPDATE` returned (the row lock is
    /// held from then on) to the moment its commit returned. `None` if the
    /// branch did not touch stock.
    pub lock_held: Option<Duration>,
}

impl Participant {
    /// A PostgreSQL participant. The server needs `max_prepared_transactions > 0`.
    pub fn postgres(name: impl Into<String>, pool: PgPool) -> Self {
        Participant {
            name: name.into().into(),
            backend: Backend::Postgres(pool),
        }
    }

    /// A MariaDB/MySQL participant (XA transactions).
    pub fn mariadb(name: impl Into<String>, pool: MySqlPool) -> Self {
        Participant {
            name: name.into().into(),
            backend: Backend::MariaDb(pool),
        }
    }

    /// The participant's name, used in errors and reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend (pool) behind this participant.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Starts a transaction branch for `gid` on a connection of its own.
    /// Fails with [`Error::Database`] if no connection can be had. Safe to
    /// retry: nothing is held after a failure.
    pub async fn begin(&self, gid: &Gid) -> Result<Branch> {
        let err = Error::db(self.name());
        let conn = match &self.backend {
            Backend::Postgres(pool) => {
                let c = pool.acquire().await.map_err(err)?;
                Conn::Pg(c)
            }
            Backend::MariaDb(pool) => {
                let c = pool.acquire().await.map_err(err)?;
                Conn::My(c)
            }
        };
        let start = match conn {
            Conn::Pg(_) => "BEGIN".to_owned(),
            Conn::My(_) => format!("XA START '{gid}'"),
        };
        let mut branch = Branch {
            participant: self.clone(),
            gid: gid.clone(),
            conn,
            // Done until started: a failed start returns the connection to
            // the pool untouched.
            state: State::Done,
            locked_at: None,
        };
        branch.exec(&start).await.map_err(Error::db(self.name()))?;
        branch.state = State::Active;
        Ok(branch)
    }

    /// The prepared (in-doubt) transactions on this participant whose gid
    /// starts with `prefix` (`pg_prepared_xacts` of this database, or
    /// `XA RECOVER`).
    pub async fn prepared(&self, prefix: &str) -> Result<Vec<Gid>> {
        let err = Error::db(self.name());
        let raw: Vec<String> = match &self.backend {
            Backend::Postgres(pool) => sqlx::query_scalar(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared",
            )
            .fetch_all(pool)
            .await
            .map_err(err)?,
            Backend::MariaDb(pool) => {
                let rows = sqlx::raw_sql("XA RECOVER").fetch_all(pool).await.map_err(err)?;
                rows.iter()
                    .filter_map(|r| r.try_get::<Vec<u8>, _>("data").ok())
                    .map(|d| String::from_utf8_lossy(&d).into_owned())
                    .collect()
            }
        };
        Ok(raw
            .iter()
            .filter_map(|g| Gid::parse(g).ok())
            .filter(|g| g.has_prefix(prefix))
            .collect())
    }

    /// `COMMIT PREPARED` / `XA COMMIT` for a branch prepared earlier, from
    /// any connection. Fails if no such prepared transaction exists (it was
    /// already resolved) or, on MariaDB, while the session that prepared it
    /// is still connected.
    pub async fn commit_prepared(&self, gid: &Gid) -> Result<()> {
        match &self.backend {
            Backend::Postgres(pool) => {
                exec_pool_pg(pool, &format!("COMMIT PREPARED '{gid}'")).await
            }
            Backend::MariaDb(pool) => exec_pool_my(pool, &format!("XA COMMIT '{gid}'")).await,
        }
        .map_err(Error::db(self.name()))
    }

    /// `ROLLBACK PREPARED` / `XA ROLLBACK` for a branch prepared earlier;
    /// the same conditions as [`Participant::commit_prepared`].
    pub async fn rollback_prepared(&self, gid: &Gid) -> Result<()> {
        match &self.backend {
            Backend::Postgres(pool) => {
                exec_pool_pg(pool, &format!("ROLLBACK PREPARED '{gid}'")).await
            }
            Backend::MariaDb(pool) => exec_pool_my(pool, &format!("XA ROLLBACK '{gid}'")).await,
        }
        .map_err(Error::db(self.name()))
    }
}

async fn exec_pool_pg(pool: &PgPool, sql: &str) -> sqlx::Result<()> {
    sqlx::raw_sql(sql).execute(pool).await.map(drop)
}

async fn exec_pool_my(pool: &MySqlPool, sql: &str) -> sqlx::Result<()> {
    sqlx::raw_sql(sql).execute(pool).await.map(drop)
}

enum Conn {
    Pg(PoolConnection<Postgres>),
    My(PoolConnection<MySql>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Prepared,
    Done,
}

/// One participant's branch of a global transaction, on its own connection.
///
/// Dropped before it is committed or rolled back, its connection is closed
/// rather than returned to the pool: an active branch is then rolled back
/// by the server, a prepared one stays prepared (in doubt) for recovery.
pub struct Branch {
    participant: Participant,
    gid: Gid,
    conn: Conn,
    state: State,
    locked_at: Option<Instant>,
}

impl std::fmt::Debug for Branch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Branch")
            .field("participant", &self.participant.name())
            .field("gid", &self.gid)
            .field("state", &self.state)
            .finish()
    }
}

impl Branch {
    /// The global transaction id.
    pub fn gid(&self) -> &Gid {
        &self.gid
    }

    /// The participant this branch runs on.
    pub fn participant(&self) -> &Participant {
        &self.participant
    }

    /// Does `work` inside the branch. Fails with [`Error::VotedNo`] when the
    /// work itself is refused (short stock, duplicate order, unknown sku);
    /// the branch must then be rolled back.
    pub async fn apply(&mut self, work: &Work) -> Result<()> {
        // Boxed (with `Send` stated) so that callers spawning this future do
        // not trip over sqlx's higher-ranked `Executor` bounds.
        self.apply_boxed(work).await
    }

    fn apply_boxed<'a>(&'a mut self, work: &'a Work) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let name = self.participant.name().to_owned();
            let refused = |e: sqlx::Error| Error::VotedNo {
                participant: name.clone(),
                reason: e.to_string(),
            };
            match (&mut self.conn, work) {
                (Conn::Pg(c), Work::InsertOrder { order_id, sku, qty }) => {
                    sqlx::query("INSERT INTO orders (id, sku, qty) VALUES ($1, $2, $3)")
                        .bind(order_id)
                        .bind(sku)
                        .bind(qty)
                        .execute(&mut **c)
                        .await
                        .map_err(refused)?;
                }
                (Conn::My(c), Work::InsertOrder { order_id, sku, qty }) => {
                    sqlx::query("INSERT INTO orders (id, sku, qty) VALUES (?, ?, ?)")
                        .bind(order_id.to_string())
                        .bind(sku)
                        .bind(qty)
                        .execute(&mut **c)
                        .await
                        .map_err(refused)?;
                }
                (Conn::Pg(c), Work::ReserveStock { order_id, sku, qty }) => {
                    let n =
                        sqlx::query("UPDATE stock SET available = available - $2 WHERE sku = $1")
                            .bind(sku)
                            .bind(qty)
                            .execute(&mut **c)
                            .await
                            .map_err(refused)?
                            .rows_affected();
                    self.locked_at.get_or_insert_with(Instant::now);
                    if n == 0 {
                        return Err(refused(sqlx::Error::RowNotFound));
                    }
                    sqlx::query("INSERT INTO reservation (order_id, sku, qty) VALUES ($1, $2, $3)")
                        .bind(order_id)
                        .bind(sku)
                        .bind(qty)
                        .execute(&mut **c)
                        .await
                        .map_err(refused)?;
                }
                (Conn::My(c), Work::ReserveStock { order_id, sku, qty }) => {
                    let n = sqlx::query("UPDATE stock SET available = available - ? WHERE sku = ?")
                        .bind(qty)
                        .bind(sku)
                        .execute(&mut **c)
                        .await
                        .map_err(refused)?
                        .rows_affected();
                    self.locked_at.get_or_insert_with(Instant::now);
                    if n == 0 {
                        return Err(refused(sqlx::Error::RowNotFound));
                    }
                    sqlx::query("INSERT INTO reservation (order_id, sku, qty) VALUES (?, ?, ?)")
                        .bind(order_id.to_string())
                        .bind(sku)
                        .bind(qty)
                        .execute(&mut **c)
                        .await
                        .map_err(refused)?;
                }
            }
            Ok(())
        })
    }

    /// Phase one: makes the branch durable and votes yes
    /// (`PREPARE TRANSACTION` / `XA END; XA PREPARE`). Fails with
    /// [`Error::VotedNo`] if the participant refuses; the branch must then
    /// be rolled back.
    pub async fn prepare(&mut self) -> Result<()> {
        let gid = &self.gid;
        let sql = match self.conn {
            Conn::Pg(_) => format!("PREPARE TRANSACTION '{gid}'"),
            Conn::My(_) => format!("XA END '{gid}'; XA PREPARE '{gid}'"),
        };
        self.exec(&sql).await.map_err(|e| Error::VotedNo {
            participant: self.participant.name().to_owned(),
            reason: e.to_string(),
        })?;
        self.state = State::Prepared;
        Ok(())
    }

    /// Whether [`Branch::prepare`] succeeded.
    pub fn is_prepared(&self) -> bool {
        self.state == State::Prepared
    }

    /// Phase two: commits the prepared branch (`COMMIT PREPARED` /
    /// `XA COMMIT`). On failure the branch stays in doubt, to be finished by
    /// recovery.
    pub async fn commit(mut self) -> Result<Completed> {
        let gid = &self.gid;
        let sql = match self.conn {
            Conn::Pg(_) => format!("COMMIT PREPARED '{gid}'"),
            Conn::My(_) => format!("XA COMMIT '{gid}'"),
        };
        self.exec(&sql)
            .await
            .map_err(Error::db(self.participant.name()))?;
        self.state = State::Done;
        Ok(Completed {
            lock_held: self.locked_at.map(|t| t.elapsed()),
        })
    }

    /// Rolls the branch back, prepared or not. On failure the connection is
    /// closed; an unprepared branch dies with it, a prepared one is left to
    /// recovery.
    pub async fn rollback(mut self) -> Result<()> {
        let gid = &self.gid;
        let sql = match (&self.conn, self.state) {
            (Conn::Pg(_), State::Prepared) => format!("ROLLBACK PREPARED '{gid}'"),
            (Conn::Pg(_), _) => "ROLLBACK".to_owned(),
            (Conn::My(_), State::Prepared) => format!("XA ROLLBACK '{gid}'"),
            (Conn::My(_), _) => format!("XA END '{gid}'; XA ROLLBACK '{gid}'"),
        };
        self.exec(&sql)
            .await
            .map_err(Error::db(self.participant.name()))?;
        self.state = State::Done;
        Ok(())
    }

    fn exec<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            match &mut self.conn {
                Conn::Pg(c) => sqlx::Executor::execute(&mut **c, sql).await.map(drop),
                Conn::My(c) => sqlx::Executor::execute(&mut **c, sql).await.map(drop),
            }
        })
    }
}

impl Drop for Branch {
    fn drop(&mut self) {
        if self.state != State::Done {
            match &mut self.conn {
                Conn::Pg(c) => c.close_on_drop(),
                Conn::My(c) => c.close_on_drop(),
            }
        }
    }
}
