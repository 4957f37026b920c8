//! The levee binary's library half: wiring the pieces into a running
//! [`App`], the reload loop, and the demo. `main.rs` only parses the
//! command line, owns the runtime and turns outcomes into exit codes;
//! tests start the same [`App`] in-process.

pub mod app;
pub mod chaos;
mod client;
pub mod demo;
mod reload;

pub use app::{App, ConfigSource, StartError};
