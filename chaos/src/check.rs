//! The verdict, computed from what the topic holds (read independently of
//! the relays) against what the writers committed.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

/// One record read back from the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// The record's Kafka key.
    pub record_key: Option<String>,
    /// The `outbox-id` header.
    pub id: Option<Uuid>,
    /// `key` and `n` parsed from the `key:n` payload.
    pub payload: Option<(String, i64)>,
}

/// What the writers committed: id → (key, n).
pub type Committed = HashMap<Uuid, (String, i64)>;

/// A key whose sequence is wrong, with the sequence as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey {
    /// The key.
    pub key: String,
    /// Why.
    pub why: String,
    /// `n`s in partition-offset order, each with its partition.
    pub sequence: Vec<(i32, i64)>,
}

/// Everything the check found.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Records read.
    pub records: usize,
    /// Distinct ids read.
    pub distinct: usize,
    /// Committed ids never read.
    pub lost: Vec<Uuid>,
    /// Ids read that were never committed.
    pub phantom: Vec<Uuid>,
    /// Records minus distinct ids.
    pub duplicates: usize,
    /// Keys whose first occurrences are out of order, or on several
    /// partitions.
    pub order_violations: Vec<BadKey>,
    /// Keys whose last occurrences are out of order.
    pub stale_tails: Vec<BadKey>,
    /// Records without an id, with an unparsable payload, or whose key,
    /// payload and committed row disagree.
    pub malformed: Vec<String>,
}

/// Whether the first occurrences of each `n`, in order, strictly increase
/// (`1 2 3 | 2 3 4` is fine: a re-send of a run; `1 3 2` is not).
pub fn first_occurrences_ok(seq: &[i64]) -> bool {
    let mut seen = HashSet::new();
    let mut last = i64::MIN;
    for &n in seq {
        if seen.insert(n) {
            if n <= last {
                return false;
            }
            last = n;
        }
    }
    true
}

/// Whether the last occurrences of each `n`, ordered by position, are in
/// increasing `n` (`1 2 3 4 | 3 4 5` is fine; `1 2 3 4 2` leaves a stale 2
/// last, which a compacted topic would keep).
pub fn last_occurrences_ok(seq: &[i64]) -> bool {
    let mut last_pos: HashMap<i64, usize> = HashMap::new();
    for (i, &n) in seq.iter().enumerate() {
        last_pos.insert(n, i);
    }
    let mut by_pos: Vec<(usize, i64)> = last_pos.into_iter().map(|(n, p)| (p, n)).collect();
    by_pos.sort_unstable();
    by_pos.windows(2).all(|w| w[0].1 < w[1].1)
}

/// Parses a `key:n` payload.
pub fn parse_payload(payload: &[u8]) -> Option<(String, i64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (key, n) = text.rsplit_once(':')?;
    Some((key.to_owned(), n.parse().ok()?))
}

/// Checks `seen` (any order; sorted here by partition and offset) against
/// `committed`.
pub fn check(seen: &[Seen], committed: &Committed) -> Findings {
    let mut records: Vec<&Seen> = seen.iter().collect();
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut f = Findings {
        records: records.len(),
        ..Findings::default()
    };
    let mut ids: HashSet<Uuid> = HashSet::new();
    let mut with_id = 0;
    let mut phantom: HashSet<Uuid> = HashSet::new();
    // key -> (partition, n) in partition-offset order.
    let mut per_key: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
    for r in &records {
        let Some(id) = r.id else {
            f.malformed
                .push(format!("{}/{}: no outbox-id header", r.partition, r.offset));
            continue;
        };
        with_id += 1;
        ids.insert(id);
        let Some(row) = committed.get(&id) else {
            phantom.insert(id);
            continue;
        };
        let Some((key, n)) = &r.payload else {
            f.malformed
                .push(format!("{}/{}: unparsable payload", r.partition, r.offset));
            continue;
        };
        if (key, n) != (&row.0, &row.1) || r.record_key.as_deref() != Some(key.as_str()) {
            f.malformed.push(format!(
                "{}/{}: id {id} committed as {}:{} but read as key {:?} payload {key}:{n}",
                r.partition, r.offset, row.0, row.1, r.record_key
            ));
            continue;
        }
        per_key
            .entry(key.clone())
            .or_default()
            .push((r.partition, *n));
    }
    f.distinct = ids.len();
    f.duplicates = with_id - f.distinct;
    let mut lost: Vec<Uuid> = committed
        .keys()
        .filter(|id| !ids.contains(id))
        .copied()
        .collect();
    lost.sort_unstable();
    f.lost = lost;
    let mut phantom: Vec<Uuid> = phantom.into_iter().collect();
    phantom.sort_unstable();
    f.phantom = phantom;
    for (key, sequence) in per_key {
        let partitions: HashSet<i32> = sequence.iter().map(|(p, _)| *p).collect();
        let ns: Vec<i64> = sequence.iter().map(|(_, n)| *n).collect();
        if partitions.len() > 1 {
            f.order_violations.push(BadKey {
                key: key.clone(),
                why: format!("on {} partitions", partitions.len()),
                sequence: sequence.clone(),
            });
        } else if !first_occurrences_ok(&ns) {
            f.order_violations.push(BadKey {
                key: key.clone(),
                why: "first occurrences out of order".into(),
                sequence: sequence.clone(),
            });
        }
        if !last_occurrences_ok(&ns) {
            f.stale_tails.push(BadKey {
                key,
                why: "last occurrences out of order (stale tail)".into(),
                sequence,
            });
        }
    }
    f
}

/// A key's sequence for the report: `p3: 1 2 3 2 3 4`, or with partition
/// changes marked; long sequences are cut around the first problem.
pub fn render(bad: &BadKey) -> String {
    let mut out = format!("{} ({}):", bad.key, bad.why);
    let mut partition = None;
    let shown = bad.sequence.len().min(80);
    for &(p, n) in &bad.sequence[..shown] {
        if partition != Some(p) {
            out.push_str(&format!(" [p{p}]"));
            partition = Some(p);
        }
        out.push_str(&format!(" {n}"));
    }
    if shown < bad.sequence.len() {
        out.push_str(&format!(" … ({} more)", bad.sequence.len() - shown));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_occurrences() {
        assert!(first_occurrences_ok(&[1, 2, 3, 2, 3, 4]));
        assert!(first_occurrences_ok(&[1, 2, 3, 4, 2]));
        assert!(first_occurrences_ok(&[]));
        assert!(first_occurrences_ok(&[1, 1, 1, 2]));
        assert!(!first_occurrences_ok(&[1, 3, 2]));
        assert!(!first_occurrences_ok(&[2, 1]));
    }

    #[test]
    fn last_occurrences() {
        assert!(last_occurrences_ok(&[1, 2, 3, 4, 3, 4, 5]));
        assert!(last_occurrences_ok(&[1, 2, 3, 2, 3, 4]));
        assert!(last_occurrences_ok(&[1, 2, 3]));
        assert!(!last_occurrences_ok(&[1, 2, 3, 4, 2]));
        assert!(!last_occurrences_ok(&[1, 3, 2]));
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_payload(b"key-7:12"), Some(("key-7".into(), 12)));
        assert_eq!(parse_payload(b"key-7"), None);
        assert_eq!(parse_payload(b"key-7:x"), None);
    }

    fn record(partition: i32, offset: i64, id: Uuid, key: &str, n: i64) -> Seen {
        Seen {
            partition,
            offset,
            record_key: Some(key.into()),
            id: Some(id),
            payload: Some((key.into(), n)),
        }
    }

    #[test]
    fn whole_check_on_a_synthetic_topic() {
        // key-a: 1 2 3 | 2 3 4 (a re-sent run: duplicates, fine)
        // key-b: 1 3 2 (order violation, and a stale tail)
        // key-c: 1 2 3 4 2 (stale tail only)
        // key-d: on two partitions
        // key-e: 1 committed and lost; a rolled-back id read (phantom)
        let mut committed = Committed::new();
        let mut ids: HashMap<(String, i64), Uuid> = HashMap::new();
        for (key, max) in [
            ("key-a", 4),
            ("key-b", 3),
            ("key-c", 4),
            ("key-d", 2),
            ("key-e", 1),
        ] {
            for n in 1..=max {
                let id = Uuid::now_v7();
                committed.insert(id, (key.to_owned(), n));
                ids.insert((key.to_owned(), n), id);
            }
        }
        let id = |k: &str, n: i64| ids[&(k.to_owned(), n)];
        let mut seen = Vec::new();
        let mut offset = 0;
        let mut push = |p: i32, k: &str, n: i64, seen: &mut Vec<Seen>| {
            seen.push(record(p, offset, id(k, n), k, n));
            offset += 1;
        };
        for n in [1, 2, 3, 2, 3, 4] {
            push(0, "key-a", n, &mut seen);
        }
        for n in [1, 3, 2] {
            push(1, "key-b", n, &mut seen);
        }
        for n in [1, 2, 3, 4, 2] {
            push(2, "key-c", n, &mut seen);
        }
        push(3, "key-d", 1, &mut seen);
        push(4, "key-d", 2, &mut seen);
        let ghost = Uuid::now_v7();
        seen.push(record(5, 0, ghost, "key-e", 1));
        // Out of order in the input: check sorts by partition and offset.
        seen.reverse();

        let f = check(&seen, &committed);
        assert_eq!(f.lost, vec![id("key-e", 1)]);
        assert_eq!(f.phantom, vec![ghost]);
        assert_eq!(f.records, 17);
        assert_eq!(f.duplicates, 3, "two of key-a, one of key-c");
        let violations: Vec<&str> = f.order_violations.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(violations, vec!["key-b", "key-d"]);
        let stale: Vec<&str> = f.stale_tails.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(stale, vec!["key-b", "key-c"]);
        assert!(f.malformed.is_empty(), "{:?}", f.malformed);
        assert_eq!(
            render(&f.order_violations[1]),
            "key-d (on 2 partitions): [p3] 1 [p4] 2"
        );
    }

    #[test]
    fn mismatched_payload_is_malformed() {
        let id = Uuid::now_v7();
        let committed = Committed::from([(id, ("key-a".to_owned(), 1))]);
        let f = check(&[record(0, 0, id, "key-a", 2)], &committed);
        assert_eq!(f.malformed.len(), 1);
        assert!(f.lost.is_empty());
    }
}
