//! The docs' Rust examples that use only this crate, compiled as doc
//! tests so they cannot rot. The README is compiled with the relay's doc
//! tests, since it also shows the relay's in-process API.

#[doc = include_str!("../../docs/library.md")]
pub struct LibraryDoctests;
