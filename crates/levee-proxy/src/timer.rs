//! A deadline timer that is cheap to move later.
//!
//! A keep-alive connection waits under a new deadline for every request,
//! and each deadline is later than the one before. Registering a fresh
//! timer each time costs two trips through tokio's timer wheel per
//! request; this timer is re-armed only when it would otherwise fire late,
//! and when it fires early (at an older deadline) it simply re-arms. In
//! steady state the wheel is touched about once per timeout period.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

pub(crate) struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
}

impl LazyTimer {
    pub fn new() -> LazyTimer {
        // Not registered with the wheel until first polled.
        LazyTimer {
            sleep: Box::pin(tokio::time::sleep_until(
                Instant::now() + Duration::from_secs(86_400),
            )),
        }
    }

    /// Completes once `deadline` has passed.
    pub async fn until(&mut self, deadline: Instant) {
        std::future::poll_fn(|cx| self.poll_until(deadline, cx)).await;
    }

    /// Ready once `deadline` has passed.
    pub fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.sleep.deadline() > deadline {
                self.sleep.as_mut().reset(deadline);
            }
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_latest_deadline_not_an_earlier_one() {
        let start = Instant::now();
        let mut t = LazyTimer::new();
        // An early deadline arms the timer...
        let early = start + Duration::from_secs(1);
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(t.poll_until(early, cx)))
                .await
                .is_pending()
        );
        // ...a later one leaves it armed early; it fires, sees it is early, re-arms.
        let late = start + Duration::from_secs(5);
        std::future::poll_fn(|cx| t.poll_until(late, cx)).await;
        assert_eq!(Instant::now(), late);
        // An earlier deadline than the armed one takes effect.
        let sooner = Instant::now() + Duration::from_secs(2);
        std::future::poll_fn(|cx| t.poll_until(sooner, cx)).await;
        assert_eq!(Instant::now(), sooner);
    }
}
