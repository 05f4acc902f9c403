use std::time::Duration;

use outbox_testkit::{with_database, ScratchDb};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{MySqlPool, PgPool};

use crate::{Error, Participant, Result};

/// Throw-away databases for one run of the order operation: an orders
/// database and a coordinator database on PostgreSQL, an inventory
/// database on MariaDB. Names are random; [`ScratchDatabases::drop_all`]
/// drops them (it fails while any of them holds a prepared transaction).
/// The PostgreSQL ones are also dropped when this value drops without
/// `drop_all` (a test that panicked); the MariaDB one is not, since a
/// prepared XA branch would make its `DROP DATABASE` wait.
#[derive(Debug)]
pub struct ScratchDatabases {
    mysql_url: String,
    inventory_url: String,
    name: String,
    orders_db: ScratchDb,
    coordinator_db: ScratchDb,
    /// The orders database (`orders` table; run `outbox::migrate` for the
    /// outbox variant).
    pub orders: PgPool,
    /// The inventory database (`stock`, `reservation`).
    pub inventory: MySqlPool,
    /// The coordinator's database (for the [`crate::DecisionLog`]).
    pub coordinator: PgPool,
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
        let pg = |suffix: &str| {
            ScratchDb::builder()
                .admin_url(pg_url)
                .name(format!("{name}_{suffix}"))
                .pool_options(
                    PgPoolOptions::new()
                        .max_connections(max_connections)
                        .acquire_timeout(Duration::from_secs(10)),
                )
                .create()
        };
        let orders_db = pg("orders").await?;
        let coordinator_db = pg("coord").await?;
        let my_admin = MySqlPool::connect(mysql_url)
            .await
            .map_err(Error::db("mariadb"))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}_inv"))
            .execute(&my_admin)
            .await
            .map_err(Error::db("mariadb"))?;
        my_admin.close().await;

        let inventory_url = with_database(mysql_url, &format!("{name}_inv"))?;
        let inventory = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&inventory_url)
            .map_err(Error::db("inventory"))?;
        let orders = orders_db.pool().clone();
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
            mysql_url: mysql_url.to_owned(),
            inventory_url,
            name,
            coordinator: coordinator_db.pool().clone(),
            orders,
            inventory,
            orders_db,
            coordinator_db,
        })
    }

    /// The random part of the names; also a good gid prefix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL of the orders database.
    pub fn orders_url(&self) -> String {
        self.orders_db.url().to_owned()
    }

    /// URL of the coordinator database.
    pub fn coordinator_url(&self) -> String {
        self.coordinator_db.url().to_owned()
    }

    /// URL of the inventory database.
    pub fn inventory_url(&self) -> String {
        self.inventory_url.clone()
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
        self.inventory.close().await;
        self.orders_db.close().await?;
        self.coordinator_db.close().await?;
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
