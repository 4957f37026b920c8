//! Fault injection on the request path. A route's faults come from its
//! `[route.fault]` or, in their place, from the admin API; what one request
//! suffers is decided by `levee_core::fault`, and applied by
//! `Proxy::handle` as a stage between the route's checks and admission: a
//! delay is waited out, an abort is answered at once, and a response rate
//! paces the upstream's body ([`Paced`]).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use levee_config::RouteFault;
use levee_core::fault::{Asked, Draws, HEADER_ABORT, HEADER_DELAY, Injected, pace};
use tokio::time::{Instant, Sleep};

use crate::body::BodyError;
use crate::fields::FieldsView;

const DELAY: HeaderName = HeaderName::from_static(HEADER_DELAY);
const ABORT: HeaderName = HeaderName::from_static(HEADER_ABORT);

/// A route's faults as they stand: the config's, or the admin API's in
/// their place. The API's outlive reloads, until it removes them.
pub(crate) struct FaultSwitch {
    /// Whether any faults are in force: the one load a request pays when
    /// none are.
    on: AtomicBool,
    current: ArcSwapOption<RouteFault>,
    configured: Option<Arc<RouteFault>>,
    /// The faults the API set (`Some(None)`: the API turned them off).
    api: ArcSwapOption<Option<Arc<RouteFault>>>,
}

impl FaultSwitch {
    /// The switch of a route with `configured` faults, keeping what the
    /// API set on the same route before a reload.
    pub fn new(configured: Option<RouteFault>, previous: Option<&FaultSwitch>) -> FaultSwitch {
        let switch = FaultSwitch {
            on: AtomicBool::new(false),
            current: ArcSwapOption::empty(),
            configured: configured.map(Arc::new),
            api: ArcSwapOption::empty(),
        };
        switch.set_api(previous.and_then(FaultSwitch::api_faults));
        switch
    }

    /// What the API set, if it set anything.
    pub fn api_faults(&self) -> Option<Option<Arc<RouteFault>>> {
        self.api.load_full().map(|set| (*set).clone())
    }

    /// The API's faults from now on: `Some(faults)` in place of the
    /// config's (`Some(None)` for none at all), `None` to go back to them.
    pub fn set_api(&self, set: Option<Option<Arc<RouteFault>>>) {
        let current = match &set {
            Some(from_api) => from_api.clone(),
            None => self.configured.clone(),
        };
        self.api.store(set.map(Arc::new));
        self.on.store(current.is_some(), Ordering::Release);
        self.current.store(current);
    }

    /// The faults in force, if any.
    pub fn current(&self) -> Option<Arc<RouteFault>> {
        if !self.on.load(Ordering::Acquire) {
            return None;
        }
        self.current.load_full()
    }

    /// Whether the faults in force are the API's.
    pub fn is_from_api(&self) -> bool {
        self.api.load().is_some()
    }
}

/// The faults this request suffers, when its route injects any: `peer` is
/// the address the request came from, trusted for fault headers or not.
#[inline]
pub(crate) fn injected(switch: &FaultSwitch, view: FieldsView<'_>, peer: IpAddr) -> Option<Injected> {
    if !switch.on.load(Ordering::Relaxed) {
        return None;
    }
    decide(&*switch.current()?, view, peer)
}

fn decide(fault: &RouteFault, view: FieldsView<'_>, peer: IpAddr) -> Option<Injected> {
    let asked = if fault.faults.headers && fault.headers_from.contains(peer.to_canonical()) {
        Asked::parse(view.first(&DELAY), view.first(&ABORT))
    } else {
        Asked::default()
    };
    let grpc = view
        .first(&http::header::CONTENT_TYPE)
        .is_some_and(|t| t.starts_with(b"application/grpc"));
    let draws = Draws::from_random(fastrand::u64(..), fastrand::u32(..));
    let injected = fault.faults.decide(asked, draws, grpc);
    injected.any().then_some(injected)
}

/// A response body sent no faster than `bytes_per_second`, in pieces of at
/// most a tenth of a second's worth, so that a slow rate trickles rather
/// than bursts.
pub(crate) struct Paced<B> {
    inner: B,
    bytes_per_second: u64,
    started: Option<Instant>,
    sent: u64,
    /// What of the inner body's last frame is still to go.
    held: Bytes,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<B: Body<Data = Bytes, Error = BodyError> + Unpin> Paced<B> {
    pub fn new(inner: B, bytes_per_second: u64) -> Paced<B> {
        Paced {
            inner,
            bytes_per_second: bytes_per_second.max(1),
            started: None,
            sent: 0,
            held: Bytes::new(),
            wait: None,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.inner.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let held = self.held.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(wait) = &mut self.wait {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        if self.held.is_empty() {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.held = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                other => return other,
            }
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let piece = (self.bytes_per_second / 10).max(1) as usize;
        let out = self.held.split_to(piece.min(self.held.len()));
        self.sent += out.len() as u64;
        let wait = pace(self.sent, started.elapsed(), self.bytes_per_second);
        if !wait.is_zero() {
            self.wait = Some(Box::pin(tokio::time::sleep(wait)));
        }
        Poll::Ready(Some(Ok(Frame::data(out))))
    }
}
