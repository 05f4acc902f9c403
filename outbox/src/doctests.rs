//! The docs' Rust examples that use only this crate, compiled as doc
//! tests so they cannot rot. The workspace README is compiled with the
//! relay's doc tests, since it also shows the relay's in-process API; this
//! crate's own README (its crates.io page) is compiled here.
//!
//! Only `cfg(doctest)` compiles this module, so the files it includes from
//! outside the crate (`docs/`) are not needed to build the published
//! package.

#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;

#[doc = include_str!("../../docs/library.md")]
pub struct LibraryDoctests;
