//! levee's chaos tools. `levee chaos proxy`: a TCP fault proxy
//! that serves Toxiproxy's HTTP API, so Toxiproxy's clients drive it
//! unchanged (docs/chaos.md).
//!
//! The toxic policies are pure (`toxic.rs`, `stage.rs`, `chain.rs`: time
//! and randomness come in as arguments); the I/O around them is thin:
//! `pipe.rs` copies one direction of a connection through its chain,
//! `proxy.rs` listens and connects, `registry.rs` keeps the proxies with
//! Toxiproxy's rules, `api.rs` is the HTTP API and `server.rs` runs it.
//!
//! `scenario` is the pure core of `levee chaos run`: the scenario file,
//! the fault schedule and load plan, the SLO verdict and the reports.

// Library code avoids `unwrap`; the crate's own tests use it freely, as a
// failed unwrap there is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod chain;
pub mod error;
pub mod pipe;
pub mod proxy;
pub mod registry;
pub mod scenario;
pub mod server;
pub mod stage;
pub mod toxic;

pub use server::{DEFAULT_API, Options, serve};
