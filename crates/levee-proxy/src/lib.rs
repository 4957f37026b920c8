//! levee's data plane.
//!
//! The request path, in the order a request meets it:
//!
//! 1. [`server`]: a listener accepts; the connection's first bytes decide
//!    HTTP/1 (levee's strict reader) or HTTP/2 (hyper).
//! 2. [`forward`]: the request is routed ([`router`]), an endpoint is chosen
//!    by the upstream's policy (`levee_core::select`), the request is
//!    rewritten (hop-by-hop fields out, `Forwarded`/`Via`/`X-Request-Id` in)
//!    and sent on a pooled connection ([`upstream`]) under its deadlines.
//! 3. The response streams back ([`body`]); anything that failed on the way
//!    becomes levee's own response in one place ([`respond`]).
//!
//! [`Gateway`] owns the listeners and the current config [`snapshot`], and
//! swaps it atomically on reload.

mod access_log;
mod body;
mod codec;
mod completion;
mod conn;
mod drain;
pub mod events;
mod fault;
mod fields;
mod forward;
#[doc(hidden)]
pub mod fuzz;
mod gateway;
pub mod history;
mod metrics;
mod ratelimit;
mod respond;
mod response;
mod router;
mod server;
mod snapshot;
pub mod status;
mod timer;
pub mod tls;
mod upstream;

pub use access_log::AccessLogError;
pub use body::{BodyError, RequestBody};
pub use codec::proxy_v2::encode as proxy_v2_header;
pub use conn::ConnInfo;
pub use gateway::{Gateway, GatewayError, ReloadRecord};
pub use metrics::Metrics;
pub use response::ResponseBody;
