//! The README's and the docs' Rust examples that use the relay, compiled
//! as doc tests so they cannot rot. The README lives here rather than
//! with the `outbox` crate because it also shows `outbox_relay`; every
//! crate it uses (`outbox`, `sqlx`, `serde_json`, `tokio`) is a dependency
//! of this one too.

#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[doc = include_str!("../../docs/relay.md")]
pub struct RelayDoctests;
