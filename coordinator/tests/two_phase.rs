//! 2PC over PostgreSQL (orders) and MariaDB (inventory): both commit or
//! neither does.

mod common;

use outbox_coordinator::{DecisionLog, Error, TwoPhase, Work};
use uuid::Uuid;

async fn coordinator(db: &outbox_coordinator::ScratchDatabases) -> TwoPhase {
    let log = DecisionLog::new(db.coordinator.clone());
    log.migrate().await.unwrap();
    TwoPhase::new(db.name(), log).unwrap()
}

fn shares(
    db: &outbox_coordinator::ScratchDatabases,
    order_id: Uuid,
    qty: i32,
) -> Vec<(outbox_coordinator::Participant, Work)> {
    vec![
        (
            db.orders_participant(),
            Work::InsertOrder {
                order_id,
                sku: "A1".into(),
                qty,
            },
        ),
        (
            db.inventory_participant(),
            Work::ReserveStock {
                order_id,
                sku: "A1".into(),
                qty,
            },
        ),
    ]
}

#[tokio::test]
async fn commit_applies_both_databases() {
    let db = common::scratch("c2pc").await;
    db.seed_stock("A1", 10).await.unwrap();
    let tpc = coordinator(&db).await;
    let outcome = tpc.run(&shares(&db, Uuid::now_v7(), 3)).await.unwrap();
    assert_eq!(db.order_count().await.unwrap(), 1);
    assert_eq!(db.stock("A1").await.unwrap(), 7);
    assert_eq!(db.reservation_count().await.unwrap(), 1);
    assert!(
        tpc.log().is_committed(&outcome.gid).await.unwrap(),
        "decision not logged"
    );
    assert!(
        tpc.log().unfinished(db.name()).await.unwrap().is_empty(),
        "log entry not finished"
    );
    assert!(outcome.lock_held.is_some());
    common::finish(db, tpc.prefix()).await;
}

#[tokio::test]
async fn inventory_voting_no_rolls_back_the_order() {
    let db = common::scratch("c2pc").await;
    db.seed_stock("A1", 2).await.unwrap();
    let tpc = coordinator(&db).await;
    // Short stock: the CHECK (available >= 0) fails on MariaDB, after the
    // order was already inserted on PostgreSQL.
    let err = tpc.run(&shares(&db, Uuid::now_v7(), 3)).await.unwrap_err();
    assert!(
        matches!(err, Error::VotedNo { ref participant, .. } if participant == "inventory"),
        "{err}"
    );
    assert_eq!(
        db.order_count().await.unwrap(),
        0,
        "order committed without stock"
    );
    assert_eq!(db.stock("A1").await.unwrap(), 2);
    assert!(tpc.log().unfinished(db.name()).await.unwrap().is_empty());
    common::finish(db, tpc.prefix()).await;
}

#[tokio::test]
async fn orders_voting_no_rolls_back_the_stock() {
    let db = common::scratch("c2pc").await;
    db.seed_stock("A1", 10).await.unwrap();
    let tpc = coordinator(&db).await;
    let order_id = Uuid::now_v7();
    tpc.run(&shares(&db, order_id, 1)).await.unwrap();
    // The same order id again: PostgreSQL refuses (primary key), after
    // MariaDB decremented the stock inside the branch.
    let err = tpc.run(&shares(&db, order_id, 1)).await.unwrap_err();
    assert!(
        matches!(err, Error::VotedNo { ref participant, .. } if participant == "orders"),
        "{err}"
    );
    assert_eq!(
        db.stock("A1").await.unwrap(),
        9,
        "stock taken without an order"
    );
    assert_eq!(db.order_count().await.unwrap(), 1);
    common::finish(db, tpc.prefix()).await;
}
