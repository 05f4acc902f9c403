//! Fault (c): a 3PC participant cut off from the coordinator during
//! PreCommit. The orders agent acknowledges PreCommit and hears nothing
//! more; the inventory agent's PreCommit is lost, so the coordinator
//! aborts; each agent's timer then decides on its own.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use outbox_coordinator::{Agent, Faults, ScratchDatabases, ThreePhase, Work};
use uuid::Uuid;

use super::{order_exists, show};
use crate::compare::AGENT_REQUEST_TIMEOUT;

/// Writes the section.
pub(super) async fn run(
    r: &mut String,
    db: &ScratchDatabases,
    tpc3: &ThreePhase,
    orders_agent: &Agent,
    inventory_agent: &Agent,
) -> anyhow::Result<()> {
    writeln!(
        r,
        "\n## Fault (c): a participant cut off from the coordinator during PreCommit (3PC)\n"
    )?;
    let s = "Dsplit".to_string();
    db.seed_stock(&s, 10).await?;
    orders_agent.set_faults(Faults {
        deaf_after_pre_commit: true,
        ..Faults::default()
    });
    inventory_agent.set_faults(Faults {
        lose_pre_commit: true,
        ..Faults::default()
    });
    let order_id = Uuid::now_v7();
    let shares = [
        (
            orders_agent.client(AGENT_REQUEST_TIMEOUT),
            Work::InsertOrder {
                order_id,
                sku: s.clone(),
                qty: 1,
            },
        ),
        (
            inventory_agent.client(AGENT_REQUEST_TIMEOUT),
            Work::ReserveStock {
                order_id,
                sku: s.clone(),
                qty: 1,
            },
        ),
    ];
    let outcome = tpc3.run(&shares).await;
    let in_doubt = db.orders_participant().prepared(db.name()).await?;
    let gid = in_doubt.first().cloned();
    let deadline = Instant::now() + Duration::from_secs(10);
    if let Some(gid) = &gid {
        while (orders_agent.resolution(gid).is_none() || inventory_agent.resolution(gid).is_none())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (o, i) = match &gid {
        Some(g) => (orders_agent.resolution(g), inventory_agent.resolution(g)),
        None => (None, None),
    };
    let order = order_exists(db, &s).await?;
    let stock = db.stock(&s).await?;
    writeln!(
        r,
        "The orders agent acknowledges PreCommit and then hears nothing more; the inventory agent's PreCommit is lost, \
         so the coordinator decides **abort** (`{}`) and sends Abort to both; only inventory receives it.\n",
        outcome.err().map(|e| e.to_string()).unwrap_or_else(|| "it committed?".into())
    )?;
    writeln!(r, "| participant | outcome |\n| --- | --- |")?;
    writeln!(r, "| orders agent | {} |", show(o))?;
    writeln!(r, "| inventory agent | {} |", show(i))?;
    writeln!(
        r,
        "\nResult: order {}, stock {} (of 10). **{}**. 2PC would not guess here: a participant that prepared and lost \
         the coordinator stays prepared (locks held) until it hears the decision, which is the blocking 3PC set out \
         to remove; 3PC's timer trades it for this disagreement. The outbox has no cross-database decision to get \
         wrong: the order commits locally and the stock is reserved (or the order compensated) by the consumer.",
        if order { "committed" } else { "absent" },
        stock,
        if order && stock == 10 { "The participants disagree: an order exists with no stock reserved" } else { "No disagreement this time" }
    )?;
    Ok(())
}
