//! Telling connections to finish, cheaply.
//!
//! Every keep-alive connection waits on "the server is draining" between
//! requests. A shared `Notify` (or `CancellationToken`) takes a lock on
//! every poll of that wait, which is every request; here a connection
//! registers its task's waker once, for its whole life, and each later
//! check is one atomic load. Starting the drain wakes every registered
//! connection.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use levee_core::sync::lock;

#[derive(Default)]
pub(crate) struct Drain {
    started: AtomicBool,
    next_id: AtomicU64,
    waiters: Mutex<HashMap<u64, Waker>>,
}

impl Drain {
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Starts draining and wakes every connection waiting on it.
    pub fn start(&self) {
        self.started.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// A future that completes once draining starts. Keep it for the life
    /// of the connection: its first pending poll registers the waker, the
    /// following ones only load a flag.
    pub fn watch(&self) -> Watch<'_> {
        Watch {
            drain: self,
            id: None,
        }
    }
}

pub(crate) struct Watch<'a> {
    drain: &'a Drain,
    id: Option<u64>,
}

impl Future for Watch<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_started() {
            return Poll::Ready(());
        }
        if self.id.is_none() {
            // A task's waker stays the same across its polls, so one
            // registration serves every later wait of this connection.
            let mut waiters = lock(&self.drain.waiters);
            // Checked again under the lock: `start` may have run between.
            if self.drain.is_started() {
                return Poll::Ready(());
            }
            let id = self.drain.next_id.fetch_add(1, Ordering::Relaxed);
            waiters.insert(id, cx.waker().clone());
            self.id = Some(id);
        }
        Poll::Pending
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.drain.waiters).remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_wake_when_draining_starts() {
        let drain = std::sync::Arc::new(Drain::default());
        let d = drain.clone();
        let waiting = tokio::spawn(async move { d.watch().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drain.start();
        waiting.await.expect("woken");
        // Once started, a new watch completes at once.
        drain.watch().await;
    }

    #[tokio::test]
    async fn dropped_watchers_unregister() {
        let drain = Drain::default();
        {
            let mut w = std::pin::pin!(drain.watch());
            let waker = futures_waker();
            assert!(w.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
            assert_eq!(lock(&drain.waiters).len(), 1);
        }
        assert_eq!(lock(&drain.waiters).len(), 0);
    }

    fn futures_waker() -> Waker {
        Waker::noop().clone()
    }
}
