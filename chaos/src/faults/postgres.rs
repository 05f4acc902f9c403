//! The database fault: `pg_ctl restart -m fast`, one at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::{error, note, FaultCtx};

pub(super) fn pg_restart(ctx: &FaultCtx, busy: &Arc<AtomicBool>, tasks: &mut JoinSet<()>) -> bool {
    if busy.swap(true, Ordering::SeqCst) {
        return false;
    }
    let (pg, log, started, downtime, busy) = (
        ctx.targets.pg.clone(),
        ctx.log.clone(),
        ctx.started,
        ctx.targets.downtime.clone(),
        busy.clone(),
    );
    note(&log, started, "pg_restart: pg_ctl restart -m fast".into());
    downtime.begin();
    tasks.spawn(async move {
        let t = Instant::now();
        match pg.restart().await {
            Ok(()) => note(
                &log,
                started,
                format!("pg_restart: back after {:.1}s", t.elapsed().as_secs_f64()),
            ),
            Err(e) => error(&log, started, format!("pg_restart: {e:#}")),
        }
        downtime.end();
        busy.store(false, Ordering::SeqCst);
    });
    true
}
