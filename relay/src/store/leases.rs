//! Shard leases: which relay publishes which keys, and which relays wait
//! for a wake-up.

use std::time::Duration;

use outbox::schema::SHARD_COUNT;
use uuid::Uuid;

use super::{statement, RelayStore};

/// What a renewal left a relay holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The shards held now, each valid for the lease from just before the
    /// renewal started.
    pub held: Vec<i16>,
    /// Shards held beyond the fair share and kept because the caller did
    /// not allow giving any back: it must settle what it has in flight
    /// and renew again, allowing it.
    pub excess: usize,
}

impl RelayStore {
    /// Records that relay `relay` is alive, renews the shard leases it
    /// holds for `lease`, and takes shards up to its fair share of the live
    /// relays. Gives back shards above that share only when `give_back`
    /// (the caller has nothing of theirs in flight); otherwise keeps them
    /// and says how many in [`Renewed::excess`].
    pub async fn renew_shards(
        &self,
        relay: Uuid,
        name: &str,
        lease: Duration,
        give_back: bool,
    ) -> sqlx::Result<Renewed> {
        let lease_secs = lease.as_secs_f64();
        let mut tx = self.pool.begin().await?;
        sqlx::query(statement!("register_relay"))
            .bind(relay)
            .bind(name)
            .bind(lease_secs)
            .execute(&mut *tx)
            .await?;
        let live: i64 = sqlx::query_scalar(statement!("count_live_relays"))
            .bind(lease_secs)
            .fetch_one(&mut *tx)
            .await?;
        let shards = i64::from(SHARD_COUNT);
        let fair = (shards + live.max(1) - 1) / live.max(1);

        let mut held = extend_leases(&mut tx, relay, lease_secs).await?;
        held.sort_unstable();

        let held_len = held.len() as i64;
        let mut excess = 0;
        if held_len > fair && !give_back {
            excess = (held_len - fair) as usize;
        } else if held_len > fair {
            // Give back the highest shards; the caller settled everything
            // first, so none of them has a message in flight.
            let give: Vec<i16> = held.split_off(fair as usize);
            sqlx::query(statement!("give_back_shards"))
                .bind(relay)
                .bind(&give)
                .execute(&mut *tx)
                .await?;
        } else if held_len < fair {
            let taken: Vec<i16> = sqlx::query_scalar(statement!("take_shards"))
                .bind(relay)
                .bind(lease_secs)
                .bind(fair - held_len)
                .fetch_all(&mut *tx)
                .await?;
            held.extend(taken);
            held.sort_unstable();
        }
        tx.commit().await?;
        Ok(Renewed { held, excess })
    }

    /// Extends the leases of the shards `relay` still owns by `lease` and
    /// records that it is alive, without taking or giving back any.
    /// Returns the shards it still owns, each valid for `lease` from just
    /// before this call started.
    pub async fn extend_shards(&self, relay: Uuid, lease: Duration) -> sqlx::Result<Vec<i16>> {
        let lease_secs = lease.as_secs_f64();
        let mut tx = self.pool.begin().await?;
        sqlx::query(statement!("heartbeat"))
            .bind(relay)
            .bind(lease_secs)
            .execute(&mut *tx)
            .await?;
        let held = extend_leases(&mut tx, relay, lease_secs).await?;
        tx.commit().await?;
        Ok(held)
    }

    /// Marks relay `relay` as waiting for work for `lease` (renewed with
    /// its leases while it lasts), or as busy (`None`). While any relay
    /// waits, every insert into `outbox.message` notifies
    /// [`WAKEUP_CHANNEL`](outbox::schema::WAKEUP_CHANNEL) at commit; while
    /// none does, inserts do not notify at all (a notifying commit holds a
    /// database-wide lock until it is flushed, so notifying writers commit
    /// one at a time).
    pub async fn set_waiting(&self, relay: Uuid, lease: Option<Duration>) -> sqlx::Result<()> {
        sqlx::query(statement!("set_waiting"))
            .bind(relay)
            .bind(lease.map(|l| l.as_secs_f64()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives back every shard `relay` holds and forgets the relay, so other
    /// relays take over at once instead of waiting for the leases to expire.
    pub async fn release_shards(&self, relay: Uuid) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(statement!("release_leases"))
            .bind(relay)
            .execute(&mut *tx)
            .await?;
        sqlx::query(statement!("forget_relay"))
            .bind(relay)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Frees the shards of relays whose lease ran out (crashed or cut off)
    /// and forgets relays silent for longer than `lease`. Returns the
    /// number of shards freed.
    pub async fn expire_leases(&self, lease: Duration) -> sqlx::Result<u64> {
        let freed = sqlx::query(statement!("free_expired_leases"))
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query(statement!("forget_silent_relays"))
            .bind(lease.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(freed)
    }
}

/// Extends the leases `relay` holds by `lease_secs`; returns their shards.
async fn extend_leases(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    relay: Uuid,
    lease_secs: f64,
) -> sqlx::Result<Vec<i16>> {
    sqlx::query_scalar(statement!("extend_leases"))
        .bind(relay)
        .bind(lease_secs)
        .fetch_all(&mut **tx)
        .await
}
