//! `outbox-compare`: runs the same order workload with the outbox, 2PC and
//! 3PC and writes a markdown report; also the coordinator child processes
//! that the fault scenarios (and the tests) SIGKILL.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use outbox_coordinator::{AgentClient, DecisionLog, Participant, ThreePhase, TwoPhase, Work};
use sqlx::{MySqlPool, PgPool};

mod compare;

#[derive(Parser)]
#[command(about = "Outbox vs 2PC vs 3PC on the order/inventory operation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the comparison and writes the report.
    Run(compare::Args),
    /// A 2PC coordinator that places one order, stops at a point and waits
    /// to be killed.
    Child2pc {
        #[arg(long)]
        orders_url: String,
        #[arg(long)]
        inventory_url: String,
        #[arg(long)]
        coordinator_url: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        sku: String,
        #[arg(long, default_value_t = 1)]
        qty: i32,
        #[arg(long, value_enum)]
        stop_after: Stop2,
    },
    /// A 3PC coordinator that places one order through two agents, stops at
    /// a point and waits to be killed.
    Child3pc {
        #[arg(long)]
        orders_agent: String,
        #[arg(long)]
        inventory_agent: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        sku: String,
        #[arg(long, default_value_t = 1)]
        qty: i32,
        #[arg(long, value_enum)]
        stop_after: Stop3,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Stop2 {
    /// Both participants prepared; no decision logged.
    Prepare,
    /// Both prepared and the commit decision logged; nobody told.
    Decision,
}

#[derive(Clone, Copy, ValueEnum)]
enum Stop3 {
    /// Both agents voted yes (prepared); no PreCommit sent.
    CanCommit,
    /// Both agents acknowledged PreCommit; no DoCommit sent.
    PreCommit,
}

/// Prints a line on stdout and flushes it: the parent waits for it.
async fn announce(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => compare::run(args).await,
        Command::Child2pc {
            orders_url,
            inventory_url,
            coordinator_url,
            prefix,
            sku,
            qty,
            stop_after,
        } => {
            let orders = Participant::postgres("orders", PgPool::connect(&orders_url).await?);
            let inventory =
                Participant::mariadb("inventory", MySqlPool::connect(&inventory_url).await?);
            let log = DecisionLog::new(PgPool::connect(&coordinator_url).await?);
            log.migrate().await?;
            let coordinator = TwoPhase::new(prefix, log)?;
            let order_id = uuid::Uuid::now_v7();
            let shares = [
                (
                    orders,
                    Work::InsertOrder {
                        order_id,
                        sku: sku.clone(),
                        qty,
                    },
                ),
                (inventory, Work::ReserveStock { order_id, sku, qty }),
            ];
            let prepared = coordinator.prepare(&shares).await.context("prepare")?;
            announce(&format!("PREPARED {}", prepared.gid())).await?;
            if let Stop2::Decision = stop_after {
                prepared.log_commit().await?;
                announce(&format!("DECIDED {}", prepared.gid())).await?;
            }
            // Hold the prepared branches (and their connections) until killed.
            std::future::pending::<()>().await;
            unreachable!()
        }
        Command::Child3pc {
            orders_agent,
            inventory_agent,
            prefix,
            sku,
            qty,
            stop_after,
        } => {
            let timeout = Duration::from_secs(5);
            let agents = [
                AgentClient::new(orders_agent, timeout),
                AgentClient::new(inventory_agent, timeout),
            ];
            let order_id = uuid::Uuid::now_v7();
            let shares = [
                (
                    agents[0].clone(),
                    Work::InsertOrder {
                        order_id,
                        sku: sku.clone(),
                        qty,
                    },
                ),
                (agents[1].clone(), Work::ReserveStock { order_id, sku, qty }),
            ];
            let coordinator = ThreePhase::new(prefix)?;
            let gid = coordinator
                .can_commit(&shares)
                .await
                .context("can-commit")?;
            announce(&format!("CANCOMMITTED {gid}")).await?;
            if let Stop3::PreCommit = stop_after {
                coordinator
                    .pre_commit(&gid, &agents)
                    .await
                    .context("pre-commit")?;
                announce(&format!("PRECOMMITTED {gid}")).await?;
            }
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}
