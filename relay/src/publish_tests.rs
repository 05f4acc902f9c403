//! Unit tests of sending: holding keys, classifying errors.

use super::*;

/// A pending message for unit tests.
pub(crate) fn pending(seq: i64, key: &str, topic: &str, attempts: i32) -> PendingMessage {
    PendingMessage {
        seq,
        id: outbox::MessageId::new(),
        topic: topic.into(),
        key: Some(key.as_bytes().to_vec()),
        payload: Some(vec![]),
        header_names: vec![],
        header_values: vec![],
        message_type: None,
        created_at: chrono::Utc::now(),
        attempts,
    }
}

fn msg(key: &str, topic: &str) -> PendingMessage {
    pending(1, key, topic, 0)
}

#[test]
fn a_key_in_flight_to_one_topic_waits_before_another() {
    let mut k = KeyTopics::default();
    let first = [msg("a", "t1"), msg("a", "t1"), msg("b", "t2")];
    for m in &first {
        assert!(k.may_send(m.key.as_deref().unwrap(), &m.topic));
        k.add(m.key.as_deref().unwrap(), &m.topic);
    }
    assert!(
        k.may_send(b"a", "t1"),
        "same topic: same partition, in order"
    );
    assert!(
        !k.may_send(b"a", "t2"),
        "another topic while t1 is in flight"
    );
    assert!(k.may_send(b"c", "t2"));
    // One of a's two messages acknowledged: still in flight.
    k.release(&first, &[0]);
    assert!(!k.may_send(b"a", "t2"));
    k.release(&first, &[1, 2]);
    assert!(k.may_send(b"a", "t2"), "all acknowledged");
    assert!(k.is_empty());
}

#[tokio::test]
async fn send_batch_holds_a_key_for_a_second_topic_until_the_first_is_acknowledged() {
    // Nothing listens here: records are only queued, never delivered,
    // so the first batch stays in flight.
    let mut config = crate::config::RelayConfig::new("postgres://localhost/db");
    config.brokers = "127.0.0.1:1".into();
    let publisher = Publisher::new(&config).unwrap();
    let mut in_flight = KeyTopics::default();

    let first = [pending(1, "a", "t1", 0)];
    let sending = publisher.send_batch(&first, &mut in_flight).await;
    assert_eq!(sending.sent(), vec![0]);

    let second = [
        pending(2, "a", "t2", 0),
        pending(3, "b", "t2", 0),
        pending(4, "a", "t1", 0),
    ];
    let next = publisher.send_batch(&second, &mut in_flight).await;
    // a→t2 is held, and so is a's later message (back to t1): it must
    // not overtake the held one. b goes out.
    assert_eq!(next.sent(), vec![1]);
    assert_eq!(next.unsent().collect::<Vec<_>>(), vec![0, 2]);

    in_flight.release(&first, &[0]);
    assert!(in_flight.may_send(b"a", "t2"), "a's first message settled");
}

#[test]
fn classifies_errors() {
    let p = |c| is_permanent(&KafkaError::MessageProduction(c));
    assert!(p(RDKafkaErrorCode::MessageSizeTooLarge));
    assert!(p(RDKafkaErrorCode::UnknownTopicOrPartition));
    assert!(p(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert!(!p(RDKafkaErrorCode::MessageTimedOut));
    assert!(!p(RDKafkaErrorCode::AllBrokersDown));
    assert!(!p(RDKafkaErrorCode::NotLeaderForPartition));
    let broken = |c| is_producer_broken(&KafkaError::MessageProduction(c));
    assert!(broken(RDKafkaErrorCode::ProducerFenced));
    assert!(broken(RDKafkaErrorCode::InvalidProducerEpoch));
    assert!(broken(RDKafkaErrorCode::OutOfOrderSequenceNumber));
    assert!(!broken(RDKafkaErrorCode::MessageTimedOut));
    assert!(!broken(RDKafkaErrorCode::MessageSizeTooLarge));
    assert_eq!(
        failed(&KafkaError::MessageProduction(
            RDKafkaErrorCode::ProducerFenced
        )),
        Outcome::ProducerBroken {
            error: KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced).to_string()
        }
    );
}

#[test]
fn a_delivery_without_an_offset_is_sent_again() {
    assert_eq!(delivered(0, true), Outcome::Published);
    assert_eq!(delivered(41, true), Outcome::Published);
    assert!(
        matches!(
            delivered(-1001, true),
            Outcome::Failed { permanent: false, ref error } if error.contains("-1001")
        ),
        "{:?}",
        delivered(-1001, true)
    );
    // acks=0: the broker never answers with an offset.
    assert_eq!(delivered(-1001, false), Outcome::Published);
}

/// Two batches in flight at once against librdkafka's mock cluster: every
/// message gets its own outcome, in batch order, whichever batch its report
/// arrives for; a record librdkafka refuses at once, one it rejects after
/// sending, and a held one each keep their place.
#[tokio::test]
async fn each_report_reaches_its_own_message_across_batches() {
    use outbox_testkit::{MockBroker, MockOp};
    use rdkafka::types::RDKafkaRespErr;

    let mock = MockBroker::start(1, &[("t", 3), ("u", 1)]).unwrap();
    let mut config = crate::config::RelayConfig::new("postgres://localhost/db");
    config.brokers = mock.bootstrap().into();
    // Small enough that one record below is refused before it is sent.
    config
        .kafka
        .push(("message.max.bytes".into(), "2000".into()));
    let publisher = Publisher::new(&config).unwrap();
    publisher
        .check_broker(Duration::from_secs(10))
        .await
        .unwrap();
    let mut in_flight = KeyTopics::default();

    let mut big = pending(2, "b", "t", 0);
    big.payload = Some(vec![0; 5000]);
    let first = [
        pending(1, "a", "t", 0),
        big,
        pending(3, "b", "t", 0),
        pending(4, "c", "t", 0),
    ];
    let second = [pending(5, "a", "t", 0), pending(6, "d", "t", 0)];
    let one = publisher.send_batch(&first, &mut in_flight).await;
    let two = publisher.send_batch(&second, &mut in_flight).await;
    // The second batch's reports may well come first.
    let two = two.outcomes().await;
    let one = one.outcomes().await;
    assert_eq!(one[0], Outcome::Published);
    assert!(
        matches!(
            &one[1],
            Outcome::Failed {
                permanent: true,
                ..
            }
        ),
        "{:?}",
        one[1]
    );
    assert_eq!(
        one[2],
        Outcome::Held,
        "b's later message waits for the failed one"
    );
    assert_eq!(one[3], Outcome::Published);
    assert_eq!(two, vec![Outcome::Published, Outcome::Published]);

    // A rejection the broker sends back reaches the message it was for.
    mock.apply(MockOp::ProduceErrors(vec![
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD,
    ]))
    .unwrap();
    let third = [pending(7, "e", "u", 0)];
    let three = publisher.send_batch(&third, &mut in_flight).await;
    let three = three.outcomes().await;
    assert!(
        matches!(&three[0], Outcome::Failed { error, permanent: true } if error.contains("InvalidRecord")),
        "{:?}",
        three[0]
    );
}
