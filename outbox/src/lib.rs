//! # outbox
//!
//! The transactional outbox for PostgreSQL and Kafka. A service writes its
//! business rows and the messages it owes other services in **one local
//! transaction**; the `outbox-relay` daemon publishes them to Kafka and
//! marks them published once the broker acknowledged them; a scheduled
//! sweeper keeps the table healthy; consumers de-duplicate on the message
//! id, so every effect happens once.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::{Message, Outbox};
//!
//! outbox::migrate(&pool).await?; // once, at start-up
//! let outbox = Outbox::new();
//!
//! // 1. Local transaction: the order and the message commit together.
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id, status) VALUES ($1, 'PENDING')")
//!     .bind(42_i64)
//!     .execute(&mut *tx)
//!     .await?;
//! let id = outbox
//!     .enqueue(
//!         &mut *tx,
//!         Message::json("orders", &serde_json::json!({"order": 42, "sku": "A1", "qty": 2}))?
//!             .key("order-42")
//!             .message_type("OrderPlaced"),
//!     )
//!     .await?;
//! tx.commit().await?;
//! // 2-4. outbox-relay publishes it with `outbox-id: {id}`, marks it
//! // published, and retries whatever is unfinished.
//! # let _ = id; Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod enqueue;
mod error;
mod inbox;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
mod limits;
mod message;
mod migrate;
pub mod schema;

pub use enqueue::Outbox;
pub use error::{Error, Result};
pub use inbox::{confirm, Inbox};
pub use limits::Limits;
pub use message::{Message, MessageId};
pub use migrate::{check_schema, migrate};

/// Header names the relay sets on every record.
pub mod headers {
    /// The message id (UUIDv7, text). Consumers de-duplicate on it.
    pub const ID: &str = "outbox-id";
    /// The message type, when one was given.
    pub const TYPE: &str = "outbox-type";
    /// When the message was enqueued (RFC 3339, UTC).
    pub const CREATED_AT: &str = "outbox-created-at";
    /// Header names starting with this prefix are the relay's (the three
    /// above) and are refused from applications.
    pub const RESERVED_PREFIX: &str = "outbox-";
}

// Compile the docs' examples that use only this crate as doc tests, so
// they cannot rot (the README's compile with the relay's).
#[cfg(doctest)]
mod doctests;
