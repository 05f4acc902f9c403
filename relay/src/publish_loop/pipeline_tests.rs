//! Unit tests of the pipeline's bookkeeping.

use super::*;
use crate::publish_loop::tests::{failed, msg};

fn flight(seqs: &[i64], unsent_keys: &[&str], lowest_unsent: Option<i64>) -> Flight {
    Flight {
        batch: seqs.iter().map(|&s| msg(s, "k", 0)).collect(),
        sent: vec![],
        unsent_keys: unsent_keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        lowest_unsent,
        started: Instant::now(),
        reports: tokio::spawn(async { Vec::new() }),
        answer: None,
    }
}

#[tokio::test]
async fn the_fetch_leaves_out_unsettled_batches_and_stops_below_their_holds() {
    let mut pipe = Pipeline {
        flights: VecDeque::from([
            flight(&[10, 11], &["x"], Some(11)),
            flight(&[20], &[], None),
        ]),
        ..Pipeline::default()
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

#[tokio::test]
async fn a_message_acknowledged_after_an_earlier_failure_of_its_key_is_a_gap() {
    let mut pipe = Pipeline {
        flights: VecDeque::from([flight(&[30], &[], None)]),
        ..Pipeline::default()
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
