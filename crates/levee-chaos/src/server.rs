//! `levee chaos proxy`'s server: the API on its listener, the proxies it
//! makes, and an orderly end.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::registry::Registry;

/// Toxiproxy's API port.
pub const DEFAULT_API: &str = "127.0.0.1:8474";

/// How long shutdown waits for API requests under way.
const DRAIN: Duration = Duration::from_secs(5);

/// How the server runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Seeds the toxicity draws, so that a run can be repeated; random
    /// when `None`.
    pub seed: Option<u64>,
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops
/// every proxy (closing their listeners and connections) and returns.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::new(options.seed, shutdown.child_token()));
    let app = api::router(Arc::clone(&registry));
    let stopping = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { stopping.cancelled().await });
    let served = tokio::select! {
        r = server => r,
        // Graceful shutdown waits for open API connections; a client that
        // keeps one idle must not hold the process.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => Ok(()),
    };
    registry.stop_all().await;
    served
}
