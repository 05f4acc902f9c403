use std::time::Duration;

use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{MySqlPool, PgPool};

use crate::{Error, Participant, Result};

/// Throw-away databases for one run of the order operation: an orders
/// database and a coordinator database on PostgreSQL, an inventory
/// database on MariaDB. Names are random; [`ScratchDatabases::drop_all`]
/// drops them (it fails while any of them holds a prepared transaction).
#[derive(Debug)]
pub struct ScratchDatabases {
    pg_url: String,
    mysql_url: String,
    name: String,
    /// The orders database (`orders` table; run `outbox::migrate` for the
    /// outbox variant).
    pub orders: PgPool,
    /// The inventory database (`stock`, `reservation`).
    pub inventory: MySqlPool,
    /// The coordinator's database (for the [`crate::DecisionLog`]).
    pub coordinator: PgPool,
}

/// `url` with its database path replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| i + scheme_end);
    format!("{}/{db}", &url[..path_start])
}

impl ScratchDatabases {
    /// Creates `<tag>_<random>_orders`, `…_coord` on the PostgreSQL server
    /// at `pg_url` and `…_inv` on the MariaDB server at `mysql_url`, with
    /// their tables. Pools hold at most `max_connections` each.
    pub async fn create(
        pg_url: &str,
        mysql_url: &str,
        tag: &str,
        max_connections: u32,
    ) -> Result<Self> {
        let name = format!("{tag}_{:08x}", rand::random::<u32>());
        let admin = PgPool::connect(pg_url)
            .await
            .map_err(Error::db("postgres"))?;
        for suffix in ["orders", "coord"] {
            sqlx::raw_sql(&format!("CREATE DATABASE {name}_{suffix}"))
                .execute(&admin)
                .await
                .map_err(Error::db("postgres"))?;
        }
        admin.close().await;
        let my_admin = MySqlPool::connect(mysql_url)
            .await
            .map_err(Error::db("mariadb"))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}_inv"))
            .execute(&my_admin)
            .await
            .map_err(Error::db("mariadb"))?;
        my_admin.close().await;

        let pg = |db: String| {
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy(&with_database(pg_url, &db))
                .map_err(Error::db(db))
        };
        let orders = pg(format!("{name}_orders"))?;
        let coordinator = pg(format!("{name}_coord"))?;
        let inventory = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&with_database(mysql_url, &format!("{name}_inv")))
            .map_err(Error::db("inventory"))?;
        sqlx::raw_sql(
            "CREATE TABLE orders (
                id         uuid        PRIMARY KEY,
                sku        text        NOT NULL,
                qty        integer     NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .execute(&orders)
        .await
        .map_err(Error::db("orders"))?;
        sqlx::raw_sql(
            "CREATE TABLE stock (
                sku       VARCHAR(64) PRIMARY KEY,
                available INT NOT NULL,
                CONSTRAINT stock_not_negative CHECK (available >= 0)
            ) ENGINE=InnoDB;
            CREATE TABLE reservation (
                order_id CHAR(36)    PRIMARY KEY,
                sku      VARCHAR(64) NOT NULL,
                qty      INT         NOT NULL
            ) ENGINE=InnoDB;",
        )
        .execute(&inventory)
        .await
        .map_err(Error::db("inventory"))?;
        Ok(ScratchDatabases {
            pg_url: pg_url.to_owned(),
            mysql_url: mysql_url.to_owned(),
            name,
            orders,
            inventory,
            coordinator,
        })
    }

    /// The random part of the names; also a good gid prefix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL of the orders database.
    pub fn orders_url(&self) -> String {
        with_database(&self.pg_url, &format!("{}_orders", self.name))
    }

    /// URL of the coordinator database.
    pub fn coordinator_url(&self) -> String {
        with_database(&self.pg_url, &format!("{}_coord", self.name))
    }

    /// URL of the inventory database.
    pub fn inventory_url(&self) -> String {
        with_database(&self.mysql_url, &format!("{}_inv", self.name))
    }

    /// The orders database as a participant named `orders`.
    pub fn orders_participant(&self) -> Participant {
        Participant::postgres("orders", self.orders.clone())
    }

    /// The inventory database as a participant named `inventory`.
    pub fn inventory_participant(&self) -> Participant {
        Participant::mariadb("inventory", self.inventory.clone())
    }

    /// Sets the stock of `sku` to `available`.
    pub async fn seed_stock(&self, sku: &str, available: i32) -> Result<()> {
        sqlx::query("REPLACE INTO stock (sku, available) VALUES (?, ?)")
            .bind(sku)
            .bind(available)
            .execute(&self.inventory)
            .await
            .map_err(Error::db("inventory"))?;
        Ok(())
    }

    /// Current stock of `sku` (committed data).
    pub async fn stock(&self, sku: &str) -> Result<i64> {
        sqlx::query_scalar::<_, i32>("SELECT available FROM stock WHERE sku = ?")
            .bind(sku)
            .fetch_one(&self.inventory)
            .await
            .map(i64::from)
            .map_err(Error::db("inventory"))
    }

    /// Committed orders.
    pub async fn order_count(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&self.orders)
            .await
            .map_err(Error::db("orders"))
    }

    /// Committed reservations.
    pub async fn reservation_count(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT count(*) FROM reservation")
            .fetch_one(&self.inventory)
            .await
            .map_err(Error::db("inventory"))
    }

    /// Closes the pools and drops the three databases. Fails while any of
    /// them holds a prepared transaction.
    pub async fn drop_all(self) -> Result<()> {
        self.orders.close().await;
        self.coordinator.close().await;
        self.inventory.close().await;
        let admin = PgPool::connect(&self.pg_url)
            .await
            .map_err(Error::db("postgres"))?;
        for suffix in ["orders", "coord"] {
            sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS {}_{suffix} WITH (FORCE)",
                self.name
            ))
            .execute(&admin)
            .await
            .map_err(Error::db("postgres"))?;
        }
        admin.close().await;
        let my_admin = MySqlPool::connect(&self.mysql_url)
            .await
            .map_err(Error::db("mariadb"))?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {}_inv", self.name))
            .execute(&my_admin)
            .await
            .map_err(Error::db("mariadb"))?;
        my_admin.close().await;
        Ok(())
    }
}
