//! Delivery reports gathered per batch, not per message.
//!
//! rdkafka's `FutureProducer` gives every record a boxed oneshot channel,
//! and every report completes a future that wakes the task waiting on the
//! batch: two allocations and a cross-thread wake-up per message, on the
//! one thread the relay runs on. Here each record carries a ticket (a
//! number, no allocation); librdkafka's polling thread writes the report
//! into its batch's slot and wakes the batch's waiter once, when the last
//! report is in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use crate::broker_events::BrokerEvents;

/// The relay's producer: librdkafka's own polling thread delivers the
/// reports to [`ProducerEvents`].
pub(crate) type RelayProducer = ThreadedProducer<ProducerEvents>;

/// What the broker said about one record.
#[derive(Debug, Clone)]
pub(crate) enum Report {
    /// Acknowledged; `offset` is negative when librdkafka did not learn it.
    Delivered { offset: i64 },
    /// Not delivered.
    Failed(KafkaError),
}

/// The producer's context (`producer.context()`): broker events for the
/// logs, and the batches whose reports are awaited.
#[derive(Default)]
pub(crate) struct ProducerEvents {
    pub(crate) events: BrokerEvents,
    pub(crate) reports: DeliveryReports,
}

impl ClientContext for ProducerEvents {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.events.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.events.error(error, reason);
    }
}

impl ProducerContext for ProducerEvents {
    /// The record's ticket (see [`DeliveryReports::open`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: usize) {
        let report = match result {
            Ok(m) => Report::Delivered { offset: m.offset() },
            Err((e, _)) => Report::Failed(e.clone()),
        };
        self.reports.record(ticket, report);
    }
}

/// The batches whose reports are still awaited.
#[derive(Default)]
pub(crate) struct DeliveryReports {
    /// A handful at most (the relay's `--in-flight`), so a scan is cheap.
    /// Weak: a batch nobody waits for any more (its `Sending` dropped, e.g.
    /// on shutdown) is gone, and its late reports are dropped.
    open: Mutex<Vec<Weak<Batch>>>,
}

/// One batch's reports: the records' tickets are `first..first + len`
/// (wrapping: a ticket counter may wrap on a 32-bit target).
pub(crate) struct Batch {
    first: usize,
    len: usize,
    slots: Mutex<Vec<Option<Report>>>,
    /// Records handed to librdkafka and not yet reported, plus one while
    /// the batch is still being sent, so that reports arriving during the
    /// sending cannot declare it complete.
    left: AtomicUsize,
    done: Notify,
}

impl DeliveryReports {
    /// Opens a batch of `len` records whose tickets start at `first`.
    pub(crate) fn open(&self, first: usize, len: usize) -> Arc<Batch> {
        let batch = Arc::new(Batch {
            first,
            len,
            slots: Mutex::new(vec![None; len]),
            left: AtomicUsize::new(1),
            done: Notify::new(),
        });
        let mut open = lock(&self.open);
        open.retain(|b| b.strong_count() > 0);
        open.push(Arc::downgrade(&batch));
        batch
    }

    fn record(&self, ticket: usize, report: Report) {
        let batch = lock(&self.open)
            .iter()
            .filter_map(Weak::upgrade)
            .find(|b| ticket.wrapping_sub(b.first) < b.len);
        // A batch nobody waits for any more: its messages stay pending and
        // are published again.
        let Some(batch) = batch else { return };
        lock(&batch.slots)[ticket.wrapping_sub(batch.first)] = Some(report);
        batch.reported();
    }
}

impl Batch {
    /// Counts a record about to be handed to librdkafka; call
    /// [`Batch::not_sent`] if the hand-over fails.
    pub(crate) fn sending(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes back a [`Batch::sending`] whose record librdkafka refused.
    pub(crate) fn not_sent(&self) {
        self.reported();
    }

    /// Ends the sending: from now on the last report completes the batch.
    pub(crate) fn sent(&self) {
        self.reported();
    }

    fn reported(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            // notify_one keeps a permit when nobody waits yet.
            self.done.notify_one();
        }
    }

    /// Waits until every record handed over has its report (after
    /// [`Batch::sent`]); returns the slots, `None` for records never
    /// handed over.
    pub(crate) async fn reports(&self) -> Vec<Option<Report>> {
        while self.left.load(Ordering::Acquire) != 0 {
            self.done.notified().await;
        }
        std::mem::take(&mut *lock(&self.slots))
    }
}

/// A poisoned lock only means a callback panicked; the data is a plain
/// list and stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    #[tokio::test]
    async fn a_batch_completes_with_its_last_report_not_before() {
        let reports = DeliveryReports::default();
        let first = reports.open(10, 3);
        let second = reports.open(13, 2);
        for _ in 0..2 {
            first.sending();
        }
        // Index 1 was held: never handed over.
        reports.record(10, Report::Delivered { offset: 7 });
        reports.record(
            12,
            Report::Failed(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )),
        );
        // Reported before the sending ended: not complete yet.
        assert_ne!(first.left.load(Ordering::Acquire), 0);
        first.sent();
        let slots = first.reports().await;
        assert!(matches!(slots[0], Some(Report::Delivered { offset: 7 })));
        assert!(slots[1].is_none());
        assert!(matches!(slots[2], Some(Report::Failed(_))));

        // The second batch's tickets did not land in the first; its first
        // record was refused by librdkafka.
        second.sending();
        second.not_sent();
        second.sending();
        second.sent();
        reports.record(14, Report::Delivered { offset: 1 });
        let slots = second.reports().await;
        assert!(slots[0].is_none());
        assert!(matches!(slots[1], Some(Report::Delivered { offset: 1 })));
    }

    #[test]
    fn reports_for_a_batch_given_up_on_are_dropped() {
        let reports = DeliveryReports::default();
        let given_up = reports.open(0, 1);
        given_up.sending();
        given_up.sent();
        drop(given_up);
        let next = reports.open(1, 1);
        next.sending();
        next.sent();
        reports.record(0, Report::Delivered { offset: 1 });
        assert_eq!(next.left.load(Ordering::Acquire), 1);
        assert!(lock(&next.slots)[0].is_none());
        assert_eq!(
            lock(&reports.open).len(),
            1,
            "the dropped batch is forgotten"
        );
    }
}
