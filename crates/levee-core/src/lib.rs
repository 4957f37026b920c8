//! levee's policies, free of I/O.
//!
//! Everything on the request path that decides rather than does lives here:
//! the names of things ([`id`]), how an endpoint is chosen among the regions
//! of an upstream ([`select`], [`balance`]), and how the outcome of a request
//! is classified ([`outcome`]) so that responses, metrics, retries
//! and health all read one verdict, who the client is and whether it may
//! come in ([`access`]), how many requests a client may send
//! ([`ratelimit`]), and how many requests an upstream may have in flight as
//! its latency changes, shedding low priorities first ([`concurrency`]),
//! and what a request's tries come to: retries, hedges, backoff and the
//! retry budget ([`attempt`]).
//! Nothing here opens a socket, spawns a task or reads a
//! clock: callers pass the time in, so every policy is tested synchronously
//! and deterministically.

pub mod access;
pub mod alert;
pub mod attempt;
pub mod balance;
pub mod calendar;
pub mod concurrency;
pub mod ewma;
pub mod failover;
pub mod fault;
pub mod hash;
pub mod health;
pub mod id;
pub mod outcome;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod select;
pub mod stats;
pub mod sync;
