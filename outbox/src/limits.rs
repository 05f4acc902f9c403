use crate::error::{Error, Result};
use crate::message::Message;

/// Default for [`Limits::max_payload_bytes`]: 1 MiB, Kafka's default
/// `message.max.bytes` neighbourhood.
const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Default for [`Limits::max_key_bytes`]: 1 KiB. Keys are indexed;
/// PostgreSQL cannot index values over about 2.7 KB at all.
const DEFAULT_MAX_KEY_BYTES: usize = 1024;
/// Default for [`Limits::max_header_value_bytes`]: 16 KiB.
const DEFAULT_MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;
/// Default for [`Limits::max_headers_bytes`]: 64 KiB, names and values of
/// all of a message's headers together.
const DEFAULT_MAX_HEADERS_BYTES: usize = 64 * 1024;

const MAX_TOPIC_LEN: usize = 249;
const MAX_HEADER_NAME_LEN: usize = 255;
const MAX_TYPE_LEN: usize = 255;

/// Size limits checked before a message is written. Every field says its
/// default; `Limits::default()` gives them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Largest key accepted, in bytes. Default 1 KiB.
    pub max_key_bytes: usize,
    /// Largest single header value, in bytes. Default 16 KiB.
    pub max_header_value_bytes: usize,
    /// Largest total of header names and values, in bytes. Default 64 KiB.
    pub max_headers_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_header_value_bytes: DEFAULT_MAX_HEADER_VALUE_BYTES,
            max_headers_bytes: DEFAULT_MAX_HEADERS_BYTES,
        }
    }
}

impl Limits {
    /// Checks a message against Kafka's rules and these limits, returning
    /// the first rule it breaks.
    pub fn check(&self, message: &Message) -> Result<()> {
        validate_topic(&message.topic)?;
        if let Some(payload) = &message.payload {
            if payload.len() > self.max_payload_bytes {
                return Err(Error::PayloadTooLarge {
                    size: payload.len(),
                    limit: self.max_payload_bytes,
                });
            }
        }
        if let Some(key) = &message.key {
            if key.len() > self.max_key_bytes {
                return Err(Error::KeyTooLarge {
                    size: key.len(),
                    limit: self.max_key_bytes,
                });
            }
        }
        if let Some(t) = &message.message_type {
            if t.is_empty() || t.len() > MAX_TYPE_LEN {
                return Err(Error::InvalidMessageType(t.clone()));
            }
        }
        let mut total = 0;
        for (name, value) in &message.headers {
            let bad = |reason: String| Error::InvalidHeader {
                name: name.clone(),
                reason: reason.into(),
            };
            if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN {
                return Err(bad(format!(
                    "names must be 1 to {MAX_HEADER_NAME_LEN} bytes"
                )));
            }
            if name
                .to_ascii_lowercase()
                .starts_with(crate::headers::RESERVED_PREFIX)
            {
                return Err(bad(format!(
                    "the {:?} prefix is reserved for headers the relay sets",
                    crate::headers::RESERVED_PREFIX
                )));
            }
            if value.len() > self.max_header_value_bytes {
                return Err(bad(format!(
                    "value of {} bytes exceeds Limits::max_header_value_bytes ({})",
                    value.len(),
                    self.max_header_value_bytes
                )));
            }
            total += name.len() + value.len();
            if total > self.max_headers_bytes {
                return Err(bad(format!(
                    "headers together exceed Limits::max_headers_bytes ({})",
                    self.max_headers_bytes
                )));
            }
        }
        Ok(())
    }
}

/// Checks a topic name against Kafka's rules: 1 to 249 characters from
/// `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub(crate) fn validate_topic(topic: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidTopic {
            topic: topic.to_owned(),
            reason,
        })
    };
    if topic.is_empty() {
        return bad("it is empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return bad("it is longer than 249 characters");
    }
    if topic == "." || topic == ".." {
        return bad("\".\" and \"..\" are not allowed");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        for ok in ["orders", "a.b_c-D9", &"x".repeat(249)] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "has space", "ünï", "a/b", &"x".repeat(250)] {
            assert!(
                matches!(validate_topic(bad), Err(Error::InvalidTopic { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn size_limits() {
        let limits = Limits {
            max_payload_bytes: 10,
            max_key_bytes: 3,
            max_header_value_bytes: 4,
            max_headers_bytes: 9,
        };
        assert!(limits
            .check(&Message::new("t", vec![0; 10]).key("abc"))
            .is_ok());
        assert!(matches!(
            limits.check(&Message::new("t", vec![0; 11])),
            Err(Error::PayloadTooLarge {
                size: 11,
                limit: 10
            })
        ));
        assert!(matches!(
            limits.check(&Message::new("t", "").key("abcd")),
            Err(Error::KeyTooLarge { size: 4, limit: 3 })
        ));
        assert!(limits
            .check(&Message::new("t", "").header("a", "12345"))
            .is_err());
        assert!(limits
            .check(
                &Message::new("t", "")
                    .header("ab", "1234")
                    .header("c", "123")
            )
            .is_err());
        assert!(limits
            .check(&Message::new("t", "").header("Outbox-Id", "x"))
            .is_err());
        assert!(limits
            .check(&Message::new("t", "").header("", "x"))
            .is_err());
        assert!(limits
            .check(&Message::new("t", "").message_type(""))
            .is_err());
    }
}
