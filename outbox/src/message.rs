use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};

/// A message's id: a UUIDv7, so ids sort by creation time. The relay sends
/// it in the `outbox-id` header; consumers de-duplicate on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        MessageId(Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Uuid> for MessageId {
    fn from(id: Uuid) -> Self {
        MessageId(id)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;

    /// Parses the text form the relay sends in the `outbox-id` header.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

impl From<MessageId> for Uuid {
    fn from(id: MessageId) -> Uuid {
        id.0
    }
}

/// A message to publish, built before it is enqueued.
///
/// The key is both the Kafka record key and the ordering key: messages with
/// the same key are published in the order they were enqueued. Without a
/// key there is no ordering promise.
///
/// ```
/// use std::time::Duration;
/// let m = outbox::Message::new("orders", r#"{"id":42}"#)
///     .key("order-42")
///     .message_type("OrderPlaced")
///     .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
///     .delay(Duration::from_secs(5));
/// assert_eq!(m.topic(), "orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) message_type: Option<String>,
    pub(crate) delay: Duration,
    pub(crate) confirm_within: Option<Duration>,
}

impl Message {
    /// A message carrying raw bytes.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: topic.into(),
            key: None,
            payload: Some(payload.into()),
            headers: Vec::new(),
            message_type: None,
            delay: Duration::ZERO,
            confirm_within: None,
        }
    }

    /// A message carrying `value` serialised as JSON, with a
    /// `content-type: application/json` header.
    ///
    /// Fails with [`Error::Serialize`] when serde cannot serialise `value`.
    pub fn json<T: Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value).map_err(Error::Serialize)?;
        Ok(Message::new(topic, payload).header("content-type", "application/json"))
    }

    /// A tombstone: a record with this key and no value, which deletes the
    /// key from a compacted topic.
    pub fn tombstone(topic: impl Into<String>, key: impl Into<Vec<u8>>) -> Self {
        Message {
            payload: None,
            ..Message::new(topic, Vec::new()).key(key)
        }
    }

    /// Sets the record key, which is also the ordering key (an aggregate
    /// id, say). Default: none.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a Kafka header. Names starting with `outbox-` are reserved.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the message type, sent in the `outbox-type` header. Default: none.
    pub fn message_type(mut self, message_type: impl Into<String>) -> Self {
        self.message_type = Some(message_type.into());
        self
    }

    /// Publishes no earlier than `delay` after the transaction's start (the
    /// database clock). Later messages with the same key wait for this one.
    /// Default: zero.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Asks for end-to-end confirmation: once published, the message waits
    /// in the `awaiting` state until [`confirm`](crate::confirm) is called
    /// with its id (when the consumer's reply arrives); if that has not
    /// happened within `timeout`, the relay's sweeper publishes it again
    /// (consumers de-duplicate, so this is safe). Default: no confirmation;
    /// the message is done once the broker acknowledged it.
    pub fn confirm_within(mut self, timeout: Duration) -> Self {
        self.confirm_within = Some(timeout);
        self
    }

    /// The destination topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The record key, if any.
    pub fn key_bytes(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The payload; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }
}
