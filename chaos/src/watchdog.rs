//! Stall detection from the database side: a shard is *stuck* while the
//! same live lease owner holds it, it has due pending messages, and its
//! oldest due message (`min(seq)`) does not change. Time during which the
//! harness itself took the database or the broker away does not count. A
//! shard stuck longer than the watchdog limit is a stall.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::util::Downtime;

/// One shard's stuck episode in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Track {
    owner: Uuid,
    min_seq: i64,
    stuck: Duration,
    reported: bool,
}

/// What the watchdog found.
#[derive(Debug, Default, Clone)]
pub struct StallReport {
    /// Stall episodes (a shard stuck longer than the limit counts once per
    /// episode).
    pub stalls: u32,
    /// The longest time any shard was stuck, stall or not.
    pub longest: Duration,
    /// Descriptions of the stalls.
    pub details: Vec<String>,
    /// Database samples taken / failed (the database was down).
    pub samples: u64,
    /// Samples that failed.
    pub failed_samples: u64,
}

/// A shard's state in one sample.
#[derive(Debug, Clone, Copy)]
pub struct ShardSample {
    /// The shard.
    pub shard: i16,
    /// Its live lease owner, if any.
    pub owner: Option<Uuid>,
    /// Its oldest due pending message and how many are due.
    pub due: Option<(i64, i64)>,
}

/// The pure part of the watchdog, fed with samples (unit-tested).
#[derive(Debug)]
pub struct Tracker {
    limit: Duration,
    tracks: HashMap<i16, Track>,
    /// Findings so far.
    pub report: StallReport,
}

impl Tracker {
    /// A tracker calling a shard stalled after `limit`.
    pub fn new(limit: Duration) -> Self {
        Tracker {
            limit,
            tracks: HashMap::new(),
            report: StallReport::default(),
        }
    }

    /// Takes one sample `dt` after the previous one; `excluded` when the
    /// harness took something away during that time (the time is then not
    /// counted, but an episode is not reset either). `names` maps owners to
    /// relay names for the details.
    pub fn sample(
        &mut self,
        dt: Duration,
        excluded: bool,
        shards: &[ShardSample],
        names: &HashMap<Uuid, String>,
    ) {
        let mut seen = Vec::with_capacity(shards.len());
        for s in shards {
            let (Some(owner), Some((min_seq, count))) = (s.owner, s.due) else {
                continue;
            };
            seen.push(s.shard);
            let track = self.tracks.entry(s.shard).or_insert(Track {
                owner,
                min_seq,
                stuck: Duration::ZERO,
                reported: false,
            });
            if track.owner != owner || track.min_seq != min_seq {
                *track = Track {
                    owner,
                    min_seq,
                    stuck: Duration::ZERO,
                    reported: false,
                };
                continue;
            }
            if !excluded {
                track.stuck += dt;
            }
            if track.stuck > self.report.longest {
                self.report.longest = track.stuck;
            }
            if track.stuck > self.limit && !track.reported {
                track.reported = true;
                self.report.stalls += 1;
                let name = names
                    .get(&owner)
                    .cloned()
                    .unwrap_or_else(|| owner.to_string());
                self.report.details.push(format!(
                    "stall: shard {} held by {name} ({owner}) for over {:.1}s with {count} due pending messages, oldest seq {min_seq} not advancing",
                    s.shard,
                    self.limit.as_secs_f64()
                ));
            }
        }
        self.tracks.retain(|shard, _| seen.contains(shard));
    }
}

/// Samples the database every 500 ms until `stop`; returns the findings.
pub async fn run(
    pool: PgPool,
    limit: Duration,
    downtime: Arc<Downtime>,
    mut stop: watch::Receiver<bool>,
    progress: Arc<Mutex<StallReport>>,
) -> StallReport {
    let mut tracker = Tracker::new(limit);
    let mut last = Instant::now();
    let mut names: HashMap<Uuid, String> = HashMap::new();
    loop {
        if crate::util::sleep_or_stop(Duration::from_millis(500), &mut stop).await {
            break;
        }
        let sampled_at = Instant::now();
        let shards = tokio::time::timeout(Duration::from_secs(2), sample(&pool, &mut names)).await;
        tracker.report.samples += 1;
        match shards {
            Ok(Ok(shards)) => {
                let dt = sampled_at - last;
                // A gap longer than a few ticks means samples failed or the
                // harness starved: do not count what we did not see.
                let excluded = downtime.overlaps(last) || dt > Duration::from_secs(3);
                tracker.sample(dt, excluded, &shards, &names);
                last = sampled_at;
            }
            _ => {
                tracker.report.failed_samples += 1;
            }
        }
        *progress.lock().expect("progress lock") = tracker.report.clone();
    }
    tracker.report
}

async fn sample(
    pool: &PgPool,
    names: &mut HashMap<Uuid, String>,
) -> Result<Vec<ShardSample>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let leases: Vec<(i16, Option<Uuid>)> = sqlx::query_as(
        "SELECT shard, CASE WHEN lease_until > now() THEN owner END \
         FROM outbox.shard_lease WHERE owner IS NOT NULL",
    )
    .fetch_all(&mut *conn)
    .await?;
    let due: Vec<(i16, i64, i64)> = sqlx::query_as(
        "SELECT shard, min(seq), count(*) FROM outbox.message \
         WHERE status = 'pending' AND available_at <= now() GROUP BY shard",
    )
    .fetch_all(&mut *conn)
    .await?;
    if leases
        .iter()
        .any(|(_, o)| o.is_some_and(|o| !names.contains_key(&o)))
    {
        let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, name FROM outbox.relay")
            .fetch_all(&mut *conn)
            .await?;
        names.extend(rows);
    }
    let mut by_shard: HashMap<i16, ShardSample> = HashMap::new();
    for (shard, owner) in leases {
        by_shard.insert(
            shard,
            ShardSample {
                shard,
                owner,
                due: None,
            },
        );
    }
    for (shard, min_seq, count) in due {
        by_shard
            .entry(shard)
            .or_insert(ShardSample {
                shard,
                owner: None,
                due: None,
            })
            .due = Some((min_seq, count));
    }
    Ok(by_shard.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(owner: Option<Uuid>, due: Option<(i64, i64)>) -> ShardSample {
        ShardSample {
            shard: 7,
            owner,
            due,
        }
    }

    #[test]
    fn stuck_shard_becomes_one_stall() {
        let o = Uuid::now_v7();
        let names = HashMap::new();
        let mut t = Tracker::new(Duration::from_secs(30));
        for _ in 0..100 {
            t.sample(
                Duration::from_millis(500),
                false,
                &[s(Some(o), Some((5, 3)))],
                &names,
            );
        }
        assert_eq!(t.report.stalls, 1);
        assert!(t.report.longest >= Duration::from_secs(49));
    }

    #[test]
    fn advancing_or_excluded_or_changing_owner_is_no_stall() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let names = HashMap::new();
        let mut t = Tracker::new(Duration::from_secs(30));
        for i in 0..100 {
            // Advancing.
            t.sample(
                Duration::from_millis(500),
                false,
                &[s(Some(a), Some((i, 3)))],
                &names,
            );
        }
        for _ in 0..100 {
            // Stuck but excluded (the harness paused the broker).
            t.sample(
                Duration::from_millis(500),
                true,
                &[s(Some(a), Some((1000, 3)))],
                &names,
            );
        }
        // Owner changes every 20 s.
        let mut t2 = Tracker::new(Duration::from_secs(30));
        for i in 0..200 {
            let owner = if (i / 40) % 2 == 0 { a } else { b };
            t2.sample(
                Duration::from_millis(500),
                false,
                &[s(Some(owner), Some((9, 3)))],
                &names,
            );
        }
        // No live owner: not the relays' fault.
        for _ in 0..100 {
            t2.sample(
                Duration::from_millis(500),
                false,
                &[s(None, Some((9, 3)))],
                &names,
            );
        }
        assert_eq!(t.report.stalls, 0);
        assert_eq!(t2.report.stalls, 0);
        assert!(t2.report.longest <= Duration::from_secs(20));
    }
}
