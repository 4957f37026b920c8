//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz), one for each
//! parser levee owns. Each reads untrusted bytes the way levee does and
//! checks what must hold for any input:
//!
//! - no panic, and every error is an answer (a refusal, a config error with
//!   its path), never a crash;
//! - the same verdict however the bytes are cut into reads. A parser whose
//!   answer depends on TCP segmentation lets a client or an origin make two
//!   readers of one stream disagree, which is how requests are smuggled.
//!
//! So each input is read twice: whole, and cut in two where its first two
//! bytes say. The unit tests replay `fuzz/seeds` and `fuzz/regressions`, so
//! `cargo test` keeps everything the fuzzers have found.

use std::net::{IpAddr, SocketAddr};
use tokio::time::Instant;

use bytes::BytesMut;
use levee_core::outcome::Rejection;

use crate::codec::decode::{Decoded, Decoder};
use crate::codec::parse::{self, Framing, HeadLimits};
use crate::codec::proxy_v2;
use crate::ratelimit::redis;
use crate::server::h2::guard::{Budgets, FrameWatch};

/// A fuzz target: untrusted bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` calls them.
pub const TARGETS: &[(&str, Target)] = &[
    ("http1_request", http1_request),
    ("http1_response", http1_response),
    ("chunked", chunked),
    ("proxy_v2", proxy_v2),
    ("resp", resp),
    ("h2_frames", h2_frames),
    ("config", config),
];

/// The input after the first two bytes, and where to cut it: the two bytes
/// as a number, modulo the input's length plus one (so anywhere, ends included).
fn cut(data: &[u8]) -> (usize, &[u8]) {
    match data {
        [a, b, input @ ..] => (
            usize::from(u16::from_be_bytes([*a, *b])) % (input.len() + 1),
            input,
        ),
        _ => (0, &[]),
    }
}

/// Whether two readings agree: the same answer, or both a refusal.
/// Accepting and refusing may not differ, nor what was accepted: that is
/// what two readers of one stream must agree on. Which refusal may differ:
/// a head malformed in more than one way is refused for whichever shows
/// first, which depends on what has arrived (400 for a bare LF in the first
/// read and 505 for the version once the line is whole; 414 for a target
/// already too long and 505 for the version after it). Comparing statuses
/// found only such heads; that a well-formed head too large gets the same
/// status either way is checked by the parser's unit tests.
fn agree<T: PartialEq, E>(whole: &Result<T, E>, split: &Result<T, E>) -> bool {
    match (whole, split) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

/// `read`'s verdicts on `input` read whole, and read in two cut at `at`
/// (the second read only when the first needs more bytes).
fn whole_and_cut<T, E>(
    input: &[u8],
    at: usize,
    read: impl Fn(&mut BytesMut) -> Result<Option<T>, E>,
) -> (Result<Option<T>, E>, Result<Option<T>, E>) {
    let whole = read(&mut BytesMut::from(input));
    let mut buf = BytesMut::from(&input[..at]);
    let split = match read(&mut buf) {
        Ok(None) => {
            buf.extend_from_slice(&input[at..]);
            read(&mut buf)
        }
        first => first,
    };
    (whole, split)
}

/// Small limits, so that inputs of a few hundred bytes reach them.
const LIMITS: HeadLimits = HeadLimits {
    max_uri: 128,
    max_head: 512,
    max_headers: 12,
};

/// What a parsed request head decided, comparable between two readings.
type RequestVerdict = Result<Option<(String, http::Version, Framing, [bool; 3], usize)>, Rejection>;

/// An HTTP/1.1 request head from a client.
pub fn http1_request(data: &[u8]) {
    let (at, input) = cut(data);
    let read = |buf: &mut BytesMut| -> RequestVerdict {
        let before = buf.len();
        let head = parse::parse_head(buf, LIMITS)?;
        Ok(head.map(|h| {
            let target = format!("{} {}", h.method, h.uri);
            let flags = [h.keep_alive, h.expect_continue, h.upgrade];
            (target, h.version, h.framing, flags, before - buf.len())
        }))
    };
    let (whole, split) = whole_and_cut(input, at, read);
    assert!(
        agree(&whole, &split),
        "a request head read whole: {whole:?}; cut at {at}: {split:?}"
    );
    if let Ok(Some((_, _, _, _, len))) = &whole {
        assert!(
            input[..*len].ends_with(b"\r\n\r\n"),
            "a head ends with an empty line"
        );
    }
}

/// An HTTP/1.x response head from an origin.
pub fn http1_response(data: &[u8]) {
    let (at, input) = cut(data);
    type Verdict = Result<Option<(u16, http::Version, bool, parse::BodyLength, usize)>, Rejection>;
    let read = |buf: &mut BytesMut| -> Verdict {
        let before = buf.len();
        let head = parse::parse_response_head(buf)?;
        Ok(head.map(|h| {
            (
                h.status.as_u16(),
                h.version,
                h.keep_alive,
                h.body,
                before - buf.len(),
            )
        }))
    };
    let (whole, split) = whole_and_cut(input, at, read);
    assert!(
        agree(&whole, &split),
        "a response head read whole: {whole:?}; cut at {at}: {split:?}"
    );
}

/// Everything a body decoder produced from some reads: the data, the
/// trailers, and how it stopped.
#[derive(Debug, Default, PartialEq)]
struct Body {
    data: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    /// `Some(true)` complete, `Some(false)` refused (for whichever reason,
    /// as in [`agree`]), `None` waiting for more.
    end: Option<bool>,
}

impl Body {
    /// Decodes what `buf` holds, until it needs more or the body ends.
    fn decode(&mut self, decoder: &mut Decoder, buf: &mut BytesMut) {
        loop {
            match decoder.decode(buf) {
                Ok(Decoded::Data(bytes)) => {
                    assert!(!bytes.is_empty(), "a data unit is never empty");
                    self.data.extend_from_slice(&bytes);
                }
                Ok(Decoded::Trailers(map)) => self.trailers.extend(
                    map.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())),
                ),
                Ok(Decoded::NeedMore) => return,
                Ok(Decoded::End) => {
                    self.end = Some(true);
                    return;
                }
                Err(_) => {
                    self.end = Some(false);
                    return;
                }
            }
        }
    }
}

/// A chunked request body.
pub fn chunked(data: &[u8]) {
    const MAX_TRAILER: usize = 256;
    let (at, input) = cut(data);
    let mut whole = Body::default();
    let mut decoder = Decoder::new(Framing::Chunked, MAX_TRAILER);
    whole.decode(&mut decoder, &mut BytesMut::from(input));
    assert_eq!(
        decoder.received(),
        whole.data.len() as u64,
        "received counts the data"
    );
    assert!(whole.data.len() <= input.len());

    let mut split = Body::default();
    let mut decoder = Decoder::new(Framing::Chunked, MAX_TRAILER);
    let mut buf = BytesMut::from(&input[..at]);
    split.decode(&mut decoder, &mut buf);
    if split.end.is_none() {
        buf.extend_from_slice(&input[at..]);
        split.decode(&mut decoder, &mut buf);
    }
    assert_eq!(whole, split, "a chunked body read whole and cut at {at}");
}

/// A PROXY protocol v2 header from a balancer.
pub fn proxy_v2(data: &[u8]) {
    let (at, input) = cut(data);
    let whole = proxy_v2::parse(input);
    let prefix = proxy_v2::parse(&input[..at]);
    match &whole {
        Ok(proxy_v2::Parsed::Header { len, source }) => {
            assert!(*len <= input.len() && *len <= proxy_v2::MAX_HEADER);
            if at < *len {
                assert_eq!(
                    prefix,
                    Ok(proxy_v2::Parsed::Partial),
                    "a header cut at {at} of {len}"
                );
            } else {
                assert_eq!(prefix, whole, "a header read whole and with {at} bytes");
            }
            // What levee believes, it can say again (as its upstream
            // connections do) and read back the same.
            if let Some(source) = source {
                let unspecified = match source.ip() {
                    IpAddr::V4(_) => IpAddr::from([0u8; 4]),
                    IpAddr::V6(_) => IpAddr::from([0u8; 16]),
                };
                let again = proxy_v2::encode(*source, SocketAddr::new(unspecified, 0));
                match proxy_v2::parse(&again) {
                    Ok(proxy_v2::Parsed::Header { source: back, .. }) => assert_eq!(back, Some(*source)),
                    other => panic!("levee's own header does not read back: {other:?}"),
                }
            }
        }
        Ok(proxy_v2::Parsed::Partial) => assert_eq!(prefix, whole, "a prefix of a partial header"),
        // A refusal is seen from some prefix on; before it, a prefix is partial.
        Err(_) => assert!(prefix == whole || prefix == Ok(proxy_v2::Parsed::Partial)),
    }
}

/// A reply from Redis (RESP2).
pub fn resp(data: &[u8]) {
    let (at, input) = cut(data);
    let read = |buf: &mut BytesMut| {
        let before = buf.len();
        redis::parse(buf).map(|reply| reply.map(|r| (r, before - buf.len())))
    };
    let (whole, split) = whole_and_cut(input, at, read);
    assert!(
        agree(&whole, &split),
        "a reply read whole: {whole:?}; cut at {at}: {split:?}"
    );
}

/// The frames an HTTP/2 client sends, as the abuse watcher counts them.
pub fn h2_frames(data: &[u8]) {
    // Budgets small enough for a short input to exceed, and a clock that
    // stands still, so the verdict depends on the bytes alone.
    const BUDGETS: Budgets = Budgets {
        resets: 4,
        control: 4,
        empty: 4,
    };
    let (at, input) = cut(data);
    let now = Instant::now();
    let mut clock = || now;

    let mut watch = FrameWatch::new(BUDGETS, now);
    let whole = watch.feed(input, &mut clock);
    let whole_stream = watch.last_stream();

    let mut watch = FrameWatch::new(BUDGETS, now);
    if let Some(first) = watch.feed(&input[..at], &mut clock) {
        assert_eq!(whole, Some(first), "frames read whole and up to {at}");
        return;
    }
    match (whole, watch.feed(&input[at..], &mut clock)) {
        (None, None) => assert_eq!(whole_stream, watch.last_stream()),
        (Some(w), Some(s)) => {
            assert_eq!(w.abuse, s.abuse, "frames read whole and cut at {at}");
            // The second feed counts from the cut, and says 0 for a frame
            // that began before it.
            if s.at == 0 {
                assert!(w.at <= at, "{w:?} read cut at {at}");
            } else {
                assert_eq!(w.at, at + s.at, "frames read whole and cut at {at}");
            }
        }
        (w, s) => panic!("frames read whole: {w:?}; cut at {at}: {s:?}"),
    }
}

/// A config file. Every refusal names where: a path such as
/// `upstream.app.connect_timeout`, or a line and column.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = levee_config::parse(text) {
        assert!(!errors.is_empty(), "a refusal says why");
        for e in errors.iter() {
            assert!(!e.path.is_empty(), "no path: {e}");
            assert!(!e.message.is_empty(), "no message at {}", e.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn files(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
        files.sort();
        files
    }

    #[test]
    fn the_seeds_and_every_input_the_fuzzers_found_still_pass() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        for (name, target) in TARGETS {
            let mut inputs = files(&fuzz.join("seeds").join(name));
            assert!(!inputs.is_empty(), "fuzz/seeds/{name} has no seed");
            inputs.extend(files(&fuzz.join("regressions").join(name)));
            for input in inputs {
                let data = std::fs::read(&input).expect("read");
                if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
                    std::panic::resume_unwind(Box::new(format!("{}: {panic:?}", input.display())));
                }
            }
        }
    }

    #[test]
    fn every_cut_of_the_seeds_agrees() {
        // The fuzzers vary the cut; here every cut of every seed is tried.
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
        for (name, target) in TARGETS.iter().filter(|(n, _)| *n != "config") {
            for seed in files(&fuzz.join(name)) {
                let data = std::fs::read(&seed).expect("read");
                let input = &data[2.min(data.len())..];
                for at in 0..=input.len() {
                    let mut cut_here = u16::try_from(at).expect("seeds are short").to_be_bytes().to_vec();
                    cut_here.extend_from_slice(input);
                    target(&cut_here);
                }
            }
        }
    }
}
