//! The publish loop: fetch a batch of the shards this relay holds, publish
//! it, mark it, repeat; wait for a notification when there is nothing to do.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use outbox::{Failure, PendingMessage, RelayStore, RetryPolicy};

use crate::health::Health;
use crate::lease::ShardLeases;
use crate::publish::{KeyTopics, Outcome, Publisher};
use crate::shutdown::Shutdown;
use crate::wake::Waker;
use tokio::task::JoinHandle;

/// Longest pause after a batch failed entirely because the broker was
/// unavailable; pauses double from one second up to this.
const MAX_BROKER_PAUSE: Duration = Duration::from_secs(30);

/// Batches whose results are written at once. Each mark is a statement and
/// a commit of its own, which other connections overlap; and a commit that
/// waits on a slow WAL flush should hold up the publishing as little as
/// possible.
const MARKING: usize = 4;

/// Longest a relay draining a backlog goes without looking below its
/// cursor (see `run`).
const CURSOR_RESET: Duration = Duration::from_secs(10);

/// How long a stopping relay still waits for the broker's answer about a
/// batch in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A fetch slower than this is logged as a warning and counted in
/// `outbox_relay_slow_fetches_total`: the relay's statements take
/// milliseconds on a healthy table, whatever the backlog.
const SLOW_FETCH: Duration = Duration::from_secs(2);

/// The loop's settings.
pub struct LoopSettings {
    /// Messages per batch.
    pub batch_size: usize,
    /// Batches sent and not yet acknowledged at once.
    pub in_flight: usize,
    /// Longest idle wait.
    pub poll_interval: Duration,
    /// A batch is started only while the shard lease has more than this
    /// left (see `RelayConfig::lease_margin`).
    pub lease_margin: Duration,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Keep published messages (until retention) instead of deleting them.
    pub keep_published: bool,
    /// Longest pause when the broker is unavailable: at most the lease
    /// renewal interval, so a pausing relay keeps its shards.
    pub max_broker_pause: Duration,
}

/// A batch handed to the producer whose delivery reports are not all in.
struct Flight {
    batch: Vec<PendingMessage>,
    /// Indexes of the messages that reached the producer.
    sent: Vec<usize>,
    /// Keys held or refused at send time: nothing of theirs may be fetched
    /// until this batch is settled.
    blocked_keys: Vec<Vec<u8>>,
    /// The lowest held message, which the fetch cursor must not pass.
    lowest_held: Option<i64>,
    started: Instant,
    reports: JoinHandle<Vec<Outcome>>,
    /// The reports, once awaited elsewhere (a JoinHandle yields only once).
    done: Option<Result<Vec<Outcome>, tokio::task::JoinError>>,
}

/// The batches in flight (oldest first) and the one being marked.
struct Pipeline {
    flights: VecDeque<Flight>,
    /// Batches whose results are being written, oldest first (at most
    /// [`MARKING`]).
    marking: VecDeque<(JoinHandle<()>, Exclusions)>,
    key_topics: KeyTopics,
    /// Bumped whenever a batch settles with a failed or held message, or
    /// the pipeline drains: a batch fetched ahead before that may include
    /// keys that must now wait.
    generation: u64,
    /// The lowest message of a settled batch that was not published
    /// (failed, held, or its reports lost): the fetch cursor must go back
    /// below it, or later messages of its key would be fetched and
    /// published before it (see `run`).
    rewind: Option<i64>,
    /// Keys with a message that failed on the broker while later batches
    /// were in flight, and the lowest such message: a later message of
    /// the key acknowledged after that has overtaken it (see
    /// [`Pipeline::watch_gaps`]).
    failed_keys: HashMap<Vec<u8>, i64>,
}

/// What a settled batch asks of the caller.
struct Settled {
    /// At least one message of the batch was acknowledged.
    acknowledged: bool,
    broker_unavailable: bool,
    /// The producer itself cannot go on (fenced, sequence or epoch lost).
    producer_broken: bool,
    first_error: Option<String>,
}

impl Pipeline {
    /// Seqs and keys the next fetch must leave out: every batch in flight
    /// or being marked, the keys held or refused in them, and the keys that
    /// failed in the batch being marked (until their backoff is recorded).
    fn exclusions(&self) -> Exclusions {
        let mut e = Exclusions::default();
        for (_, m) in &self.marking {
            e.seqs.extend_from_slice(&m.seqs);
            e.keys.extend(m.keys.iter().cloned());
        }
        for f in &self.flights {
            e.seqs.extend(f.batch.iter().map(|m| m.seq));
            e.keys.extend(f.blocked_keys.iter().cloned());
        }
        e.keys.sort_unstable();
        e.keys.dedup();
        e
    }

    /// The highest seq the fetch cursor may stand at: just below the
    /// lowest held message of any batch not yet settled.
    fn cursor_limit(&self) -> Option<i64> {
        let marking = self
            .marking
            .iter()
            .filter_map(|(_, e)| e.lowest_unpublished);
        self.flights
            .iter()
            .filter_map(|f| f.lowest_held)
            .chain(marking)
            .min()
            .map(|held| held - 1)
    }

    /// Waits for the oldest batch's reports, then hands its results to a
    /// marking task (after the previous one finished). `None` when nothing
    /// is in flight.
    async fn settle_oldest(
        &mut self,
        store: &RelayStore,
        settings: &LoopSettings,
        shutdown: &Shutdown,
    ) -> Option<Settled> {
        let mut flight = self.flights.pop_front()?;
        let reports = match flight.done.take() {
            Some(done) => Ok(done),
            None => wait_for_reports(&mut flight.reports, shutdown.clone()).await,
        };
        let outcomes = match reports {
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
                return Some(self.unsettled(&flight));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "delivery task failed; its messages will be published again");
                return Some(self.unsettled(&flight));
            }
        };
        self.key_topics.release(&flight.batch, &flight.sent);
        let report = Report::new(&flight.batch, &outcomes, &settings.retry);
        if !report.blocked_keys.is_empty() || report.broker_unavailable {
            self.generation += 1;
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
            finish(&mut self.marking).await;
        }
        let task = tokio::spawn(settle(
            store.clone(),
            report,
            settings.keep_published,
            shutdown.clone(),
        ));
        self.marking.push_back((task, exclusions));
        Some(settled)
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
    fn watch_gaps(&mut self, batch: &[PendingMessage], outcomes: &[Outcome]) {
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
    fn unsettled(&mut self, flight: &Flight) -> Settled {
        self.key_topics.release(&flight.batch, &flight.sent);
        self.rewind_to(flight.batch.first().map(|m| m.seq));
        self.generation += 1;
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

    /// Settles every batch in flight and waits for the marking, extending
    /// the leases meanwhile (the broker may take long to answer: messages
    /// never time out by default).
    async fn drain(
        &mut self,
        leases: &mut ShardLeases,
        store: &RelayStore,
        settings: &LoopSettings,
        shutdown: &Shutdown,
    ) {
        self.generation += 1;
        let settle_all = async {
            while self
                .settle_oldest(store, settings, shutdown)
                .await
                .is_some()
            {}
            while !self.marking.is_empty() {
                finish(&mut self.marking).await;
            }
        };
        leases.keep_while(settle_all).await;
    }
}

/// Runs until `shutdown` fires, then finishes the batches in flight and
/// returns `Ok`. Database and broker errors are logged and retried: the
/// loop keeps going until told to stop. The one error returned is a
/// producer that cannot go on (a fatal error of librdkafka's idempotent
/// producer, or a producer fenced or whose epoch or sequence the broker
/// lost): the relay must exit and be restarted (unmarked messages are then
/// published again). `health` hears of every acknowledged batch and of
/// every look that found nothing to do.
///
/// Batches are pipelined: up to `in_flight` batches are on the wire while
/// the next is fetched, and the oldest acknowledged batch is marked while
/// all that goes on. Each fetch leaves out the batches not yet settled and
/// every key held or failed in them. librdkafka's idempotent producer keeps
/// each partition's records in the order they were handed to it, so a key
/// (one topic, one partition) reaches the broker in order across batches;
/// a key is not sent to a second topic while its messages to the first are
/// in flight.
pub async fn run(
    store: RelayStore,
    publisher: &Publisher,
    leases: &mut ShardLeases,
    mut waker: Waker,
    settings: LoopSettings,
    health: Health,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let mut broker_pause = Duration::ZERO;
    let mut pipe = Pipeline {
        flights: VecDeque::new(),
        marking: VecDeque::new(),
        key_topics: KeyTopics::default(),
        generation: 0,
        rewind: None,
        failed_keys: HashMap::new(),
    };
    // Where the next fetch starts (see RelayStore::fetch_pending); back to
    // 0 whenever the relay catches up, and at least every CURSOR_RESET while
    // it drains a backlog, so a late commit with a lower seq waits at most
    // that long. Not more often: right after a large drain, a fetch from 0
    // walks every dead index entry until vacuum removes them.
    //
    // The cursor is an optimisation, never a promise: whatever it skips
    // must be something the relay may skip. So it goes back below every
    // message of a settled batch that was not published (`Pipeline::
    // rewind`), and to 0 whenever the relay gains shards (their messages
    // may lie anywhere below it) or the database failed under it.
    let mut cursor = 0_i64;
    let mut cursor_reset = Instant::now();
    // A batch fetched ahead (the cursor it started from, the shards it
    // looked at, and the result), valid only while no batch settled with a
    // failure since (`generation`) and the shards are still the same.
    let mut next: Option<Prefetch> = None;
    let mut generation = 0_u64;
    // Whether this relay's row says it waits for work, so that inserts
    // notify (see RelayStore::set_waiting). Set when it runs out of work,
    // cleared when it falls a full batch behind: a busy relay needs no
    // wake-up, and writers that notify commit one at a time.
    let mut waiting = false;
    waker.listen().await;
    while !shutdown.is_triggered() {
        // Settle what the broker has answered; wait for the oldest batch
        // when the pipeline is full.
        while pipe
            .flights
            .front()
            .is_some_and(|f| f.done.is_some() || f.reports.is_finished())
            || pipe.flights.len() >= settings.in_flight
        {
            // Waiting for the broker can take long (messages never time
            // out by default): the leases are extended meanwhile.
            let settled = leases
                .keep_while(pipe.settle_oldest(&store, &settings, &shutdown))
                .await;
            if settled.as_ref().is_some_and(|s| s.acknowledged) {
                health.progress();
            }
            if let Some(fatal) = publisher.fatal_error() {
                pipe.drain(leases, &store, &settings, &shutdown).await;
                return Err(fatal);
            }
            if let Some(s) = settled.as_ref().filter(|s| s.producer_broken) {
                // Every later send fails the same way: stop, so that a new
                // producer (a restarted relay) takes over these keys.
                pipe.drain(leases, &store, &settings, &shutdown).await;
                return Err(format!(
                    "the producer can send nothing more: {}",
                    s.first_error.as_deref().unwrap_or("")
                ));
            }
            if let Some(s) = settled.as_ref().filter(|s| s.broker_unavailable) {
                pipe.drain(leases, &store, &settings, &shutdown).await;
                broker_pause = (broker_pause * 2).clamp(
                    Duration::from_secs(1),
                    MAX_BROKER_PAUSE.min(settings.max_broker_pause),
                );
                tracing::warn!(
                    error = s.first_error.as_deref().unwrap_or(""),
                    pause = %humantime::format_duration(broker_pause),
                    "broker unavailable: no message of the batch was delivered; pausing"
                );
                idle(&mut shutdown, broker_pause).await;
            } else if settled.is_some() {
                broker_pause = Duration::ZERO;
            }
        }
        if shutdown.is_triggered() {
            break;
        }
        if leases.renewal_due() {
            // A renewal may give shards back: nothing of theirs may be in
            // flight when another relay takes them.
            pipe.drain(leases, &store, &settings, &shutdown).await;
            if leases.maintain().await {
                // New shards: their messages may lie below the cursor, and
                // a batch fetched ahead did not look at them.
                cursor = 0;
                cursor_reset = Instant::now();
                pipe.generation += 1;
            }
        }
        let shards = leases.usable(settings.lease_margin).to_vec();
        if shards.is_empty() {
            pipe.drain(leases, &store, &settings, &shutdown).await;
            // Holding no keys is not a stall: another relay has them.
            health.progress();
            let until_renewal = leases
                .next_renewal()
                .saturating_duration_since(Instant::now());
            idle(&mut shutdown, until_renewal.max(Duration::from_millis(100))).await;
            continue;
        }

        let started = Instant::now();
        if cursor_reset.elapsed() >= CURSOR_RESET {
            cursor = 0;
            cursor_reset = started;
        }
        if let Some(seq) = pipe.rewind.take() {
            cursor = cursor.min(seq - 1).max(0);
        }
        let prefetched = match next.take() {
            // Fetched while the previous batch was being sent, from where
            // this fetch would start.
            Some(p) if p.from == cursor && p.shards == shards && pipe.generation == generation => {
                p.task.await.ok()
            }
            Some(p) => {
                p.task.abort();
                None
            }
            None => None,
        };
        let fetched = match prefetched {
            Some(fetched) => fetched,
            None => {
                let exclude = pipe.exclusions();
                let fetch = store.fetch_pending(
                    &shards,
                    settings.batch_size as i64,
                    cursor,
                    &exclude.seqs,
                    &exclude.keys,
                );
                leases.keep_while(fetch).await
            }
        };
        generation = pipe.generation;
        let batch = match fetched {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch pending messages; retrying");
                pipe.drain(leases, &store, &settings, &shutdown).await;
                // Whatever happened to the database meanwhile (a restart,
                // a fail-over), look from the start again.
                cursor = 0;
                cursor_reset = Instant::now();
                idle(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let fetch_time = started.elapsed();
        if fetch_time > SLOW_FETCH {
            metrics::counter!(crate::metrics::SLOW_FETCHES).increment(1);
            tracing::warn!(
                seconds = fetch_time.as_secs_f64(),
                messages = batch.len(),
                from_seq = cursor,
                "fetching pending messages was slow (usually milliseconds); is the outbox table bloated or the database overloaded?"
            );
        }
        // The lease may have run out while the fetch ran (a slow
        // statement, a paused process): another relay may own these keys
        // now, so this batch must not be sent. It is fetched again by
        // whoever holds the shards.
        if leases.usable(settings.lease_margin) != shards.as_slice() {
            tracing::debug!("shard leases changed during the fetch; dropping the batch");
            if let Some(p) = next.take() {
                p.task.abort();
            }
            continue;
        }
        let full = batch.len() == settings.batch_size;
        if !full && cursor != 0 {
            // Caught up from the cursor: look once more from the start
            // before waiting.
            cursor = 0;
            cursor_reset = started;
            if batch.is_empty() {
                continue;
            }
        }
        if batch.is_empty() {
            if let Some(oldest) = pipe.flights.front_mut() {
                // Nothing new: look again when the oldest batch is
                // acknowledged (a few milliseconds), not on every commit
                // notification, so that commits arriving meanwhile go out
                // together instead of as a stream of one-message batches,
                // each with its own marking statement.
                let wait = async {
                    tokio::select! {
                        done = &mut oldest.reports => oldest.done = Some(done),
                        _ = shutdown.wait() => {}
                    }
                };
                leases.keep_while(wait).await;
                continue;
            }
            // Nothing to publish and nothing in flight: not a stall.
            health.progress();
            if let Some((task, _)) = pipe.marking.front_mut() {
                // The keys of a batch being marked may have more behind
                // them: look again once it is marked, or on a commit,
                // whichever comes first (a mark can wait on a slow WAL
                // flush; new commits need not wait with it).
                let mut marked = None;
                tokio::select! {
                    done = task => marked = Some(done),
                    _ = waker.wait(settings.poll_interval) => {}
                    _ = shutdown.wait() => {}
                }
                if let Some(done) = marked {
                    pipe.marking.pop_front();
                    log_marking_failure(done);
                }
                continue;
            }
            if waker.listens() && !waiting {
                let lease = Some(leases.lease());
                if let Err(e) = store.set_waiting(leases.relay_id(), lease).await {
                    tracing::warn!(error = %e, "cannot ask for wake-up notifications; polling");
                }
                waiting = true;
                // One more look: a commit from before this did not notify.
                continue;
            }
            let wait = settings.poll_interval.min(
                leases
                    .next_renewal()
                    .saturating_duration_since(Instant::now()),
            );
            tokio::select! {
                _ = waker.wait(wait) => {}
                _ = shutdown.wait() => {}
            }
            continue;
        }

        if full && waiting {
            if let Err(e) = store.set_waiting(leases.relay_id(), None).await {
                tracing::debug!(error = %e, "cannot stop wake-up notifications");
            }
            waiting = false;
        }
        // When the batch is full there is likely more: fetch the next one
        // while this one is handed to the producer (the database works
        // while the relay formats records). It starts after this batch's
        // last message and leaves out everything not yet settled; it is
        // used only if this batch turns out to hold nothing back.
        // A task of its own, so decoding the rows runs on the other core
        // while this one formats records.
        let prefetched = full.then(|| {
            let from = batch.last().map_or(0, |m| m.seq);
            let exclude = pipe.exclusions();
            let (store, for_shards, limit) = (store.clone(), shards.clone(), settings.batch_size);
            let task = tokio::spawn(async move {
                store
                    .fetch_pending(
                        &for_shards,
                        limit as i64,
                        from,
                        &exclude.seqs,
                        &exclude.keys,
                    )
                    .await
            });
            Prefetch {
                from,
                shards: shards.clone(),
                task,
            }
        });
        let sending = publisher.send_batch(&batch, &mut pipe.key_topics).await;
        let blocked: Vec<usize> = sending.blocked_now().collect();
        let lowest_held = blocked.first().map(|&i| batch[i].seq);
        let mut blocked_keys: Vec<Vec<u8>> = blocked
            .iter()
            .filter_map(|&i| batch[i].key.clone())
            .collect();
        blocked_keys.sort_unstable();
        blocked_keys.dedup();
        if full {
            // Never move past a message held back or refused here (nor in
            // any batch not yet settled): nothing marks it as waiting, so
            // only a fetch that sees it again keeps its key in order.
            let last = batch.last().map_or(0, |m| m.seq);
            let here = lowest_held.map_or(last, |s| s - 1);
            cursor = pipe.cursor_limit().map_or(here, |limit| here.min(limit));
        }
        tracing::trace!(
            messages = batch.len(),
            fetch_ms = fetch_time.as_secs_f64() * 1e3,
            in_flight = pipe.flights.len() + 1,
            "batch sent"
        );
        match prefetched {
            Some(p) if blocked.is_empty() => next = Some(p),
            Some(p) => p.task.abort(),
            None => {}
        }
        let sent = sending.sent();
        pipe.flights.push_back(Flight {
            batch,
            sent,
            blocked_keys,
            lowest_held,
            started,
            reports: tokio::spawn(sending.outcomes()),
            done: None,
        });
    }
    pipe.drain(leases, &store, &settings, &shutdown).await;
    Ok(())
}

/// A batch fetched while the previous one was being sent.
struct Prefetch {
    /// The cursor it fetched from.
    from: i64,
    /// The shards it fetched: a batch of shards given back since must not
    /// be sent.
    shards: Vec<i16>,
    task: JoinHandle<outbox::Result<Vec<PendingMessage>>>,
}

/// What the next fetch must leave out while a batch is being marked.
#[derive(Default)]
struct Exclusions {
    seqs: Vec<i64>,
    keys: Vec<Vec<u8>>,
    /// The batch's lowest message not published, which the fetch cursor
    /// must not pass while the batch is being marked.
    lowest_unpublished: Option<i64>,
}

/// Waits for the oldest batch being marked, if any.
async fn finish(marking: &mut VecDeque<(JoinHandle<()>, Exclusions)>) {
    if let Some((task, _)) = marking.pop_front() {
        log_marking_failure(task.await);
    }
}

fn log_marking_failure(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "marking task failed; its messages will be published again");
    }
}

/// What a published batch comes to, ready to be written back.
struct Report {
    published: Vec<i64>,
    failures: Vec<Failure>,
    transient: u64,
    permanent: u64,
    dead: u64,
    held: u64,
    /// Every message failed for reasons that are not its own: the broker is
    /// down. The messages are left untouched (no attempt is counted) and
    /// the whole relay pauses instead.
    broker_unavailable: bool,
    /// Some message failed because the producer can send nothing more
    /// (fenced, epoch or sequence lost): the relay must stop.
    producer_broken: bool,
    first_error: Option<String>,
    /// Keys with a failed or held message in this batch.
    blocked_keys: Vec<Vec<u8>>,
    /// The lowest message of the batch that was not published, if any.
    /// Failures recorded with a backoff keep their key waiting wherever
    /// the cursor stands; the others (broker unavailable, held, producer
    /// broken) are found again only by a fetch that starts below them.
    lowest_unpublished: Option<i64>,
}

impl Report {
    fn new(batch: &[PendingMessage], outcomes: &[Outcome], retry: &RetryPolicy) -> Self {
        let mut r = Report {
            published: Vec::with_capacity(batch.len()),
            failures: Vec::new(),
            transient: 0,
            permanent: 0,
            dead: 0,
            held: 0,
            broker_unavailable: false,
            producer_broken: false,
            first_error: None,
            blocked_keys: Vec::new(),
            lowest_unpublished: None,
        };
        for (m, outcome) in batch.iter().zip(outcomes) {
            if *outcome != Outcome::Published && r.lowest_unpublished.is_none() {
                // The batch is in seq order: the first is the lowest.
                r.lowest_unpublished = Some(m.seq);
            }
            match outcome {
                Outcome::Published => r.published.push(m.seq),
                Outcome::Held => {
                    r.held += 1;
                    r.blocked_keys.extend(m.key.clone());
                }
                Outcome::ProducerBroken { error } => {
                    // Not the message's fault: nothing is recorded against
                    // it, and the relay stops (see `run`).
                    r.producer_broken = true;
                    r.held += 1;
                    r.blocked_keys.extend(m.key.clone());
                    r.first_error.get_or_insert_with(|| error.clone());
                }
                Outcome::Failed { error, permanent } => {
                    r.blocked_keys.extend(m.key.clone());
                    let attempts = u32::try_from(m.attempts).unwrap_or(0) + 1;
                    let dead = *permanent && retry.exhausted(attempts);
                    if *permanent {
                        r.permanent += 1;
                    } else {
                        r.transient += 1;
                    }
                    r.dead += u64::from(dead);
                    r.first_error.get_or_insert_with(|| error.clone());
                    r.failures.push(Failure {
                        seq: m.seq,
                        error: error.clone(),
                        retry_in: retry.delay(attempts),
                        dead,
                    });
                }
            }
        }
        if r.published.is_empty() && r.permanent == 0 && r.transient > 0 {
            r.broker_unavailable = true;
            r.failures.clear();
        }
        r
    }

    /// The batch's messages, and the keys that failed or were held back.
    fn exclusions(&self, batch: &[PendingMessage]) -> Exclusions {
        let mut keys: Vec<Vec<u8>> = self.blocked_keys.clone();
        keys.sort_unstable();
        keys.dedup();
        Exclusions {
            seqs: batch.iter().map(|m| m.seq).collect(),
            keys,
            lowest_unpublished: self.lowest_unpublished,
        }
    }

    fn record_metrics(&self, elapsed: Duration) {
        metrics::counter!(crate::metrics::PUBLISHED).increment(self.published.len() as u64);
        metrics::counter!(crate::metrics::FAILED, "kind" => "transient").increment(self.transient);
        metrics::counter!(crate::metrics::FAILED, "kind" => "permanent").increment(self.permanent);
        metrics::counter!(crate::metrics::DEAD).increment(self.dead);
        metrics::histogram!(crate::metrics::BATCH_SECONDS).record(elapsed.as_secs_f64());
        metrics::histogram!(crate::metrics::BATCH_SIZE)
            .record((self.published.len() + self.failures.len()) as f64 + self.held as f64);
        if self.permanent > 0 || (self.transient > 0 && !self.broker_unavailable) {
            tracing::warn!(
                published = self.published.len(),
                transient = self.transient,
                permanent = self.permanent,
                dead = self.dead,
                held = self.held,
                error = self.first_error.as_deref().unwrap_or(""),
                "some messages of the batch failed; they will be retried"
            );
        } else {
            tracing::debug!(
                published = self.published.len(),
                ms = elapsed.as_millis() as u64,
                "batch published"
            );
        }
    }
}

/// Writes the batch's results back. Retries while the database is away,
/// because every message not marked now is published again later (a
/// duplicate, not a loss); gives up only on shutdown.
async fn settle(store: RelayStore, report: Report, keep_published: bool, mut shutdown: Shutdown) {
    let mut delay = Duration::from_millis(100);
    loop {
        let marked = async {
            store
                .mark_published(&report.published, keep_published)
                .await?;
            store.record_failures(&report.failures).await
        };
        match marked.await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    published = report.published.len(),
                    "cannot mark the batch; retrying (unmarked messages would be published again)"
                );
                if shutdown.is_triggered() {
                    return;
                }
                idle(&mut shutdown, delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The delivery reports of a batch. Messages never time out by default,
/// so with the broker away this can wait for ever; once `shutdown` fires
/// it waits [`STOP_GRACE`] more at most and then returns how long it
/// waited in all.
async fn wait_for_reports(
    reports: &mut JoinHandle<Vec<Outcome>>,
    mut shutdown: Shutdown,
) -> Result<Result<Vec<Outcome>, tokio::task::JoinError>, Duration> {
    let started = Instant::now();
    tokio::select! {
        done = &mut *reports => return Ok(done),
        _ = shutdown.wait() => {}
    }
    tokio::time::timeout(STOP_GRACE, reports)
        .await
        .map_err(|_| started.elapsed())
}

/// Sleeps for `d` or until shutdown.
async fn idle(shutdown: &mut Shutdown, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: i64, key: &str, attempts: i32) -> PendingMessage {
        crate::publish::tests::pending(seq, key, "t", attempts)
    }

    fn failed(permanent: bool) -> Outcome {
        Outcome::Failed {
            error: "boom".into(),
            permanent,
        }
    }

    fn flight(seqs: &[i64], blocked_keys: &[&str], lowest_held: Option<i64>) -> Flight {
        Flight {
            batch: seqs.iter().map(|&s| msg(s, "k", 0)).collect(),
            sent: vec![],
            blocked_keys: blocked_keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            lowest_held,
            started: Instant::now(),
            reports: tokio::spawn(async { Vec::new() }),
            done: None,
        }
    }

    #[tokio::test]
    async fn the_fetch_leaves_out_unsettled_batches_and_stops_below_their_holds() {
        let mut pipe = Pipeline {
            flights: VecDeque::from([
                flight(&[10, 11], &["x"], Some(11)),
                flight(&[20], &[], None),
            ]),
            marking: VecDeque::new(),
            key_topics: KeyTopics::default(),
            generation: 0,
            rewind: None,
            failed_keys: HashMap::new(),
        };
        pipe.marking.push_back((
            tokio::spawn(async {}),
            Exclusions {
                seqs: vec![5],
                keys: vec![b"x".to_vec(), b"y".to_vec()],
                lowest_unpublished: Some(7),
            },
        ));
        let e = pipe.exclusions();
        assert_eq!(e.seqs, vec![5, 10, 11, 20]);
        assert_eq!(e.keys, vec![b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(
            pipe.cursor_limit(),
            Some(6),
            "below the lowest held message"
        );
        pipe.marking.clear();
        assert_eq!(pipe.cursor_limit(), Some(10));
        pipe.flights.pop_front();
        assert_eq!(pipe.cursor_limit(), None);
    }

    #[test]
    fn permanent_failure_is_dead_only_when_the_budget_is_spent() {
        let retry = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let batch = [msg(1, "a", 1), msg(2, "b", 2), msg(3, "c", 0)];
        let r = Report::new(
            &batch,
            &[failed(true), failed(true), Outcome::Published],
            &retry,
        );
        assert_eq!(r.published, vec![3]);
        let dead: Vec<(i64, bool)> = r.failures.iter().map(|f| (f.seq, f.dead)).collect();
        assert_eq!(dead, vec![(1, false), (2, true)]);
        assert!(!r.broker_unavailable);
    }

    #[test]
    fn transient_failures_never_dead_letter() {
        let retry = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let batch = [msg(1, "a", 50), msg(2, "b", 0)];
        let r = Report::new(&batch, &[failed(false), Outcome::Published], &retry);
        assert_eq!(r.failures.len(), 1);
        assert!(!r.failures[0].dead);
    }

    #[test]
    fn a_batch_that_failed_entirely_for_broker_reasons_pauses_without_counting() {
        let batch = [msg(1, "a", 0), msg(2, "b", 0)];
        let r = Report::new(
            &batch,
            &[failed(false), failed(false)],
            &RetryPolicy::default(),
        );
        assert!(r.broker_unavailable);
        assert!(
            r.failures.is_empty(),
            "no attempt is counted against the messages"
        );
    }

    #[test]
    fn the_cursor_goes_back_below_what_a_batch_did_not_publish() {
        let batch = [msg(5, "a", 0), msg(6, "b", 0), msg(7, "a", 0)];
        let retry = RetryPolicy::default();
        let published = [Outcome::Published, Outcome::Published, Outcome::Published];
        let all = Report::new(&batch, &published, &retry);
        assert_eq!(all.lowest_unpublished, None);
        // The whole batch failed for broker reasons: nothing is recorded
        // against the messages, so only a fetch from below finds them.
        let down = Report::new(
            &batch,
            &[failed(false), failed(false), failed(false)],
            &retry,
        );
        assert!(down.broker_unavailable);
        assert_eq!(down.lowest_unpublished, Some(5));
        let held = Report::new(
            &batch,
            &[Outcome::Published, failed(true), Outcome::Held],
            &retry,
        );
        assert_eq!(held.lowest_unpublished, Some(6));
        let broken = Report::new(
            &batch,
            &[
                Outcome::Published,
                Outcome::ProducerBroken {
                    error: "fenced".into(),
                },
                Outcome::Published,
            ],
            &retry,
        );
        assert!(broken.producer_broken);
        assert!(broken.failures.is_empty(), "no attempt is counted");
        assert_eq!(broken.lowest_unpublished, Some(6));
    }

    #[tokio::test]
    async fn a_message_acknowledged_after_an_earlier_failure_of_its_key_is_a_gap() {
        let mut pipe = Pipeline {
            flights: VecDeque::from([flight(&[30], &[], None)]),
            marking: VecDeque::new(),
            key_topics: KeyTopics::default(),
            generation: 0,
            rewind: None,
            failed_keys: HashMap::new(),
        };
        let first = [msg(10, "a", 0), msg(11, "b", 0)];
        pipe.watch_gaps(&first, &[failed(false), Outcome::Published]);
        assert_eq!(pipe.failed_keys.get(b"a".as_slice()), Some(&10));
        // A later batch of the same keys, sent before the failure was known.
        let later = [msg(20, "a", 0), msg(21, "b", 0)];
        let before = pipe.failed_keys.len();
        pipe.watch_gaps(&later, &[Outcome::Published, Outcome::Published]);
        assert_eq!(before, 1);
        // Once nothing is in flight, the watch ends.
        pipe.flights.clear();
        pipe.watch_gaps(&later, &[Outcome::Published, Outcome::Published]);
        assert!(pipe.failed_keys.is_empty());
    }

    #[test]
    fn failed_and_held_keys_are_excluded_from_the_next_fetch() {
        let batch = [
            msg(1, "a", 0),
            msg(2, "a", 0),
            msg(3, "b", 0),
            msg(4, "c", 0),
        ];
        let outcomes = [
            failed(true),
            Outcome::Held,
            Outcome::Published,
            failed(false),
        ];
        let r = Report::new(&batch, &outcomes, &RetryPolicy::default());
        let e = r.exclusions(&batch);
        assert_eq!(e.seqs, vec![1, 2, 3, 4]);
        assert_eq!(e.keys, vec![b"a".to_vec(), b"c".to_vec()]);
    }
}
