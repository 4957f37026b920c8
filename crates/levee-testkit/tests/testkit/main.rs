//! The testkit's own proof: its backend, raw client and HTTP client behave as
//! documented over real loopback sockets.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod backend_h1;
mod backend_h2;
mod client;

use std::time::Duration;

/// Deadline for any single read in these tests: generous, still bounded.
const WAIT: Duration = Duration::from_secs(5);
