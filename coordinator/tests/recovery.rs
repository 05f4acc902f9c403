//! A 2PC coordinator (a child process) is SIGKILLed between prepare and
//! commit; the in-doubt branches keep the stock row locked until a
//! restarted coordinator's recovery resolves them: commit when the decision
//! was logged, roll back when it was not (presumed abort).

mod common;

use std::time::Duration;

use outbox_coordinator::{DecisionLog, Gid, ScratchDatabases, TwoPhase};

fn child_args(db: &ScratchDatabases, stop_after: &str) -> Vec<String> {
    [
        "child2pc",
        "--orders-url",
        &db.orders_url(),
        "--inventory-url",
        &db.inventory_url(),
        "--coordinator-url",
        &db.coordinator_url(),
        "--prefix",
        db.name(),
        "--sku",
        "A1",
        "--qty",
        "2",
        "--stop-after",
        stop_after,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Kills a coordinator at `stop_after` and checks the in-doubt state;
/// returns the gid and a restarted coordinator.
async fn crash(db: &ScratchDatabases, stop_after: &str, marker: &str) -> (Gid, TwoPhase) {
    db.seed_stock("A1", 10).await.unwrap();
    let log = DecisionLog::new(db.coordinator.clone());
    log.migrate().await.unwrap();
    let (mut child, line) = common::spawn_until(&child_args(db, stop_after), marker).await;
    let gid = Gid::parse(line.split_whitespace().nth(1).unwrap()).unwrap();
    child.kill();

    // In doubt on both databases, and the stock row is blocked.
    outbox_testkit::wait_for(
        "both branches to stay prepared after the crash",
        Duration::from_secs(10),
        || async {
            let prepared = common::prepared(db, db.name()).await;
            let both = prepared.iter().filter(|g| **g == gid).count() == 2;
            Ok::<_, outbox_testkit::Error>(both.then_some(()))
        },
    )
    .await
    .unwrap();
    assert!(
        !common::stock_row_free(db, "A1").await,
        "in-doubt branch should hold the stock row lock"
    );
    assert_eq!(db.order_count().await.unwrap(), 0);
    (gid, TwoPhase::new(db.name(), log).unwrap())
}

/// Recovery, retried until complete: MariaDB may need a moment to notice
/// the killed session before its XA branch can be finished elsewhere.
async fn recover(db: &ScratchDatabases, tpc: &TwoPhase) -> outbox_coordinator::Recovered {
    let participants = [db.orders_participant(), db.inventory_participant()];
    let mut all = outbox_coordinator::Recovered::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = tpc.recover(&participants).await.unwrap();
        all.committed.extend(r.committed);
        all.rolled_back.extend(r.rolled_back);
        if r.failed.is_empty() {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recovery did not complete: {:?}",
            r.failed
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn crash_before_decision_is_rolled_back() {
    let db = common::scratch("crec").await;
    let (gid, tpc) = crash(&db, "prepare", "PREPARED").await;
    assert!(!tpc.log().is_committed(&gid).await.unwrap());

    let r = recover(&db, &tpc).await;
    assert_eq!(r.rolled_back.len(), 2, "{r:?}");
    assert!(r.committed.is_empty(), "{r:?}");
    assert_eq!(db.order_count().await.unwrap(), 0);
    assert_eq!(db.stock("A1").await.unwrap(), 10);
    assert!(
        common::stock_row_free(&db, "A1").await,
        "lock still held after recovery"
    );
    common::finish(db, tpc.prefix()).await;
}

#[tokio::test]
async fn crash_after_decision_is_committed() {
    let db = common::scratch("crec").await;
    let (gid, tpc) = crash(&db, "decision", "DECIDED").await;
    assert!(tpc.log().is_committed(&gid).await.unwrap());
    assert_eq!(
        tpc.log().unfinished(db.name()).await.unwrap(),
        vec![gid.clone()]
    );

    let r = recover(&db, &tpc).await;
    assert_eq!(r.committed.len(), 2, "{r:?}");
    assert!(r.rolled_back.is_empty(), "{r:?}");
    assert_eq!(db.order_count().await.unwrap(), 1);
    assert_eq!(db.stock("A1").await.unwrap(), 8);
    assert_eq!(db.reservation_count().await.unwrap(), 1);
    assert!(
        tpc.log().unfinished(db.name()).await.unwrap().is_empty(),
        "decision not marked finished"
    );
    assert!(common::stock_row_free(&db, "A1").await);
    common::finish(db, tpc.prefix()).await;
}

#[tokio::test]
async fn recovery_ignores_other_coordinators() {
    let db = common::scratch("crec").await;
    let (gid, tpc) = crash(&db, "prepare", "PREPARED").await;
    // Another coordinator's recovery must not touch our in-doubt work.
    let other = TwoPhase::new(format!("{}x", db.name()), tpc.log().clone()).unwrap();
    let r = other
        .recover(&[db.orders_participant(), db.inventory_participant()])
        .await
        .unwrap();
    assert!(r.committed.is_empty() && r.rolled_back.is_empty(), "{r:?}");
    assert_eq!(
        common::prepared(&db, db.name())
            .await
            .iter()
            .filter(|g| **g == gid)
            .count(),
        2
    );
    recover(&db, &tpc).await;
    common::finish(db, tpc.prefix()).await;
}
