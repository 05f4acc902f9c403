//! 3PC with one HTTP agent per database. The agents' timer rules: silence
//! before PreCommit means abort, silence after PreCommit means commit; and
//! the partition in which that rule makes the participants disagree.

mod common;

use std::time::Duration;

use outbox_coordinator::{
    Agent, AgentClient, Faults, Gid, Resolved, ScratchDatabases, ThreePhase, Work,
};
use uuid::Uuid;

const AGENT_TIMEOUT: Duration = Duration::from_millis(800);

struct Setup {
    db: ScratchDatabases,
    orders: Agent,
    inventory: Agent,
    coordinator: ThreePhase,
}

async fn setup() -> Setup {
    let db = common::scratch("c3pc").await;
    db.seed_stock("A1", 10).await.unwrap();
    let orders = Agent::start(db.orders_participant(), AGENT_TIMEOUT, "127.0.0.1:0")
        .await
        .unwrap();
    let inventory = Agent::start(db.inventory_participant(), AGENT_TIMEOUT, "127.0.0.1:0")
        .await
        .unwrap();
    let coordinator = ThreePhase::new(db.name()).unwrap();
    Setup {
        db,
        orders,
        inventory,
        coordinator,
    }
}

impl Setup {
    fn agents(&self) -> Vec<AgentClient> {
        vec![
            self.orders.client(Duration::from_secs(5)),
            self.inventory.client(Duration::from_secs(5)),
        ]
    }

    fn shares(&self, qty: i32) -> Vec<(AgentClient, Work)> {
        let order_id = Uuid::now_v7();
        let a = self.agents();
        vec![
            (
                a[0].clone(),
                Work::InsertOrder {
                    order_id,
                    sku: "A1".into(),
                    qty,
                },
            ),
            (
                a[1].clone(),
                Work::ReserveStock {
                    order_id,
                    sku: "A1".into(),
                    qty,
                },
            ),
        ]
    }

    /// Waits (at most 10 s) until both agents resolved `gid`.
    async fn resolutions(&self, gid: &Gid) -> (Resolved, Resolved) {
        let what = format!("both agents to resolve {gid}");
        outbox_testkit::wait_for(&what, Duration::from_secs(10), || async {
            let both = self
                .orders
                .resolution(gid)
                .zip(self.inventory.resolution(gid));
            Ok::<_, outbox_testkit::Error>(both)
        })
        .await
        .unwrap()
    }

    async fn finish(self) {
        assert_eq!(self.orders.in_flight() + self.inventory.in_flight(), 0);
        let prefix = self.db.name().to_owned();
        self.orders.stop().await;
        self.inventory.stop().await;
        common::finish(self.db, &prefix).await;
    }
}

#[tokio::test]
async fn all_three_phases_commit_both() {
    let s = setup().await;
    let gid = s.coordinator.run(&s.shares(3)).await.unwrap();
    let (o, i) = s.resolutions(&gid).await;
    assert!(o.committed && i.committed);
    assert!(
        !o.by_timeout && !i.by_timeout,
        "DoCommit was delivered; no timer should decide"
    );
    assert_eq!(s.db.order_count().await.unwrap(), 1);
    assert_eq!(s.db.stock("A1").await.unwrap(), 7);
    s.finish().await;
}

#[tokio::test]
async fn silence_before_pre_commit_aborts() {
    let s = setup().await;
    let gid = s.coordinator.can_commit(&s.shares(3)).await.unwrap();
    // Both hold the work prepared while they wait for PreCommit.
    assert_eq!(common::prepared(&s.db, s.db.name()).await.len(), 2);
    let (o, i) = s.resolutions(&gid).await;
    assert_eq!(
        (o.committed, o.by_timeout),
        (false, true),
        "orders agent: {o:?}"
    );
    assert_eq!(
        (i.committed, i.by_timeout),
        (false, true),
        "inventory agent: {i:?}"
    );
    assert_eq!(s.db.order_count().await.unwrap(), 0);
    assert_eq!(s.db.stock("A1").await.unwrap(), 10);
    // A late PreCommit is refused: the agent already aborted.
    assert!(s.agents()[0].pre_commit(&gid).await.is_err());
    s.finish().await;
}

#[tokio::test]
async fn silence_after_pre_commit_commits() {
    let s = setup().await;
    let gid = s.coordinator.can_commit(&s.shares(3)).await.unwrap();
    s.coordinator.pre_commit(&gid, &s.agents()).await.unwrap();
    assert_eq!(common::prepared(&s.db, s.db.name()).await.len(), 2);
    let (o, i) = s.resolutions(&gid).await;
    assert_eq!(
        (o.committed, o.by_timeout),
        (true, true),
        "orders agent: {o:?}"
    );
    assert_eq!(
        (i.committed, i.by_timeout),
        (true, true),
        "inventory agent: {i:?}"
    );
    assert_eq!(s.db.order_count().await.unwrap(), 1);
    assert_eq!(s.db.stock("A1").await.unwrap(), 7);
    s.finish().await;
}

/// The known failure of 3PC: the orders agent acknowledges PreCommit and is
/// then cut off; the inventory agent never gets its PreCommit, so the
/// coordinator decides abort. Inventory aborts, orders commits by timeout.
#[tokio::test]
async fn partition_after_pre_commit_makes_participants_disagree() {
    let s = setup().await;
    s.orders.set_faults(Faults {
        deaf_after_pre_commit: true,
        ..Faults::default()
    });
    s.inventory.set_faults(Faults {
        lose_pre_commit: true,
        ..Faults::default()
    });
    let shares = s.shares(3);
    let err = s.coordinator.run(&shares).await.unwrap_err();
    assert!(err.to_string().contains("PreCommit lost"), "{err}");
    let gid = common::prepared(&s.db, s.db.name()).await;
    let gid = gid.first().cloned();
    // The coordinator's Abort reached inventory, not orders.
    let gid = match gid {
        Some(g) => g,
        None => panic!("orders agent should still hold its branch"),
    };
    let (o, i) = s.resolutions(&gid).await;
    assert_eq!(
        (o.committed, o.by_timeout),
        (true, true),
        "orders agent: {o:?}"
    );
    assert!(!i.committed, "inventory agent: {i:?}");
    assert_eq!(s.db.order_count().await.unwrap(), 1, "order committed");
    assert_eq!(s.db.stock("A1").await.unwrap(), 10, "but no stock reserved");
    s.finish().await;
}
