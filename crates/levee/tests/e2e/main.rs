//! End-to-end tests: the real gateway, in-process on 127.0.0.1:0, in front
//! of real test backends, checked from the client's side, the origin's
//! ledger and levee's own metrics.

mod support;

mod access_log;
mod admin;
mod alertmanager;
mod alerts;
mod chaos;
mod cli;
mod dashboard;
mod demo;
mod errors;
mod failover;
mod faults;
mod h2abuse;
mod health;
mod metrics;
mod protection;
mod proxy;
mod ratelimit;
mod regions;
mod reload;
mod resilience;
mod shedding;
mod shutdown;
mod slowclients;
mod soak;
mod streaming;
mod strict;
