//! Bad input is refused loudly and early: invalid messages with typed
//! errors and nothing written; a relay that cannot work (database
//! unreachable, schema missing, bad setting) exits non-zero and says why.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{free_port, run_relay_to_exit, Exited, TestDb};
use outbox::{Error, Limits, Message, Outbox};

async fn message_count(db: &TestDb) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox.message")
        .fetch_one(&db.pool)
        .await?)
}

fn assert_failed(what: &str, run: &Exited) {
    assert!(
        !run.status.success(),
        "{what}: the relay exited successfully; stderr:\n{}",
        run.stderr
    );
}

#[tokio::test]
async fn invalid_topic_is_a_typed_error_and_writes_nothing() -> Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new();
    let too_long = "x".repeat(250);
    let mut tx = db.pool.begin().await?;
    for topic in [
        "",
        ".",
        "..",
        "has space",
        "a/b",
        "ünïcode",
        too_long.as_str(),
    ] {
        let result = outbox
            .enqueue(&mut *tx, Message::new(topic, "payload").key("k"))
            .await;
        match result {
            Err(Error::InvalidTopic { topic: named, .. }) => assert_eq!(named, topic),
            other => panic!("topic {topic:?}: expected Error::InvalidTopic, got {other:?}"),
        }
    }
    // One bad message spoils the whole call: the good one before it is not
    // written either.
    let result = outbox
        .enqueue_all(
            &mut *tx,
            [
                Message::new("good-topic", "fine"),
                Message::new("bad topic", "not fine"),
            ],
        )
        .await;
    assert!(
        matches!(result, Err(Error::InvalidTopic { .. })),
        "got {result:?}"
    );
    assert!(!result.unwrap_err().is_retryable());
    // The transaction is still usable (nothing reached the database) and
    // commits nothing.
    tx.commit().await?;
    assert_eq!(
        message_count(&db).await?,
        0,
        "an invalid message was written"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_payload_is_a_typed_error_and_writes_nothing() -> Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new();
    let limit = outbox::Limits::default().max_payload_bytes;

    let mut tx = db.pool.begin().await?;
    let result = outbox
        .enqueue(&mut *tx, Message::new("orders", vec![7u8; limit + 1]))
        .await;
    match result {
        Err(Error::PayloadTooLarge { size, limit: l }) => {
            assert_eq!((size, l), (limit + 1, limit));
        }
        other => panic!("expected Error::PayloadTooLarge, got {other:?}"),
    }
    // In a batch, the good message before the oversized one is not written.
    let result = outbox
        .enqueue_all(
            &mut *tx,
            [
                Message::new("orders", "small"),
                Message::new("orders", vec![0u8; limit + 1]),
            ],
        )
        .await;
    assert!(
        matches!(result, Err(Error::PayloadTooLarge { .. })),
        "got {result:?}"
    );
    tx.commit().await?;
    assert_eq!(
        message_count(&db).await?,
        0,
        "an oversized message was written"
    );

    // Custom limits apply; exactly at the limit is fine.
    let small = Outbox::with_limits(Limits {
        max_payload_bytes: 100,
        ..Limits::default()
    });
    let mut tx = db.pool.begin().await?;
    let result = small
        .enqueue(&mut *tx, Message::new("orders", vec![1u8; 101]))
        .await;
    assert!(
        matches!(
            result,
            Err(Error::PayloadTooLarge {
                size: 101,
                limit: 100
            })
        ),
        "got {result:?}"
    );
    let id = small
        .enqueue(&mut *tx, Message::new("orders", vec![1u8; 100]))
        .await?;
    tx.commit().await?;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM outbox.message")
        .fetch_all(&db.pool)
        .await?;
    assert_eq!(
        ids,
        vec![id.0],
        "only the message at the limit should be written"
    );
    Ok(())
}

#[tokio::test]
async fn relay_exits_when_the_database_is_unreachable() -> Result<()> {
    // Nothing listens on this port.
    let port = free_port()?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/outbox_nowhere");
    let brokers = format!("127.0.0.1:{}", free_port()?);
    // The relay keeps trying for --connect-timeout (10 s by default).
    let run = run_relay_to_exit(
        "bad_input-unreachable-db",
        &[
            "--database-url",
            &url,
            "--brokers",
            &brokers,
            "--http-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(40),
    )
    .await?;
    assert_failed("unreachable database", &run);
    let stderr = run.stderr.to_lowercase();
    assert!(
        stderr.contains("database") && stderr.contains(&format!("127.0.0.1:{port}")),
        "stderr should name the database it could not reach:\n{}",
        run.stderr
    );
    Ok(())
}

#[tokio::test]
async fn relay_exits_when_the_schema_is_missing() -> Result<()> {
    let db = TestDb::without_schema().await?;
    let brokers = format!("127.0.0.1:{}", free_port()?);
    let run = run_relay_to_exit(
        "bad_input-missing-schema",
        &[
            "--database-url",
            &db.url,
            "--brokers",
            &brokers,
            "--http-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(30),
    )
    .await?;
    assert_failed("missing schema", &run);
    assert!(
        run.stderr.contains("outbox-relay migrate"),
        "stderr should tell to run `outbox-relay migrate`:\n{}",
        run.stderr
    );
    // It did not create the schema behind the operator's back.
    let exists: bool = sqlx::query_scalar("SELECT to_regnamespace('outbox') IS NOT NULL")
        .fetch_one(&db.pool)
        .await?;
    assert!(
        !exists,
        "the relay created the outbox schema without --migrate"
    );

    // `outbox-relay migrate` fixes it.
    let run = run_relay_to_exit(
        "bad_input-migrate",
        &["migrate", "--database-url", &db.url],
        Duration::from_secs(30),
    )
    .await?;
    assert!(
        run.status.success(),
        "outbox-relay migrate failed: {}\n{}",
        run.status,
        run.stderr
    );
    let version = outbox::check_schema(&db.pool).await?;
    assert_eq!(version, newest_migration()?);
    Ok(())
}

#[tokio::test]
async fn relay_exits_on_bad_settings_naming_them() -> Result<()> {
    let db = TestDb::new().await?;
    let brokers = format!("127.0.0.1:{}", free_port()?);
    let cases: &[(&str, &[&str], &str)] = &[
        ("batch-size-zero", &["--batch-size", "0"], "batch-size"),
        (
            "batch-size-huge",
            &["--batch-size", "1000000"],
            "batch-size",
        ),
        (
            "cron",
            &["--sweep-schedule", "every minute"],
            "sweep-schedule",
        ),
        ("lease-too-short", &["--lease", "2s"], "lease"),
        (
            "poll-interval",
            &["--poll-interval", "soon"],
            "poll-interval",
        ),
        (
            "max-attempts-zero",
            &["--max-attempts", "0"],
            "max-attempts",
        ),
        (
            "message-timeout",
            &["--kafka", "message.timeout.ms=later"],
            "message.timeout.ms",
        ),
    ];
    for (name, args, setting) in cases {
        let mut all = vec![
            "--database-url",
            db.url.as_str(),
            "--brokers",
            brokers.as_str(),
            "--http-listen",
            "127.0.0.1:0",
        ];
        all.extend_from_slice(args);
        let run = run_relay_to_exit(
            &format!("bad_input-setting-{name}"),
            &all,
            Duration::from_secs(30),
        )
        .await?;
        assert_failed(&format!("{args:?}"), &run);
        assert!(
            run.stderr.contains(setting),
            "{args:?}: stderr should name `{setting}`:\n{}",
            run.stderr
        );
    }
    // Nothing ran: no relay registered, no shard taken.
    let taken: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox.shard_lease WHERE owner IS NOT NULL")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(taken, 0, "a relay with a bad setting took shards");
    Ok(())
}

/// The version of the newest migration the workspace ships (the number
/// its file name starts with).
fn newest_migration() -> Result<i64> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../outbox/migrations");
    let mut newest = 0;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.split('_').next().and_then(|v| v.parse().ok()) {
            newest = newest.max(version);
        }
    }
    Ok(newest)
}
