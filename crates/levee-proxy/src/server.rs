//! Listeners and client connections.
//!
//! Each listener runs an accept loop; each accepted connection runs in its
//! own task on the gateway's [`TaskTracker`], which is how shutdown knows
//! when every connection has finished.
//!
//! A connection passes, in order: the [`gate`] (access lists and connection
//! caps, decided at accept), the PROXY protocol header when the listener
//! expects one, the TLS handshake when it terminates TLS, and then the
//! protocol choice: ALPN under TLS, otherwise the first bytes (the HTTP/2
//! connection preface means h2c, anything else is HTTP/1). Everything
//! before the first request shares the header deadline.

pub(crate) mod gate;
pub(crate) mod h1;
pub(crate) mod h2;
mod handler;
mod io;
pub(crate) mod settings;

pub(crate) use handler::Handler;
pub(crate) use settings::ListenerPolicy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use levee_core::id::ListenerName;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::gate::Gate;
use crate::codec::proxy_v2;
use crate::conn::{ClientAddr, ConnInfo};
use crate::drain::Drain;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Everything an accept loop needs, shared by its connections.
pub(crate) struct ListenerContext<H> {
    pub name: ListenerName,
    pub handler: Arc<H>,
    /// Stops this listener accepting.
    pub stop: CancellationToken,
    /// Tells this listener's connections to finish and close.
    pub draining: Arc<Drain>,
    pub tracker: TaskTracker,
    pub active: Gauge,
    pub accepted: Counter,
    /// Refusals by [`gate::Refusal`], resolved once: a flood of refused
    /// connections is exactly when counting must cost nothing.
    pub refused: [Counter; 3],
    pub h2_abuse: Arc<crate::metrics::AbuseCounters>,
    pub gate: Arc<Gate>,
}

impl<H> ListenerContext<H> {
    fn refuse(&self, why: gate::Refusal) {
        self.refused[why as usize].inc();
    }
}

/// Accepts until stopped. Accept errors never end the loop: running out of
/// file descriptors backs off and tries again rather than spinning or dying.
pub(crate) async fn accept_loop<H: Handler>(listener: TcpListener, ctx: Arc<ListenerContext<H>>) {
    let local = listener.local_addr().ok();
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                let local = local.unwrap_or(peer);
                ctx.tracker.clone().spawn(async move {
                    connection(stream, peer, local, &ctx).await;
                });
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off so in-flight work can
                // release descriptors. Warn at most once a second.
                let now = Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    last_warning = Some(now);
                }
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &ListenerContext<H>,
) {
    let accepted = Instant::now();
    let Some(policy) = ctx.handler.policy(&ctx.name) else {
        return;
    };
    // Behind a PROXY protocol balancer the peer is the balancer: the
    // client's access and per-address cap are decided once its header
    // names the client.
    let admitted = if policy.proxy_protocol {
        ctx.gate.enter(&policy)
    } else {
        ctx.gate.admit(peer.ip(), &policy)
    };
    // Held for the connection's life: dropping it gives the places back.
    let mut pass = match admitted {
        Ok(pass) => pass,
        Err(why) => {
            ctx.refuse(why);
            // A reset, not a FIN: a refused peer gets no TIME_WAIT here.
            let _ = stream.set_zero_linger();
            return;
        }
    };
    ctx.accepted.inc();
    ctx.active.inc();
    let _active = DecOnDrop(&ctx.active);
    // Responses are written whole; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let settings = &policy.settings;
    let deadline = accepted + settings.header_timeout;
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(4 * 1024);
    let mut info = ConnInfo {
        listener: ctx.name.clone(),
        peer,
        local,
        tls: policy.tls.is_some(),
        client: ClientAddr::new(peer.ip()),
    };

    if policy.proxy_protocol {
        // The header is believed only from the balancers listed; anyone
        // else could name any client address.
        if !policy.trusted.contains(peer.ip()) {
            ctx.refuse(gate::Refusal::Denied);
            return;
        }
        let source = match read_proxy_header(&mut stream, &mut buf, deadline, &ctx.draining).await {
            Some(source) => source,
            None => return,
        };
        let allowed = match source {
            Some(source) => {
                info.peer = source;
                info.client = ClientAddr::new(source.ip());
                if policy.access.permits(source.ip()) {
                    pass.attribute(source.ip(), &policy)
                } else {
                    Err(gate::Refusal::Denied)
                }
            }
            // A LOCAL connection: the (trusted) balancer itself, checking
            // levee's health; the client rules are not about it.
            None => Ok(()),
        };
        if let Err(why) = allowed {
            ctx.refuse(why);
            let _ = stream.set_zero_linger();
            return;
        }
    }

    match &policy.tls {
        None => {
            plain(stream, buf, info, &policy, ctx, deadline, accepted).await;
        }
        // Boxed, like HTTP/2 below: a TLS session and an HTTP/2 connection
        // are kilobytes each, and inline they would size every plain
        // HTTP/1 connection's task too.
        Some(acceptor) => Box::pin(tls(stream, buf, info, acceptor, &policy, ctx, deadline, accepted)).await,
    }
}

/// A TLS connection: the handshake, then HTTP/2 or HTTP/1 as ALPN chose.
#[allow(clippy::too_many_arguments)]
async fn tls<H: Handler>(
    stream: TcpStream,
    buf: BytesMut,
    info: ConnInfo,
    acceptor: &tokio_rustls::TlsAcceptor,
    policy: &ListenerPolicy,
    ctx: &ListenerContext<H>,
    deadline: Instant,
    accepted: Instant,
) {
    let settings = &policy.settings;
    // Bytes read past the PROXY header belong to the handshake.
    let io = io::Prefixed::new(buf, stream);
    let handshake = tokio::time::timeout_at(deadline, acceptor.accept(io));
    let tls = tokio::select! {
        _ = ctx.draining.watch() => return,
        r = handshake => match r {
            Ok(Ok(tls)) => tls,
            _ => return,
        },
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        h2::serve(
            ctx.handler.clone(),
            Arc::new(info),
            tls,
            settings,
            &ctx.draining,
            &ctx.tracker,
            &ctx.h2_abuse,
        )
        .await;
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(tls);
    let ending = h1::serve(
        &*ctx.handler,
        &info,
        &mut rd,
        &mut wr,
        BytesMut::with_capacity(4 * 1024),
        settings,
        &ctx.draining,
        accepted,
    )
    .await;
    if ending == h1::Ending::Reset {
        let _ = rd.unsplit(wr).get_ref().0.inner().set_zero_linger();
    }
}

/// A connection without TLS: h2c with prior knowledge, or HTTP/1.
async fn plain<H: Handler>(
    mut stream: TcpStream,
    mut buf: BytesMut,
    info: ConnInfo,
    policy: &ListenerPolicy,
    ctx: &ListenerContext<H>,
    deadline: Instant,
    accepted: Instant,
) {
    let settings = &policy.settings;
    // Read until the bytes so far are not a prefix of the h2 preface.
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
        let read = tokio::select! {
            _ = ctx.draining.watch(), if buf.is_empty() => return,
            r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed or silent past the header deadline before
            // saying anything that could be answered.
            _ => return,
        }
    }
    if buf.starts_with(H2_PREFACE) {
        let io = io::Prefixed::new(buf, stream);
        Box::pin(h2::serve(
            ctx.handler.clone(),
            Arc::new(info),
            io,
            settings,
            &ctx.draining,
            &ctx.tracker,
            &ctx.h2_abuse,
        ))
        .await;
    } else {
        let (mut rd, mut wr) = stream.split();
        let ending = h1::serve(
            &*ctx.handler,
            &info,
            &mut rd,
            &mut wr,
            buf,
            settings,
            &ctx.draining,
            accepted,
        )
        .await;
        if ending == h1::Ending::Reset {
            let _ = stream.set_zero_linger();
        }
    }
}

/// Reads the PROXY protocol v2 header into `buf` and takes it off, leaving
/// whatever followed it. `Some(source)` on success (`Some(None)` for a
/// LOCAL connection); `None` when the connection must close: a malformed
/// header, silence past the deadline, or draining.
async fn read_proxy_header<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadline: Instant,
    draining: &Drain,
) -> Option<Option<SocketAddr>> {
    loop {
        match proxy_v2::parse(buf) {
            Ok(proxy_v2::Parsed::Header { len, source }) => {
                let _ = buf.split_to(len);
                return Some(source);
            }
            Ok(proxy_v2::Parsed::Partial) => {}
            Err(e) => {
                tracing::debug!(error = %e, "refused a connection with a bad PROXY header");
                return None;
            }
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(proxy_v2::MAX_HEADER);
        }
        let read = tokio::select! {
            _ = draining.watch(), if buf.is_empty() => return None,
            r = tokio::time::timeout_at(deadline, stream.read_buf(buf)) => r,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

struct DecOnDrop<'a>(&'a Gauge);

impl Drop for DecOnDrop<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
