use std::fmt;

use crate::{Error, Result};

/// Longest gid MariaDB accepts as an XA gtrid (and well under PostgreSQL's 200).
const MAX_GID_LEN: usize = 64;

/// A global transaction id: `<prefix>-<uuid v7 as 32 hex digits>`.
///
/// The prefix names the coordinator. Recovery only touches prepared
/// transactions whose gid starts with its own prefix, so coordinators (and
/// tests) sharing a database server never resolve each other's work. Only
/// `[a-z0-9_-]` is allowed, because gids are spliced into
/// `PREPARE TRANSACTION '…'` and `XA … '…'`, which take no bind parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gid(String);

impl Gid {
    /// A fresh gid under `prefix`. Fails with [`Error::InvalidGid`] if the
    /// prefix has other characters than `[a-z0-9_-]` or is longer than 31.
    pub fn new(prefix: &str) -> Result<Self> {
        check_prefix(prefix)?;
        Ok(Gid(format!("{prefix}-{}", uuid::Uuid::now_v7().simple())))
    }

    /// Parses a gid read back from a participant or the log.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > MAX_GID_LEN || !s.bytes().all(allowed) {
            return Err(Error::InvalidGid(s.to_owned()));
        }
        Ok(Gid(s.to_owned()))
    }

    /// The gid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this gid belongs to the coordinator with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.0.len() > prefix.len()
            && self.0.starts_with(prefix)
            && self.0.as_bytes()[prefix.len()] == b'-'
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a coordinator's gid prefix: `[a-z0-9_-]`, 1 to 31 bytes.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > MAX_GID_LEN - 33 || !prefix.bytes().all(allowed) {
        return Err(Error::InvalidGid(prefix.to_owned()));
    }
    Ok(())
}

fn allowed(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_are_safe_and_carry_their_prefix() {
        let gid = Gid::new("cmp_1").unwrap();
        assert!(gid.has_prefix("cmp_1"));
        assert!(!gid.has_prefix("cmp"));
        assert!(gid.as_str().len() <= MAX_GID_LEN);
        assert!(Gid::new("x'; DROP TABLE t; --").is_err());
        assert!(Gid::parse("a'b").is_err());
        assert_eq!(Gid::parse(gid.as_str()).unwrap(), gid);
    }
}
