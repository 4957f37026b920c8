//! The API's errors, with Toxiproxy's messages and statuses: clients
//! match on the status (toxiproxy-python raises `NotFound` on 404,
//! `ProxyExists` on 409, `InvalidToxic` on 400) and show the message.

use serde::Serialize;

/// `{"error": "...", "status": N}`, Toxiproxy's error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(rename = "error")]
    pub message: String,
    pub status: u16,
}

impl ApiError {
    fn new(message: impl Into<String>, status: u16) -> ApiError {
        ApiError {
            message: message.into(),
            status,
        }
    }

    /// The body is not the JSON asked for; `why` is the parser's reason.
    pub fn bad_body(why: impl std::fmt::Display) -> ApiError {
        ApiError::new(format!("bad request body: {why}"), 400)
    }

    pub fn missing(field: &str) -> ApiError {
        ApiError::new(format!("missing required field: {field}"), 400)
    }

    /// A listen address that does not parse or resolve. Toxiproxy answers
    /// 500 for any listen failure; levee keeps 500 for a bind that fails
    /// and says 400 for an address that is not one.
    pub fn bad_address(field: &str, address: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError::new(format!("bad request body: {field} {address:?}: {why}"), 400)
    }

    pub fn proxy_not_found() -> ApiError {
        ApiError::new("proxy not found", 404)
    }

    pub fn proxy_exists() -> ApiError {
        ApiError::new("proxy already exists", 409)
    }

    pub fn invalid_stream() -> ApiError {
        ApiError::new("stream was invalid, can be either upstream or downstream", 400)
    }

    pub fn invalid_toxic_type() -> ApiError {
        ApiError::new("invalid toxic type", 400)
    }

    pub fn toxic_exists() -> ApiError {
        ApiError::new("toxic already exists", 409)
    }

    pub fn toxic_not_found() -> ApiError {
        ApiError::new("toxic not found", 404)
    }

    /// The listener could not be bound, in Go's words, as Toxiproxy says it.
    pub fn listen(address: std::net::SocketAddr, why: &std::io::Error) -> ApiError {
        ApiError::new(format!("listen tcp {address}: bind: {why}"), 500)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}
