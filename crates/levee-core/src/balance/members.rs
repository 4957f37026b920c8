//! How a balancer sees the endpoints of the level it balances.

/// The balancer's view of one level's endpoints, by index within the level.
pub trait Members {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the endpoint may take a new request now.
    fn available(&self, i: usize) -> bool;
    /// Requests currently in flight to the endpoint.
    fn in_flight(&self, i: usize) -> u64;
    /// The endpoint's peak-EWMA latency in nanoseconds (0 when unmeasured);
    /// only `peak_ewma` reads it.
    fn latency(&self, i: usize) -> f64 {
        let _ = i;
        0.0
    }
}
