//! What a client connection hands its requests to: the proxy, or a test's
//! handler.

use std::future::Future;
use std::sync::Arc;

use http::Request;
use levee_core::id::ListenerName;
use levee_core::outcome::Rejection;

use super::settings::ListenerPolicy;
use crate::body::RequestBody;
use crate::codec::parse::RawRequest;
use crate::conn::ConnInfo;
use crate::response::Answer;

/// What serves requests once the connection has read them.
///
/// Answers come boxed: an answer (about 600 bytes) passes through several
/// async levels on its way to the connection, and copying it at each cost
/// more than one allocation does (callgrind: 21,179 -> 20,945 instructions
/// per proxied request, the allocation included).
pub(crate) trait Handler: Send + Sync + 'static {
    /// Serves a request. With `raw`, its fields are the lines received
    /// (and the request's own header map is empty).
    fn handle(
        &self,
        req: Request<RequestBody>,
        raw: Option<RawRequest>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Box<Answer>> + Send;

    /// The response to a request refused before it could be handled
    /// (malformed, too large, too slow).
    fn reject(&self, rejection: Rejection, conn: &ConnInfo) -> Box<Answer>;

    /// What the current config says about a listener, read once per
    /// connection; `None` once the listener is no longer configured.
    fn policy(&self, listener: &ListenerName) -> Option<Arc<ListenerPolicy>>;
}
