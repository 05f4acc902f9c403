//! Shard leases: which keys this relay may publish, and until when.

use std::time::{Duration, Instant};

use crate::store::RelayStore;
use uuid::Uuid;

/// What [`ShardLeases::maintain`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintained {
    /// A shard not held before was taken: its messages may lie anywhere.
    pub gained: bool,
    /// Shards above the fair share were kept, since giving them back was
    /// not allowed: settle what is in flight and maintain again.
    pub must_give_back: bool,
}

/// The shards this relay holds, with a local deadline. The deadline is
/// measured from *before* the renewal was sent, so it is never later than
/// the lease the database recorded: once it passes, another relay may own
/// these shards and this one must not publish them.
pub struct ShardLeases {
    store: RelayStore,
    relay: Uuid,
    name: String,
    lease: Duration,
    renew_every: Duration,
    held: Vec<i16>,
    valid_until: Option<Instant>,
    next_renewal: Instant,
}

impl ShardLeases {
    /// Leases for relay `relay`, none held yet.
    pub fn new(
        store: RelayStore,
        relay: Uuid,
        name: String,
        lease: Duration,
        renew_every: Duration,
    ) -> Self {
        ShardLeases {
            store,
            relay,
            name,
            lease,
            renew_every,
            held: Vec::new(),
            valid_until: None,
            next_renewal: Instant::now(),
        }
    }

    /// Renews the leases and takes shards up to this relay's fair share.
    /// Shards above it are given back only when `may_give_back` (the
    /// caller first lets everything in flight settle); otherwise they are
    /// kept and renewed, and the answer says they must go, so the caller
    /// settles and calls again. That way a relay renewing on its own does
    /// not stop publishing for it: only giving a shard back needs the
    /// pipeline empty. On a database error the held shards keep their old
    /// deadline and the renewal is retried within a second.
    pub async fn maintain(&mut self, may_give_back: bool) -> Maintained {
        let started = Instant::now();
        match self
            .store
            .renew_shards(self.relay, &self.name, self.lease, may_give_back)
            .await
        {
            Ok(renewed) => {
                let held = renewed.held;
                if held.len() != self.held.len() {
                    tracing::info!(shards = held.len(), "shard ownership changed");
                }
                metrics::gauge!(crate::metrics::SHARDS_HELD).set(held.len() as f64);
                let gained = held.iter().any(|s| !self.held.contains(s));
                self.held = held;
                self.valid_until = Some(started + self.lease);
                self.next_renewal = started + self.renew_every;
                Maintained {
                    gained,
                    must_give_back: renewed.excess > 0,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew shard leases; retrying");
                self.next_renewal = Instant::now() + Duration::from_secs(1).min(self.renew_every);
                Maintained::default()
            }
        }
    }

    /// Runs `work` (a fetch) to completion, extending the held leases
    /// whenever a renewal falls due meanwhile, so a slow statement does
    /// not cost the relay its keys. Extending gives nothing back and takes
    /// nothing new, so it is safe with batches in flight; a shard lost
    /// meanwhile (taken over after the lease ran out) is dropped from the
    /// held set, and the caller sees it in [`usable`](Self::usable).
    pub async fn keep_while<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            let due = tokio::time::Instant::from_std(self.next_renewal);
            tokio::select! {
                out = &mut work => return out,
                _ = tokio::time::sleep_until(due) => self.extend().await,
            }
        }
    }

    /// Extends the leases of the shards still held, without rebalancing.
    async fn extend(&mut self) {
        let started = Instant::now();
        match self.store.extend_shards(self.relay, self.lease).await {
            Ok(held) => {
                self.held.retain(|s| held.contains(s));
                self.valid_until = Some(started + self.lease);
                self.next_renewal = started + self.renew_every;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot extend shard leases; retrying");
                self.next_renewal = Instant::now() + Duration::from_secs(1).min(self.renew_every);
            }
        }
    }

    /// The shards that may be published now: all held ones if their lease
    /// has more than `margin` left (a batch sent now is settled before
    /// the lease ends), otherwise none.
    pub fn usable(&self, margin: Duration) -> &[i16] {
        match self.valid_until {
            Some(until) if until.saturating_duration_since(Instant::now()) > margin => &self.held,
            _ => &[],
        }
    }

    /// Whether [`maintain`](Self::maintain) is due.
    pub fn renewal_due(&self) -> bool {
        Instant::now() >= self.next_renewal
    }

    /// How long a lease (and a renewal) lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The relay these leases belong to.
    pub fn relay_id(&self) -> Uuid {
        self.relay
    }

    /// When the next renewal is due.
    pub fn next_renewal(&self) -> Instant {
        self.next_renewal
    }

    /// Gives every shard back so other relays take over at once.
    pub async fn release(&mut self) {
        self.held.clear();
        self.valid_until = None;
        match self.store.release_shards(self.relay).await {
            Ok(()) => tracing::info!("released shard leases"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release shard leases; they expire on their own")
            }
        }
    }
}
