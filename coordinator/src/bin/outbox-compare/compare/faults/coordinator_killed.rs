//! Fault (a): a coordinator child process places one order and is
//! SIGKILLed at a stop point; a probe then times how long the stock row
//! stays locked, and what resolves the transaction (2PC: recovery by a
//! restarted coordinator; 3PC: the agents' own timers).

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use outbox_coordinator::{Agent, Gid, Participant, ScratchDatabases, TwoPhase};
use outbox_testkit::ChildGuard;

use super::{order_exists, show};
use crate::compare::{ms, Args};

/// How long a fault scenario watches a blocked row before giving up.
const OBSERVE: Duration = Duration::from_secs(4);

/// The section's header and its 2PC rows: killed after prepare, and after
/// the commit decision was logged.
pub(super) async fn two_phase(
    r: &mut String,
    db: &ScratchDatabases,
    tpc: &TwoPhase,
    participants: &[Participant],
) -> anyhow::Result<()> {
    writeln!(
        r,
        "## Fault (a): coordinator SIGKILLed after the participants prepared\n"
    )?;
    writeln!(
        r,
        "A coordinator child process places one order and is SIGKILLed at the point given. A probe transaction then \
         tries to `UPDATE` the same stock row with a 1 s lock wait, repeatedly, for up to {} s.\n",
        OBSERVE.as_secs()
    )?;
    writeln!(r, "| protocol | killed after | stock row blocked | decision | resolved by | order / stock after |\n| --- | --- | --- | --- | --- | --- |")?;
    for (stop, marker) in [("prepare", "PREPARED"), ("decision", "DECIDED")] {
        let s = format!("A{stop}");
        db.seed_stock(&s, 10).await?;
        let child_args: Vec<String> = [
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
            &s,
            "--stop-after",
            stop,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        let (mut child, _) = spawn_child(&child_args, marker).await?;
        child.kill();
        let killed = Instant::now();
        let blocked = blocked_for(db, &s, killed, OBSERVE).await?;
        let t = Instant::now();
        let rec = loop {
            let rec = tpc.recover(participants).await?;
            if rec.is_complete() || t.elapsed() > Duration::from_secs(20) {
                break rec;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let after = blocked_for(db, &s, Instant::now(), Duration::from_secs(3)).await?;
        writeln!(
            r,
            "| 2PC | {} | {} | {} | recovery (restarted coordinator), {} after it started; row free afterwards: {} | order {}, stock {} |",
            if stop == "prepare" { "prepare (no decision logged)" } else { "commit decision logged" },
            match blocked {
                Some(d) => format!("{:.1} s", d.as_secs_f64()),
                None => format!("still blocked after {} s (until recovery)", OBSERVE.as_secs()),
            },
            if !rec.committed.is_empty() { "commit (logged)" } else { "abort (presumed: not logged)" },
            ms(t.elapsed()),
            if after.is_some() { "yes" } else { "NO" },
            if order_exists(db, &s).await? { "committed" } else { "absent" },
            db.stock(&s).await?,
        )?;
    }
    Ok(())
}

/// The section's 3PC rows (killed after CanCommit, and after PreCommit)
/// and the outbox's row.
pub(super) async fn three_phase(
    r: &mut String,
    db: &ScratchDatabases,
    args: &Args,
    orders_agent: &Agent,
    inventory_agent: &Agent,
) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.agent_timeout_ms);
    for (stop, marker) in [
        ("can-commit", "CANCOMMITTED"),
        ("pre-commit", "PRECOMMITTED"),
    ] {
        let s = format!("B{stop}");
        db.seed_stock(&s, 10).await?;
        let child_args: Vec<String> = [
            "child3pc",
            "--orders-agent",
            orders_agent.url(),
            "--inventory-agent",
            inventory_agent.url(),
            "--prefix",
            db.name(),
            "--sku",
            &s,
            "--stop-after",
            stop,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        let (mut child, line) = spawn_child(&child_args, marker).await?;
        let gid = Gid::parse(line.split_whitespace().nth(1).context("gid")?)?;
        child.kill();
        let killed = Instant::now();
        let blocked = blocked_for(db, &s, killed, OBSERVE + timeout).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while (orders_agent.resolution(&gid).is_none()
            || inventory_agent.resolution(&gid).is_none())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writeln!(
            r,
            "| 3PC | {} | {} | orders: {}, inventory: {} | agents' timers ({} ms), no coordinator needed | order {}, stock {} |",
            if stop == "can-commit" { "CanCommit (both voted yes, prepared)" } else { "PreCommit (both acknowledged)" },
            match blocked {
                Some(d) => format!("{:.1} s", d.as_secs_f64()),
                None => "still blocked".into(),
            },
            show(orders_agent.resolution(&gid)),
            show(inventory_agent.resolution(&gid)),
            args.agent_timeout_ms,
            if order_exists(db, &s).await? { "committed" } else { "absent" },
            db.stock(&s).await?,
        )?;
    }
    writeln!(
        r,
        "| outbox | after the local commit | never blocked by the order service: the only stock lock is the applier's own local transaction | the order committed alone; stock follows | the applier, whenever it runs | – |"
    )?;
    Ok(())
}

/// Tries to update the stock row with a 1 s lock wait; true if it got the lock.
async fn probe(db: &ScratchDatabases, sku: &str) -> anyhow::Result<bool> {
    let mut conn = db.inventory.acquire().await?;
    sqlx::Executor::execute(&mut *conn, "SET SESSION innodb_lock_wait_timeout = 1").await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let r = sqlx::query("UPDATE stock SET available = available WHERE sku = ?")
        .bind(sku)
        .execute(&mut *tx)
        .await;
    tx.rollback().await?;
    match r {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.message().contains("Lock wait timeout") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Probes until the row is free or `limit` passes; returns how long it
/// stayed blocked (None: still blocked at `limit`).
async fn blocked_for(
    db: &ScratchDatabases,
    sku: &str,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    while since.elapsed() < limit {
        if probe(db, sku).await? {
            return Ok(Some(since.elapsed()));
        }
    }
    Ok(None)
}

/// Starts this binary with `args` and waits (30 s at most) for a stdout
/// line starting with `marker`; returns the child, still running and
/// killed when dropped, and the line.
async fn spawn_child(args: &[String], marker: &str) -> anyhow::Result<(ChildGuard, String)> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args).stdout(Stdio::piped());
    let mut child = ChildGuard::spawn("coordinator child", &mut cmd)?;
    let line = child
        .wait_for_line(marker, Duration::from_secs(30))
        .await
        .context("child did not reach its stop point")?;
    Ok((child, line))
}
