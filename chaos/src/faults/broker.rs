//! Faults on the broker, one outage at a time: tansu paused (memory
//! storage) or killed and restarted (SQLite storage); on the mock cluster,
//! RTT spikes, leader changes and failing Produce requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rdkafka::types::RDKafkaRespErr;
use tokio::task::JoinSet;

use super::{error, note, BrokerTarget, FaultCtx, Kind};
use crate::util::{signal, sleep_or_stop};
use outbox_testkit::MockOp;

pub(super) fn broker_outage(
    ctx: &FaultCtx,
    kind: Kind,
    busy: &Arc<AtomicBool>,
    tasks: &mut JoinSet<()>,
) -> bool {
    let (log, started, downtime, mut heal) = (
        ctx.log.clone(),
        ctx.started,
        ctx.targets.downtime.clone(),
        ctx.heal.clone(),
    );
    match (&ctx.targets.broker, kind) {
        (BrokerTarget::TansuPause(tansu), Kind::BrokerPause) => {
            let Some(pid) = tansu.lock().expect("tansu lock").pid() else {
                return false;
            };
            if busy.swap(true, Ordering::SeqCst) {
                return false;
            }
            let d = ctx.duration(2.0, 6.0);
            if let Err(e) = signal(pid, Signal::SIGSTOP) {
                error(&log, started, format!("broker_pause: {e:#}"));
                busy.store(false, Ordering::SeqCst);
                return false;
            }
            downtime.begin();
            note(
                &log,
                started,
                format!("broker_pause: tansu SIGSTOPped for {:.1}s", d.as_secs_f64()),
            );
            let busy = busy.clone();
            tasks.spawn(async move {
                sleep_or_stop(d, &mut heal).await;
                if let Err(e) = signal(pid, Signal::SIGCONT) {
                    error(&log, started, format!("broker_pause: SIGCONT: {e:#}"));
                }
                note(&log, started, "broker_pause: tansu SIGCONTed".into());
                downtime.end();
                busy.store(false, Ordering::SeqCst);
            });
            true
        }
        (BrokerTarget::TansuRestart(tansu, addr), Kind::BrokerRestart) => {
            if busy.swap(true, Ordering::SeqCst) {
                return false;
            }
            let d = ctx.duration(1.0, 4.0);
            downtime.begin();
            tansu.lock().expect("tansu lock").stop();
            note(
                &log,
                started,
                format!(
                    "broker_restart: tansu SIGKILLed, back in {:.1}s",
                    d.as_secs_f64()
                ),
            );
            let (tansu, addr, busy) = (tansu.clone(), addr.clone(), busy.clone());
            tasks.spawn(async move {
                sleep_or_stop(d, &mut heal).await;
                let spawned = tansu
                    .lock()
                    .expect("tansu lock")
                    .spawn()
                    .map_err(Into::into);
                let ready = match spawned {
                    Ok(()) => {
                        crate::broker::wait_ready(&addr, Duration::from_secs(30), || {
                            Ok(tansu.lock().expect("tansu lock").check_alive()?)
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                match ready {
                    Ok(()) => note(&log, started, "broker_restart: tansu is back".into()),
                    Err(e) => error(&log, started, format!("broker_restart: {e:#}")),
                }
                downtime.end();
                busy.store(false, Ordering::SeqCst);
            });
            true
        }
        (BrokerTarget::Mock(mock, ..), Kind::RttSpike) => {
            if busy.swap(true, Ordering::SeqCst) {
                return false;
            }
            let broker = 1 + (ctx.pick % mock.broker_count() as u64) as i32;
            let rtt = Duration::from_millis(500 + (ctx.pick >> 8) % 2500);
            let d = ctx.duration(2.0, 6.0);
            if let Err(e) = mock.apply(MockOp::Rtt { broker, rtt }) {
                error(&log, started, format!("rtt_spike: {e:#}"));
                busy.store(false, Ordering::SeqCst);
                return false;
            }
            downtime.begin();
            note(
                &log,
                started,
                format!(
                    "rtt_spike: broker {broker} RTT {}ms for {:.1}s",
                    rtt.as_millis(),
                    d.as_secs_f64()
                ),
            );
            let (mock, busy) = (mock.clone(), busy.clone());
            tasks.spawn(async move {
                sleep_or_stop(d, &mut heal).await;
                if let Err(e) = mock.apply(MockOp::Rtt {
                    broker,
                    rtt: Duration::ZERO,
                }) {
                    error(&log, started, format!("rtt_spike: clearing: {e:#}"));
                }
                note(
                    &log,
                    started,
                    format!("rtt_spike: broker {broker} RTT back to 0"),
                );
                downtime.end();
                busy.store(false, Ordering::SeqCst);
            });
            true
        }
        _ => false,
    }
}

pub(super) fn mock_op(ctx: &FaultCtx, kind: Kind) -> bool {
    let BrokerTarget::Mock(mock, topic, partitions) = &ctx.targets.broker else {
        return false;
    };
    let (op, what) = match kind {
        Kind::LeaderChange => {
            let partition = (ctx.pick % *partitions as u64) as i32;
            let broker = 1 + ((ctx.pick >> 16) % mock.broker_count() as u64) as i32;
            (
                MockOp::SetLeader {
                    topic: topic.clone(),
                    partition,
                    broker,
                },
                format!("leader_change: partition {partition} now led by broker {broker}"),
            )
        }
        Kind::ProduceErrors => {
            let menu = [
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            ];
            let count = 1 + (ctx.pick % 6) as usize;
            let errors: Vec<RDKafkaRespErr> = (0..count)
                .map(|i| menu[((ctx.pick >> (8 + 2 * i)) % menu.len() as u64) as usize])
                .collect();
            (
                MockOp::ProduceErrors(errors.clone()),
                format!("produce_errors: next {count} Produce requests fail: {errors:?}"),
            )
        }
        _ => return false,
    };
    match mock.apply(op) {
        Ok(()) => {
            note(&ctx.log, ctx.started, what);
            true
        }
        Err(e) => {
            error(&ctx.log, ctx.started, format!("{}: {e:#}", kind.name()));
            false
        }
    }
}
