//! Test support for levee's end-to-end and wire-level tests (a dev-dependency
//! only; nothing here is on the request path).
//!
//! levee proves itself the way HAProxy's regtests and Envoy's integration
//! tests do: the real gateway over real sockets, in front of a scripted
//! origin, checking what the client saw, the exact requests the origin
//! received, and the gateway's own counters. This crate provides each piece:
//!
//! - [`backend`]: a scripted origin ([`Backend`]) that records every request
//!   it receives in a [`Ledger`], and can be told to delay, fail, reset, hang,
//!   send malformed bytes, be killed and be restarted on the same port. Its
//!   HTTP/1.1 side is hand-written on `httparse` so that it can misbehave in
//!   ways a correct HTTP library refuses to.
//! - [`ledger`]: the arrival ledger the backends write to.
//! - [`wire`]: a raw-bytes client ([`RawConn`]) for framing and smuggling
//!   tests, which reports exactly what came back, broken or not.
//! - [`h2wire`]: a raw HTTP/2 client ([`H2Conn`]) that writes exactly the
//!   frames it is given, for the HTTP/2 abuse tests, with just enough HPACK.
//! - [`client`]: a small real HTTP/1.1 and h2c client ([`Client`]) and a
//!   bounded load driver ([`load`]).
//! - [`eventually`](mod@eventually): deadline-bounded polling for conditions
//!   that settle asynchronously.
//! - [`redis`](mod@redis): a real `redis-server` process for the fleet-wide
//!   rate limit tests.
//! - [`receiver`]: webhook receivers for the alerting tests, one that
//!   records every notification and one that never answers.
//! - [`tcp`]: a raw TCP [`Echo`] server, for the byte-level fault proxy.
//! - [`browser`]: a headless Chromium driven over the DevTools protocol,
//!   for the dashboard's browser test.
//!
//! Everything binds or connects to `127.0.0.1` only, and every wait has a
//! deadline, so a broken test fails instead of hanging.

// Library code avoids `unwrap`; the crate's own tests use it freely, as a
// failed unwrap there is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod browser;
pub mod client;
pub mod eventually;
pub mod exposition;
mod framing;
pub mod h2wire;
pub mod ledger;
pub mod receiver;
pub mod redis;
pub mod tcp;
pub mod wire;

pub use backend::{Backend, BackendBuilder, Behaviour, pattern_bytes, pattern_sha256};
pub use browser::Browser;
pub use client::{Client, LoadReport, Reply, Sample, Timeline, load, open_loop};
pub use eventually::{eventually, eventually_async};
pub use exposition::metric_value;
pub use h2wire::H2Conn;
pub use ledger::{Arrival, Ledger, sha256_hex};
pub use receiver::{Blackhole, Received, Receiver};
pub use redis::RedisServer;
pub use tcp::Echo;
pub use wire::{RawConn, RawResponse};
