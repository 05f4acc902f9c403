//! Scratch databases against the real PostgreSQL server named by
//! `OUTBOX_TEST_DATABASE_URL` (default: postgres@127.0.0.1:5432).

use outbox_testkit::{admin_url, ScratchDb};
use sqlx::{Connection, PgConnection};

async fn exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrated_database_is_dropped_with_its_guard() {
    let db = ScratchDb::new().await.unwrap();
    let name = db.name().to_owned();
    assert!(name.starts_with("outbox_test_"), "{name}");
    // The schema is there, through the pool and through the URL alike.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.message")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    // An open connection does not keep the database alive: WITH (FORCE).
    sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
    drop(db);
    assert!(!exists(&name).await);
}

#[tokio::test]
async fn exact_names_replace_leftovers_and_keep_keeps() {
    let name = format!("outbox_testkit_{}", outbox_testkit::random_suffix());
    let first = ScratchDb::builder()
        .name(&name)
        .keep(true)
        .create()
        .await
        .unwrap();
    sqlx::query("CREATE TABLE leftover (x int)")
        .execute(first.pool())
        .await
        .unwrap();
    first.close().await.unwrap();
    assert!(exists(&name).await, "kept");

    let second = ScratchDb::builder().name(&name).create().await.unwrap();
    let leftover: Option<String> = sqlx::query_scalar("SELECT to_regclass('leftover')::text")
        .fetch_one(second.pool())
        .await
        .unwrap();
    assert_eq!(leftover, None, "the earlier database was replaced");
    second.close().await.unwrap();
    assert!(!exists(&name).await);
}

#[tokio::test]
async fn bad_names_are_refused() {
    let err = ScratchDb::builder().name("Robert'); DROP").create().await;
    assert!(
        matches!(err, Err(outbox_testkit::Error::Invalid(_))),
        "{err:?}"
    );
}
