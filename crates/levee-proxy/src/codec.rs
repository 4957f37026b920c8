//! HTTP/1.1 on the wire, both directions: the strict request-head reader
//! ([`parse`]), body decoding ([`decode`]) and head/chunk encoding
//! ([`encode`]). The client connection ([`crate::server`]) and the upstream
//! client ([`crate::upstream`]) share it, so levee reads and writes HTTP/1
//! one way on both sides.

pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod parse;
pub(crate) mod proxy_v2;
pub(crate) mod raw;
