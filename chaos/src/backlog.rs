//! The backlog of pending messages, watched from the database: a progress
//! line while the faults run, and the wait for the relays to drain it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sqlx::PgPool;

use crate::relays;
use crate::watchdog;
use crate::writer::WriterStats;

/// One progress line on stderr.
pub async fn progress(
    pool: &PgPool,
    started: Instant,
    stats: &Arc<Mutex<WriterStats>>,
    relays: &relays::SharedRelays,
    stalls: &Arc<Mutex<watchdog::StallReport>>,
) {
    let pending: Option<i64> = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE status = 'pending'")
            .fetch_one(pool),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let s = stats.lock().expect("stats lock").clone();
    let exits: u32 = relays::lock(relays).self_exits().values().sum();
    let st = stalls.lock().expect("progress lock").clone();
    eprintln!(
        "chaos: {:5.1}s committed={} pending={} relay_self_exits={exits} stalls={} (longest stuck {:.1}s)",
        started.elapsed().as_secs_f64(),
        s.committed,
        pending.map_or("?".to_owned(), |p| p.to_string()),
        st.stalls,
        st.longest.as_secs_f64(),
    );
}

/// Waits until no message is pending.
pub async fn drain(pool: &PgPool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    loop {
        let pending: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM outbox.message WHERE status = 'pending'")
                .fetch_one(pool)
                .await;
        match pending {
            Ok(0) => return Ok(()),
            Ok(n) if Instant::now() > deadline => {
                bail!("{n} messages still pending after {timeout:?}")
            }
            Err(e) if Instant::now() > deadline => bail!("cannot count pending messages: {e}"),
            Ok(n) => {
                if last_print.elapsed() > Duration::from_secs(5) {
                    eprintln!("chaos: draining: {n} pending");
                    last_print = Instant::now();
                }
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
