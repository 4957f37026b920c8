//! Chaos scenarios (`levee chaos run SCENARIO.toml`): the pure core.
//! `model.rs` holds the types. The runner in the `levee` crate starts the
//! target, sends the load, applies the faults and fills a `Run`; all the
//! deciding happens here, with time passed in.

mod model;

pub use model::*;
