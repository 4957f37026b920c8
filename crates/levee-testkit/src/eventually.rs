//! Deadline-bounded polling, for conditions that settle asynchronously (a
//! health check flipping, a counter catching up). Tests wait for a state
//! rather than sleep for a guess.

use std::time::Duration;

use tokio::time::Instant;

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` every 20 ms until it returns true.
///
/// # Panics
/// With `what` in the message, if `f` is still false after `deadline`.
pub async fn eventually<F: FnMut() -> bool>(deadline: Duration, what: &str, mut f: F) {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// As [`eventually`], for a condition that must itself await (a request,
/// a lock). Each evaluation is bounded by what remains of the deadline.
///
/// # Panics
/// With `what` in the message, if the condition is not true by `deadline`.
pub async fn eventually_async<F, Fut>(deadline: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Ok(true) = tokio::time::timeout_at(end, f()).await {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_true() {
        let mut calls = 0;
        eventually(Duration::from_secs(1), "third call", || {
            calls += 1;
            calls >= 3
        })
        .await;
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for: never")]
    async fn panics_with_what_on_timeout() {
        eventually(Duration::from_millis(100), "never", || false).await;
    }

    #[tokio::test]
    async fn async_variant_awaits_the_condition() {
        let calls = AtomicU32::new(0);
        eventually_async(Duration::from_secs(1), "second call", || async {
            tokio::task::yield_now().await;
            calls.fetch_add(1, Ordering::Relaxed) >= 1
        })
        .await;
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
