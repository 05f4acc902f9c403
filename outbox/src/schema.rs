//! The contract between the library, the relay and the migrations: names
//! and values that are written into SQL and must agree everywhere.
//!
//! The migrations are SQL and cannot refer to these constants; the tests
//! below read the migrations and fail when the two disagree.

use std::fmt;
use std::str::FromStr;

/// Number of shards keys are spread over: a message's shard is the first
/// byte of the SHA-256 of its key (of its id when it has no key), and the
/// migrations create one lease row per shard.
pub const SHARD_COUNT: i16 = 256;

/// The channel a committed insert notifies while a relay waits for work
/// (`LISTEN outbox_message`).
pub const WAKEUP_CHANNEL: &str = "outbox_message";

/// Where a message is in its life, as stored in `outbox.message.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    /// Committed, not yet acknowledged by the broker.
    Pending,
    /// Acknowledged, kept until the retention period ends.
    Published,
    /// Acknowledged, waiting for the end-to-end confirmation.
    Awaiting,
    /// Confirmed by [`confirm`](crate::confirm).
    Completed,
    /// Given up on; waits for a replay.
    Dead,
}

impl MessageStatus {
    /// Every status, in the order of its life.
    pub const ALL: [MessageStatus; 5] = [
        MessageStatus::Pending,
        MessageStatus::Published,
        MessageStatus::Awaiting,
        MessageStatus::Completed,
        MessageStatus::Dead,
    ];

    /// The value stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Published => "published",
            MessageStatus::Awaiting => "awaiting",
            MessageStatus::Completed => "completed",
            MessageStatus::Dead => "dead",
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown message status {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The migrations, oldest first.
    fn migrations() -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("the migrations folder")
            .map(|e| e.expect("a migration").path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).expect("a readable migration"))
            .collect()
    }

    #[test]
    fn the_newest_status_check_lists_exactly_these_statuses() {
        let all = migrations().concat();
        let check = all
            .rmatch_indices("CHECK (status IN (")
            .next()
            .map(|(at, m)| &all[at + m.len()..])
            .and_then(|rest| rest.split(')').next())
            .expect("a status check constraint");
        let stored: Vec<&str> = check
            .split(',')
            .map(|s| s.trim().trim_matches('\''))
            .collect();
        let ours: Vec<&str> = MessageStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(stored, ours);
        for s in MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<MessageStatus>(), Ok(s));
        }
    }

    #[test]
    fn every_notification_uses_the_wakeup_channel() {
        let all = migrations().concat();
        let channels: Vec<&str> = all
            .match_indices("pg_notify('")
            .map(|(at, m)| {
                let rest = &all[at + m.len()..];
                &rest[..rest.find('\'').expect("a closing quote")]
            })
            .collect();
        assert!(!channels.is_empty());
        assert!(
            channels.iter().all(|c| *c == WAKEUP_CHANNEL),
            "{channels:?}"
        );
    }

    #[test]
    fn the_migrations_create_one_lease_per_shard() {
        let all = migrations().concat();
        let series = format!("generate_series(0, {})", SHARD_COUNT - 1);
        assert!(all.contains(&series), "no `{series}` in the migrations");
        // A shard is one byte of a hash: 256 values, no more, no fewer.
        assert!(all.contains("get_byte(sha256("));
        assert_eq!(SHARD_COUNT, 256);
    }
}
