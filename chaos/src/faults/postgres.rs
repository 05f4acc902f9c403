//! The database faults: `pg_ctl restart -m fast`, or `-m immediate` (a
//! crash), one at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::{error, note, FaultCtx};

pub(super) fn pg_restart(
    ctx: &FaultCtx,
    busy: &Arc<AtomicBool>,
    tasks: &mut JoinSet<()>,
    crash: bool,
) -> bool {
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
    let name = if crash { "pg_crash" } else { "pg_restart" };
    let mode = if crash { "immediate" } else { "fast" };
    note(&log, started, format!("{name}: pg_ctl restart -m {mode}"));
    downtime.begin();
    tasks.spawn(async move {
        let t = Instant::now();
        match pg.restart(crash).await {
            Ok(()) => note(
                &log,
                started,
                format!("{name}: back after {:.1}s", t.elapsed().as_secs_f64()),
            ),
            Err(e) => error(&log, started, format!("{name}: {e:#}")),
        }
        downtime.end();
        busy.store(false, Ordering::SeqCst);
    });
    true
}
