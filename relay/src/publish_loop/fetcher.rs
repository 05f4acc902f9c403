//! Where the next batch comes from: the fetch cursor, and the batch
//! fetched ahead while the previous one is sent.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::lease::ShardLeases;
use crate::store::{PendingMessage, RelayStore};

use super::pipeline::Pipeline;

/// Longest a relay draining a backlog goes without looking below its
/// cursor.
const CURSOR_RESET: Duration = Duration::from_secs(10);

/// A fetch slower than this is logged as a warning and counted in
/// `outbox_relay_slow_fetches_total`: the relay's statements take
/// milliseconds on a healthy table, whatever the backlog.
const SLOW_FETCH: Duration = Duration::from_secs(2);

/// Fetches batches for the loop.
///
/// The cursor is where the next fetch starts (see
/// [`RelayStore::fetch_pending`]): back to 0 whenever the relay catches up,
/// and at least every [`CURSOR_RESET`] while it drains a backlog, so a
/// late commit with a lower seq waits at most that long. Not more often:
/// right after a large drain, a fetch from 0 walks every dead index entry
/// until vacuum removes them.
///
/// The cursor is an optimisation, never a promise: whatever it skips must
/// be something the relay may skip. So it goes back below every message of
/// a settled batch that was not published ([`Pipeline::take_rewind`]), and
/// to 0 whenever the relay gains shards (their messages may lie anywhere
/// below it) or the database failed under it.
pub(super) struct Fetcher {
    cursor: i64,
    cursor_reset: Instant,
    ahead: Option<FetchedAhead>,
}

/// A batch fetched while the previous one was being sent.
struct FetchedAhead {
    /// The cursor it fetched from.
    from: i64,
    /// The shards it fetched: a batch of shards given back since must not
    /// be sent.
    shards: Vec<i16>,
    /// [`Pipeline::epoch`] when it was fetched.
    epoch: u64,
    task: JoinHandle<sqlx::Result<Vec<PendingMessage>>>,
}

impl Fetcher {
    pub fn new() -> Self {
        Fetcher {
            cursor: 0,
            cursor_reset: Instant::now(),
            ahead: None,
        }
    }

    /// Looks from the start again at the next fetch.
    pub fn restart(&mut self) {
        self.cursor = 0;
        self.cursor_reset = Instant::now();
    }

    /// Forgets the batch fetched ahead.
    fn discard_ahead(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            ahead.task.abort();
        }
    }

    /// The next batch of `shards`: the one fetched ahead if it is still
    /// valid (same cursor, same shards, nothing settled with a failure
    /// since), otherwise a fresh fetch that leaves out what the pipeline
    /// has not settled. The leases are extended while the fetch runs.
    ///
    /// `None` when nothing was found from a cursor above 0: fetch again at
    /// once, from the start, before deciding there is nothing to do.
    pub async fn fetch(
        &mut self,
        store: &RelayStore,
        shards: &[i16],
        limit: usize,
        pipe: &mut Pipeline,
        leases: &mut ShardLeases,
    ) -> sqlx::Result<Option<Vec<PendingMessage>>> {
        let started = Instant::now();
        if self.cursor_reset.elapsed() >= CURSOR_RESET {
            self.restart();
        }
        if let Some(seq) = pipe.take_rewind() {
            self.cursor = self.cursor.min(seq - 1).max(0);
        }
        let ahead = match self.ahead.take() {
            Some(a) if a.from == self.cursor && a.shards == shards && a.epoch == pipe.epoch() => {
                a.task.await.ok()
            }
            Some(a) => {
                a.task.abort();
                None
            }
            None => None,
        };
        let batch = match ahead {
            Some(fetched) => fetched?,
            None => {
                let exclude = pipe.exclusions();
                let fetch = store.fetch_pending(
                    shards,
                    limit as i64,
                    self.cursor,
                    &exclude.seqs,
                    &exclude.keys,
                );
                leases.keep_while(fetch).await?
            }
        };
        let took = started.elapsed();
        if took > SLOW_FETCH {
            metrics::counter!(crate::metrics::SLOW_FETCHES).increment(1);
            tracing::warn!(
                seconds = took.as_secs_f64(),
                messages = batch.len(),
                from_seq = self.cursor,
                "fetching pending messages was slow (usually milliseconds); is the outbox table bloated or the database overloaded?"
            );
        }
        if batch.len() < limit && self.cursor != 0 {
            // Caught up from the cursor: the next fetch looks once more
            // from the start before the relay waits.
            self.restart();
            if batch.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(batch))
    }

    /// Fetches the batch after `last_seq` of `shards` on a task of its own,
    /// while the current batch is handed to the producer (the database
    /// works while the relay formats records, and decoding the rows runs
    /// on the other core). It leaves out everything not yet settled.
    pub fn fetch_ahead(
        &mut self,
        store: &RelayStore,
        shards: &[i16],
        limit: usize,
        last_seq: i64,
        pipe: &Pipeline,
    ) {
        let exclude = pipe.exclusions();
        let (store, for_shards) = (store.clone(), shards.to_vec());
        let task = tokio::spawn(async move {
            store
                .fetch_pending(
                    &for_shards,
                    limit as i64,
                    last_seq,
                    &exclude.seqs,
                    &exclude.keys,
                )
                .await
        });
        self.discard_ahead();
        self.ahead = Some(FetchedAhead {
            from: last_seq,
            shards: shards.to_vec(),
            epoch: pipe.epoch(),
            task,
        });
    }

    /// Moves the cursor past a full batch just sent (up to `last_seq`),
    /// never past a message
    /// held back or refused in it (nor in any batch not yet settled,
    /// `limit`): nothing marks such a message as waiting, so only a fetch
    /// that sees it again keeps its key in order. A batch fetched ahead is
    /// kept only if nothing was held back.
    pub fn advance(&mut self, last_seq: i64, lowest_unsent: Option<i64>, limit: Option<i64>) {
        let here = lowest_unsent.map_or(last_seq, |s| s - 1);
        self.cursor = limit.map_or(here, |limit| here.min(limit));
        if lowest_unsent.is_some() {
            self.discard_ahead();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_never_passes_a_message_not_sent_nor_an_unsettled_limit() {
        let mut f = Fetcher::new();
        f.advance(100, None, None);
        assert_eq!(f.cursor, 100, "past a full batch sent whole");
        f.advance(200, Some(150), None);
        assert_eq!(f.cursor, 149, "below the message held back");
        f.advance(300, None, Some(120));
        assert_eq!(f.cursor, 120, "below an unsettled batch's hold");
        f.advance(400, Some(350), Some(360));
        assert_eq!(f.cursor, 349);
        f.restart();
        assert_eq!(f.cursor, 0);
    }
}
