//! levee-alert end to end: the evaluator and the notifiers, on a scripted
//! fact source, delivering to real HTTP receivers on 127.0.0.1.

// The helpers unwrap as the tests do: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

mod engine;
mod grouping;
mod notifiers;
