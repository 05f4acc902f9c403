//! Faults on the relays: SIGKILL and restart, SIGSTOP and SIGCONT. Both
//! leave at least one relay untouched (`FaultCtx::relay`).

use tokio::task::JoinSet;

use super::{error, note, FaultCtx};
use crate::relays;
use crate::util::sleep_or_stop;

pub(super) fn relay_kill(ctx: &FaultCtx) -> bool {
    let Some(i) = ctx.relay() else {
        return false;
    };
    let down = ctx.duration(1.0, 4.0);
    relays::lock(&ctx.targets.relays).kill(i, down);
    note(
        &ctx.log,
        ctx.started,
        format!(
            "relay_kill: relay {i} SIGKILLed, back in {:.1}s",
            down.as_secs_f64()
        ),
    );
    true
}

pub(super) fn relay_pause(ctx: &FaultCtx, tasks: &mut JoinSet<()>) -> bool {
    let Some(i) = ctx.relay() else {
        return false;
    };
    let d = ctx.duration(2.0, 14.0);
    let pid = match relays::lock(&ctx.targets.relays).pause(i) {
        Ok(Some(pid)) => pid,
        Ok(None) => return false,
        Err(e) => {
            error(&ctx.log, ctx.started, format!("relay_pause: {e:#}"));
            return false;
        }
    };
    note(
        &ctx.log,
        ctx.started,
        format!(
            "relay_pause: relay {i} SIGSTOPped for {:.1}s",
            d.as_secs_f64()
        ),
    );
    let (relays, log, started, mut heal) = (
        ctx.targets.relays.clone(),
        ctx.log.clone(),
        ctx.started,
        ctx.heal.clone(),
    );
    tasks.spawn(async move {
        sleep_or_stop(d, &mut heal).await;
        if let Err(e) = relays::lock(&relays).resume(i, pid) {
            error(
                &log,
                started,
                format!("relay_pause: resuming relay {i}: {e:#}"),
            );
        }
        note(&log, started, format!("relay_pause: relay {i} SIGCONTed"));
    });
    true
}
