//! The backend's h2c (prior knowledge) side, on hyper: HTTP/2 framing is too
//! intricate to hand-write for a test origin, so its faults are stream-level
//! approximations (see the module docs of [`super`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::serving::{
    Action, HANG_LIMIT, IO_DEADLINE, InFlight, MID_BODY_PROMISED, MID_BODY_SENT, Page, Plan, Shared,
    bodiless, default_body, pattern_piece,
};
use crate::ledger::{Draft, header};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Pause between `CloseMidBody`'s partial body and the stream reset.
const MID_BODY_PAUSE: Duration = Duration::from_millis(50);

/// Serves one connection until the client closes it or the backend is killed.
pub(super) async fn serve(stream: TcpStream, shared: Arc<Shared>, kill: CancellationToken) {
    // hyper owns the stream, so keep a second descriptor of the same socket
    // to arm SO_LINGER 0 on a kill: the close of the last descriptor (this
    // one, dropped after hyper's) then sends RST.
    let socket = socket2::SockRef::from(&stream).try_clone();
    let service_kill = kill.clone();
    let service = service_fn(move |req| handle(Arc::clone(&shared), service_kill.clone(), req));
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        () = kill.cancelled() => {
            if let Ok(socket) = &socket {
                let _ = socket.set_linger(Some(Duration::ZERO));
            }
        }
    }
}

fn fields(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn response(status: u16, headers: &[(&'static str, String)], body: ResponseBody) -> Response<ResponseBody> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    // Only an unencodable status or echoed header value can fail here.
    builder.body(body).unwrap_or_else(|e| {
        let mut r = Response::new(full(format!("testkit: cannot build response: {e}\n")));
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

fn text(status: u16, common: &[(&'static str, String)], text: &str) -> Response<ResponseBody> {
    let mut headers = common.to_vec();
    headers.push(("content-type", "text/plain".to_owned()));
    response(status, &headers, full(format!("{text}\n")))
}

async fn handle(
    shared: Arc<Shared>,
    kill: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, BoxError> {
    let in_flight = InFlight::enter(&shared);
    let (parts, mut body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let received = fields(&parts.headers);
    let mut headers = Vec::with_capacity(received.len() + 1);
    if let Some(authority) = parts.uri.authority() {
        headers.push((":authority".to_owned(), authority.to_string()));
    }
    headers.extend(received.iter().cloned());
    let mut draft = Draft::new(
        &shared.ledger,
        &shared.name,
        method.clone(),
        target.clone(),
        "HTTP/2.0".to_owned(),
        headers,
    );
    let mut common = vec![
        ("x-backend", shared.name.clone()),
        ("x-testkit-seq", draft.seq().to_string()),
    ];
    if let Some(id) = header(&received, "x-request-id") {
        common.push(("x-request-id", id.to_owned()));
    }

    let scripted = Plan::for_request(&shared, &received)
        .and_then(|plan| Page::of(&method, &target).map(|page| (plan, page)));
    let (plan, page) = match scripted {
        Ok(scripted) => scripted,
        Err(why) => return Ok(text(400, &common, &why)),
    };
    if plan.action == Action::Reset {
        if body.is_end_stream() {
            draft.finish();
        }
        return Err("testkit: scripted reset".into());
    }
    if page == Page::Echo && plan.action == Action::Respond && !bodiless(plan.status) {
        tokio::time::sleep(plan.delay).await;
        common.push(("content-type", "application/octet-stream".to_owned()));
        let echo = EchoBody {
            incoming: body,
            draft: Some(draft),
            idle: Box::pin(tokio::time::sleep(IO_DEADLINE)),
            _in_flight: in_flight,
        };
        return Ok(response(plan.status, &common, echo.boxed_unsync()));
    }

    loop {
        let frame = match tokio::time::timeout(IO_DEADLINE, body.frame()).await {
            Err(_) => return Err("testkit: request body deadline expired".into()),
            Ok(None) => break,
            Ok(Some(frame)) => frame?,
        };
        match frame.into_data() {
            Ok(data) => draft.body(&data),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    draft.trailers(fields(&trailers));
                }
            }
        }
    }
    let (body_len, body_sha256) = draft.finish();
    common.push(("x-body-len", body_len.to_string()));
    common.push(("x-body-sha256", body_sha256));

    match plan.action {
        Action::Reset => Err("testkit: scripted reset".into()),
        Action::Hang => {
            tokio::select! {
                () = tokio::time::sleep(HANG_LIMIT) => {}
                () = kill.cancelled() => {}
            }
            Err("testkit: hang ended".into())
        }
        Action::Raw(_) => Ok(text(
            501,
            &common,
            "testkit: raw responses are not supported over HTTP/2",
        )),
        Action::CloseMidBody => {
            common.push(("content-type", "application/octet-stream".to_owned()));
            common.push(("content-length", MID_BODY_PROMISED.to_string()));
            let broken = BrokenBody {
                sent: false,
                pause: Box::pin(tokio::time::sleep(MID_BODY_PAUSE)),
            };
            Ok(response(200, &common, broken.boxed_unsync()))
        }
        Action::Respond => {
            tokio::time::sleep(plan.delay).await;
            let status = plan.status;
            if bodiless(status) {
                return Ok(response(status, &common, empty()));
            }
            let (content_type, body) = match page {
                Page::Bytes { len, .. } => (
                    "application/octet-stream",
                    PatternBody { left: len }.boxed_unsync(),
                ),
                Page::Healthz => ("text/plain", full(Bytes::from_static(b"ok\n"))),
                Page::Default | Page::Echo => ("text/plain", full(default_body(&shared, &method, &target))),
            };
            common.push(("content-type", content_type.to_owned()));
            let body = if method == "HEAD" { empty() } else { body };
            Ok(response(status, &common, body))
        }
    }
}

/// `/bytes/<n>` over HTTP/2: 64 KiB pieces, generated on demand.
struct PatternBody {
    left: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let piece = pattern_piece(self.left);
        self.left -= piece.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// `/echo` over HTTP/2: passes request frames (data and trailers) straight
/// back, hashing the data, and records the arrival when the request ends
/// (or, through the draft's drop, as incomplete if it never does).
struct EchoBody {
    incoming: Incoming,
    draft: Option<Draft>,
    /// Idle deadline: a request body that stalls this long fails the stream.
    idle: Pin<Box<Sleep>>,
    _in_flight: InFlight,
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.as_mut().reset(Instant::now() + IO_DEADLINE);
                if let Some(draft) = this.draft.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        draft.body(data);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        draft.trailers(fields(trailers));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                if let Some(draft) = this.draft.take() {
                    draft.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err("testkit: request body idle deadline expired".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// `CloseMidBody` over HTTP/2: a few bytes, a pause, then an error, which
/// hyper turns into a stream reset.
struct BrokenBody {
    sent: bool,
    pause: Pin<Box<Sleep>>,
}

impl Body for BrokenBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(pattern_piece(MID_BODY_SENT as u64)))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err("testkit: scripted close mid-body".into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}
