//! Shared by the integration tests: real PostgreSQL and MariaDB, fresh
//! databases per test, and checks that nothing is left prepared.

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_coordinator::{Gid, ScratchDatabases};
use outbox_testkit::ChildGuard;

pub fn mysql_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub async fn scratch(tag: &str) -> ScratchDatabases {
    ScratchDatabases::create(&outbox_testkit::admin_url(), &mysql_url(), tag, 4)
        .await
        .expect("create scratch databases")
}

/// Every prepared transaction under `prefix`, on both participants.
pub async fn prepared(db: &ScratchDatabases, prefix: &str) -> Vec<Gid> {
    let mut all = db.orders_participant().prepared(prefix).await.unwrap();
    all.extend(db.inventory_participant().prepared(prefix).await.unwrap());
    all
}

/// Fails the test if anything is still prepared under `prefix`, then drops
/// the databases.
pub async fn finish(db: ScratchDatabases, prefix: &str) {
    let left = prepared(&db, prefix).await;
    assert!(
        left.is_empty(),
        "prepared transactions left behind: {left:?}"
    );
    db.drop_all().await.expect("drop scratch databases");
}

/// Whether the stock row of `sku` can be updated within a 1 s lock wait
/// (false: someone holds its lock).
pub async fn stock_row_free(db: &ScratchDatabases, sku: &str) -> bool {
    let mut conn = db.inventory.acquire().await.unwrap();
    sqlx::Executor::execute(&mut *conn, "SET SESSION innodb_lock_wait_timeout = 1")
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let r = sqlx::query("UPDATE stock SET available = available WHERE sku = ?")
        .bind(sku)
        .execute(&mut *tx)
        .await;
    tx.rollback().await.unwrap();
    match r {
        Ok(_) => true,
        Err(sqlx::Error::Database(e)) if e.message().contains("Lock wait timeout") => false,
        Err(e) => panic!("probe failed: {e}"),
    }
}

/// Starts `outbox-compare <args>` and waits (at most 30 s) for a stdout line
/// starting with `marker`; returns the child (still running, killed when
/// dropped) and the line.
pub async fn spawn_until(args: &[String], marker: &str) -> (ChildGuard, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox-compare"));
    cmd.args(args).stdout(Stdio::piped());
    let mut child =
        ChildGuard::spawn("coordinator child", &mut cmd).expect("spawn coordinator child");
    let line = child
        .wait_for_line(marker, Duration::from_secs(30))
        .await
        .expect("child did not reach its stop point in 30 s");
    (child, line)
}
