//! `levee chaos proxy` over real sockets on loopback: Toxiproxy's API
//! contract (`api.rs`), each toxic's effect on real connections in front
//! of an echo server (`toxics.rs`), and a published Toxiproxy client
//! driving it (`client.rs`).

#![allow(clippy::unwrap_used)]

mod api;
mod client;
mod support;
mod toxics;
