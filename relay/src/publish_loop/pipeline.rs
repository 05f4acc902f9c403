//! The batches in flight: sent and awaiting the broker's answer, then
//! being marked. Settling a batch takes its answer in and starts marking
//! it; draining settles everything and waits for the marks.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

use crate::lease::ShardLeases;
use crate::publish::{KeyTopics, Outcome, Publisher};
use crate::shutdown::Shutdown;
use crate::store::{PendingMessage, RelayStore};

use super::report::{mark, Exclusions, Report};
use super::LoopSettings;

/// Batches being marked at once. Each mark is a statement and a commit of
/// its own, which other connections overlap; and a commit that waits on a
/// slow WAL flush should hold up the publishing as little as possible.
const MARKING: usize = 4;

/// How long a stopping relay still waits for the broker's answer about a
/// batch in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A batch handed to the producer whose delivery reports are not all in.
pub(super) struct Flight {
    pub batch: Vec<PendingMessage>,
    /// Indexes of the messages that reached the producer.
    pub sent: Vec<usize>,
    /// Keys of messages held or refused at send time: nothing of theirs
    /// may be fetched until this batch is settled.
    pub unsent_keys: Vec<Vec<u8>>,
    /// The lowest message held or refused at send time, which the fetch
    /// cursor must not pass.
    pub lowest_unsent: Option<i64>,
    pub started: Instant,
    pub reports: JoinHandle<Vec<Outcome>>,
    /// The reports, once awaited elsewhere (a JoinHandle yields only once).
    pub answer: Option<Result<Vec<Outcome>, JoinError>>,
}

/// What settling a batch asks of the loop.
pub(super) struct Settled {
    /// At least one message of the batch was acknowledged.
    pub acknowledged: bool,
    pub broker_unavailable: bool,
    /// The producer itself cannot go on (fenced, sequence or epoch lost).
    pub producer_broken: bool,
    pub first_error: Option<String>,
}

/// The batches in flight (oldest first) and those being marked.
#[derive(Default)]
pub(super) struct Pipeline {
    pub flights: VecDeque<Flight>,
    /// Batches whose results are being written, oldest first (at most
    /// [`MARKING`]).
    pub marking: VecDeque<(JoinHandle<()>, Exclusions)>,
    key_topics: KeyTopics,
    /// Bumped whenever what a fetch must leave out may have grown beyond
    /// what [`exclusions`](Self::exclusions) says (a batch settled with a
    /// message not published, the pipeline drained, new shards): a batch
    /// fetched ahead before that may hold keys that must now wait.
    epoch: u64,
    /// The lowest message of a settled batch that was not published
    /// (failed, held, or its reports lost): the fetch cursor must go back
    /// below it, or later messages of its key would be fetched and
    /// published before it.
    rewind: Option<i64>,
    /// Keys with a message that failed on the broker while later batches
    /// were in flight, and the lowest such message: a later message of
    /// the key acknowledged after that has overtaken it (see
    /// [`Pipeline::watch_gaps`]).
    failed_keys: HashMap<Vec<u8>, i64>,
}

impl Pipeline {
    /// See [`Pipeline::epoch`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A batch fetched ahead until now may no longer be sent.
    pub fn invalidate_fetched_ahead(&mut self) {
        self.epoch += 1;
    }

    /// Where the fetch cursor must go back to, once.
    pub fn take_rewind(&mut self) -> Option<i64> {
        self.rewind.take()
    }

    /// Whether the oldest batch's answer is in, or the pipeline is full:
    /// either way the loop settles before it sends more.
    pub fn must_settle(&self, in_flight: usize) -> bool {
        self.flights
            .front()
            .is_some_and(|f| f.answer.is_some() || f.reports.is_finished())
            || self.flights.len() >= in_flight
    }

    /// Seqs and keys the next fetch must leave out: every batch in flight
    /// or being marked, the keys held or refused in them, and the keys that
    /// failed in the batches being marked (until their backoff is recorded).
    pub fn exclusions(&self) -> Exclusions {
        let mut e = Exclusions::default();
        for (_, m) in &self.marking {
            e.seqs.extend_from_slice(&m.seqs);
            e.keys.extend(m.keys.iter().cloned());
        }
        for f in &self.flights {
            e.seqs.extend(f.batch.iter().map(|m| m.seq));
            e.keys.extend(f.unsent_keys.iter().cloned());
        }
        e.keys.sort_unstable();
        e.keys.dedup();
        e
    }

    /// The highest seq the fetch cursor may stand at: just below the
    /// lowest message not sent or not published of any batch not yet
    /// marked.
    pub fn cursor_limit(&self) -> Option<i64> {
        let marking = self
            .marking
            .iter()
            .filter_map(|(_, e)| e.lowest_unpublished);
        self.flights
            .iter()
            .filter_map(|f| f.lowest_unsent)
            .chain(marking)
            .min()
            .map(|lowest| lowest - 1)
    }

    /// Hands `batch` to the producer and adds it to the flights. Returns
    /// its lowest message held or refused at send time, which the fetch
    /// cursor must not pass.
    ///
    /// librdkafka's idempotent producer keeps each partition's records in
    /// the order they were handed to it, so a key (one topic, one
    /// partition) reaches the broker in order across batches; a key is
    /// not sent to a second topic while its messages to the first are in
    /// flight (`KeyTopics`).
    pub async fn send(
        &mut self,
        publisher: &Publisher,
        batch: Vec<PendingMessage>,
        started: Instant,
    ) -> Option<i64> {
        let sending = publisher.send_batch(&batch, &mut self.key_topics).await;
        let unsent: Vec<usize> = sending.unsent().collect();
        let lowest_unsent = unsent.first().map(|&i| batch[i].seq);
        let mut unsent_keys: Vec<Vec<u8>> = unsent
            .iter()
            .filter_map(|&i| batch[i].key.clone())
            .collect();
        unsent_keys.sort_unstable();
        unsent_keys.dedup();
        tracing::trace!(
            messages = batch.len(),
            in_flight = self.flights.len() + 1,
            "batch sent"
        );
        self.flights.push_back(Flight {
            sent: sending.sent(),
            batch,
            unsent_keys,
            lowest_unsent,
            started,
            reports: tokio::spawn(sending.outcomes()),
            answer: None,
        });
        lowest_unsent
    }

    /// Waits for the oldest batch's answer, then hands its results to a
    /// marking task (once one of the [`MARKING`] slots is free). `None`
    /// when nothing is in flight.
    pub async fn settle_oldest(
        &mut self,
        store: &RelayStore,
        settings: &LoopSettings,
        shutdown: &Shutdown,
    ) -> Option<Settled> {
        let mut flight = self.flights.pop_front()?;
        let answer = match flight.answer.take() {
            Some(answer) => Ok(answer),
            None => wait_for_answer(&mut flight.reports, shutdown.clone()).await,
        };
        let outcomes = match answer {
            Ok(Ok(outcomes)) => outcomes,
            Err(gave_up) => {
                // Stopping, and the broker does not answer: leave the
                // batch unmarked (it is published again, by whoever holds
                // its keys next) rather than wait for ever.
                tracing::warn!(
                    messages = flight.batch.len(),
                    waited = %humantime::format_duration(gave_up),
                    "stopping without the broker's answer for a batch; it will be published again"
                );
                flight.reports.abort();
                return Some(self.forget(&flight));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "delivery task failed; its messages will be published again");
                return Some(self.forget(&flight));
            }
        };
        self.key_topics.release(&flight.batch, &flight.sent);
        let report = Report::new(&flight.batch, &outcomes, &settings.retry);
        if !report.unpublished_keys.is_empty() || report.broker_unavailable {
            self.epoch += 1;
        }
        self.watch_gaps(&flight.batch, &outcomes);
        self.rewind_to(report.lowest_unpublished);
        report.record_metrics(flight.started.elapsed());
        let settled = Settled {
            acknowledged: !report.published.is_empty(),
            broker_unavailable: report.broker_unavailable,
            producer_broken: report.producer_broken,
            first_error: report.first_error.clone(),
        };
        let exclusions = report.exclusions(&flight.batch);
        while self.marking.front().is_some_and(|(t, _)| t.is_finished())
            || self.marking.len() >= MARKING
        {
            self.wait_oldest_mark().await;
        }
        let task = tokio::spawn(mark(
            store.clone(),
            report,
            settings.keep_published,
            shutdown.clone(),
        ));
        self.marking.push_back((task, exclusions));
        Some(settled)
    }

    /// Settles every batch in flight and waits for the marking, extending
    /// the leases meanwhile (the broker may take long to answer: messages
    /// never time out by default).
    pub async fn drain(
        &mut self,
        leases: &mut ShardLeases,
        store: &RelayStore,
        settings: &LoopSettings,
        shutdown: &Shutdown,
    ) {
        self.epoch += 1;
        let settle_all = async {
            while self
                .settle_oldest(store, settings, shutdown)
                .await
                .is_some()
            {}
            while !self.marking.is_empty() {
                self.wait_oldest_mark().await;
            }
        };
        leases.keep_while(settle_all).await;
    }

    /// Waits for the oldest batch's answer without settling it, or for
    /// `shutdown`. `false` when nothing is in flight.
    pub async fn wait_for_oldest_answer(&mut self, shutdown: &mut Shutdown) -> bool {
        let Some(oldest) = self.flights.front_mut() else {
            return false;
        };
        tokio::select! {
            answer = &mut oldest.reports => oldest.answer = Some(answer),
            _ = shutdown.wait() => {}
        }
        true
    }

    /// Waits for the oldest mark, or for `other`, whichever comes first.
    /// `false` when nothing is being marked.
    pub async fn wait_oldest_mark_or(&mut self, other: impl Future<Output = ()>) -> bool {
        let Some((task, _)) = self.marking.front_mut() else {
            return false;
        };
        tokio::select! {
            done = task => {
                self.marking.pop_front();
                log_marking_failure(done);
            }
            _ = other => {}
        }
        true
    }

    async fn wait_oldest_mark(&mut self) {
        if let Some((task, _)) = self.marking.pop_front() {
            log_marking_failure(task.await);
        }
    }

    /// Counts the messages that overtook an earlier message of their key.
    ///
    /// librdkafka can fail a message on the broker's side (its delivery
    /// timed out while the broker was away) and still deliver later
    /// messages of the same partition that were queued behind it: its
    /// idempotent producer then skips the failed ones ("gaps", in its
    /// documentation). The relay sends the failed message again, after
    /// them. Nothing can take such a message back, so this is reported, as
    /// an error and in `outbox_relay_order_gaps_total`, never hidden.
    pub(super) fn watch_gaps(&mut self, batch: &[PendingMessage], outcomes: &[Outcome]) {
        let failed = |o: &Outcome| matches!(o, Outcome::Failed { .. });
        if self.failed_keys.is_empty() && !outcomes.iter().any(failed) {
            // The usual case: nothing to look up per message.
            return;
        }
        let mut gaps = 0_u64;
        for (m, outcome) in batch.iter().zip(outcomes) {
            let Some(key) = &m.key else { continue };
            match outcome {
                Outcome::Published => {
                    if self.failed_keys.get(key).is_some_and(|&f| f < m.seq) {
                        gaps += 1;
                    }
                }
                Outcome::Failed { .. } => {
                    let low = self.failed_keys.entry(key.clone()).or_insert(m.seq);
                    *low = (*low).min(m.seq);
                }
                Outcome::Held | Outcome::ProducerBroken { .. } => {}
            }
        }
        if gaps > 0 {
            metrics::counter!(crate::metrics::ORDER_GAPS).increment(gaps);
            tracing::error!(
                messages = gaps,
                "messages were acknowledged after an earlier message of their key failed on the broker; that one is published again after them (see Known limits)"
            );
        }
        // Once nothing is in flight, nothing sent before a failure can be
        // acknowledged any more.
        if self.flights.is_empty() {
            self.failed_keys.clear();
        }
    }

    /// Forgets a batch whose outcome is unknown: nothing of it is marked,
    /// so all of it is published again, and nothing may overtake it.
    fn forget(&mut self, flight: &Flight) -> Settled {
        self.key_topics.release(&flight.batch, &flight.sent);
        self.rewind_to(flight.batch.first().map(|m| m.seq));
        self.epoch += 1;
        Settled {
            acknowledged: false,
            broker_unavailable: false,
            producer_broken: false,
            first_error: None,
        }
    }

    /// Remembers that the fetch cursor must go back below `seq`.
    fn rewind_to(&mut self, seq: Option<i64>) {
        if let Some(seq) = seq {
            self.rewind = Some(self.rewind.map_or(seq, |r| r.min(seq)));
        }
    }
}

fn log_marking_failure(done: Result<(), JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "marking task failed; its messages will be published again");
    }
}

/// The delivery reports of a batch. Messages never time out by default,
/// so with the broker away this can wait for ever; once `shutdown` fires
/// it waits [`STOP_GRACE`] more at most and then returns how long it
/// waited in all.
async fn wait_for_answer(
    reports: &mut JoinHandle<Vec<Outcome>>,
    mut shutdown: Shutdown,
) -> Result<Result<Vec<Outcome>, JoinError>, Duration> {
    let started = Instant::now();
    tokio::select! {
        done = &mut *reports => return Ok(done),
        _ = shutdown.wait() => {}
    }
    tokio::time::timeout(STOP_GRACE, reports)
        .await
        .map_err(|_| started.elapsed())
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
