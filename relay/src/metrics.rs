//! Metric names, in one place so dashboards and code agree.

/// Counter: messages the broker acknowledged.
pub const PUBLISHED: &str = "outbox_relay_published_total";
/// Counter: failed publish attempts, label `kind` = transient | permanent.
pub const FAILED: &str = "outbox_relay_failed_total";
/// Counter: messages moved to the dead-letter state.
pub const DEAD: &str = "outbox_relay_dead_total";
/// Histogram: seconds from fetching a batch to marking it.
pub const BATCH_SECONDS: &str = "outbox_relay_batch_seconds";
/// Histogram: messages per batch.
pub const BATCH_SIZE: &str = "outbox_relay_batch_size";
/// Gauge: shards this relay holds.
pub const SHARDS_HELD: &str = "outbox_relay_shards_held";
/// Gauge: messages waiting to be published (all relays).
pub const PENDING: &str = "outbox_pending_messages";
/// Gauge: dead-lettered messages.
pub const DEAD_MESSAGES: &str = "outbox_dead_messages";
/// Gauge: age in seconds of the first pending message in publishing
/// order: the relay's lag.
pub const OLDEST_PENDING: &str = "outbox_oldest_pending_seconds";
/// Counter: published messages deleted by retention cleanup.
pub const CLEANED: &str = "outbox_sweeper_deleted_total";
/// Gauge: published messages waiting for their end-to-end confirmation.
pub const AWAITING: &str = "outbox_awaiting_confirmation_messages";
/// Gauge: of those, the ones past their deadline.
pub const OVERDUE: &str = "outbox_overdue_confirmation_messages";
/// Gauge: confirmed messages still kept until retention.
pub const COMPLETED: &str = "outbox_completed_messages";
/// Counter: messages sent again because their confirmation was overdue.
pub const RESENT: &str = "outbox_sweeper_resent_total";
/// Gauge: 1 while the relay has made no progress for half its
/// `--stall-timeout` with messages waiting (`/healthz` answers 503 then).
pub const STALLED: &str = "outbox_relay_stalled";
/// Counter: fetches of pending messages slower than two seconds.
pub const SLOW_FETCHES: &str = "outbox_relay_slow_fetches_total";
/// Counter: messages acknowledged after an earlier message of their key
/// failed on the broker (librdkafka skipped the failed one; it is sent
/// again after them). Should stay 0; see docs/limits.md.
pub const ORDER_GAPS: &str = "outbox_relay_order_gaps_total";
