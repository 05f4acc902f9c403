//! The fault scenarios, each run for real: (a) the coordinator SIGKILLed
//! after the participants prepared, (b) the inventory database
//! unreachable, (c) a 3PC participant cut off during PreCommit.

mod coordinator_killed;
mod cut_off;
mod inventory_down;

use std::time::Duration;

use outbox_coordinator::{Agent, DecisionLog, ScratchDatabases, ThreePhase, TwoPhase};

use super::Args;

/// Runs (a), (b) and (c) on `db` and returns their markdown sections.
pub async fn fault_scenarios(db: &ScratchDatabases, args: &Args) -> anyhow::Result<String> {
    let mut r = String::new();
    let log = DecisionLog::new(db.coordinator.clone());
    log.migrate().await?;
    let participants = [db.orders_participant(), db.inventory_participant()];
    let tpc = TwoPhase::new(db.name(), log)?;
    coordinator_killed::two_phase(&mut r, db, &tpc, &participants).await?;
    let timeout = Duration::from_millis(args.agent_timeout_ms);
    let orders_agent = Agent::start(db.orders_participant(), timeout, "127.0.0.1:0").await?;
    let inventory_agent = Agent::start(db.inventory_participant(), timeout, "127.0.0.1:0").await?;
    coordinator_killed::three_phase(&mut r, db, args, &orders_agent, &inventory_agent).await?;
    let tpc3 = ThreePhase::new(db.name())?;
    inventory_down::run(&mut r, db, &tpc, &tpc3, &orders_agent).await?;
    cut_off::run(&mut r, db, &tpc3, &orders_agent, &inventory_agent).await?;
    orders_agent.stop().await;
    inventory_agent.stop().await;
    Ok(r)
}

/// Whether an order for `sku` committed.
async fn order_exists(db: &ScratchDatabases, sku: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE sku = $1")
            .bind(sku)
            .fetch_one(&db.orders)
            .await?
            > 0,
    )
}

/// How an agent resolved a transaction, for the tables.
fn show(r: Option<outbox_coordinator::Resolved>) -> String {
    match r {
        Some(r) => format!(
            "{}{}",
            if r.committed { "commit" } else { "abort" },
            if r.by_timeout {
                " by its own timeout"
            } else {
                " on the coordinator's message"
            }
        ),
        None => "unresolved".into(),
    }
}
