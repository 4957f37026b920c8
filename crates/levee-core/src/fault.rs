//! Injected faults, decided without I/O: a route's `[route.fault]` (or
//! what the admin API set in its place) and, when the route honours them,
//! the fault headers of a trusted client, turned into what this one request
//! suffers: a delay before it is forwarded, an abort instead of forwarding
//! it, and a cap on the rate its response body is sent at.
//!
//! Each fault applies to a share of requests, drawn independently; the
//! caller passes the draws, so a test (or a seeded chaos run) decides them.

use std::time::Duration;

/// The request header that asks for a delay, in milliseconds.
pub const HEADER_DELAY: &str = "x-levee-fault-delay";
/// The request header that asks for an abort, with this status.
pub const HEADER_ABORT: &str = "x-levee-fault-abort";

/// The longest delay a fault header may ask for.
pub const MAX_HEADER_DELAY: Duration = Duration::from_secs(60);

/// A share of requests, in millionths, so that `0.01` percent is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Share(u32);

impl Share {
    pub const NONE: Share = Share(0);
    pub const ALL: Share = Share(1_000_000);

    /// `percent` (0 to 100) as a share; `None` outside that range.
    pub fn from_percent(percent: f64) -> Option<Share> {
        (0.0..=100.0)
            .contains(&percent)
            .then(|| Share((percent * 10_000.0).round() as u32))
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Whether a request with this `draw` (uniform in `0..1_000_000`) is in
    /// the share.
    pub fn takes(self, draw: u32) -> bool {
        draw < self.0
    }
}

/// What a route injects (`[route.fault]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    pub response_rate: Option<ResponseRate>,
    /// Whether the fault headers are honoured (from the addresses the
    /// proxy trusts for them).
    pub headers: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delay {
    pub duration: Duration,
    pub share: Share,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Abort {
    /// The HTTP status of the answer levee gives instead.
    pub status: u16,
    /// For gRPC requests: a `200` with this `grpc-status` instead.
    pub grpc_status: Option<u32>,
    pub share: Share,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResponseRate {
    /// Response body bytes a second, at most.
    pub bytes_per_second: u64,
    pub share: Share,
}

/// What a trusted client's fault headers ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asked {
    pub delay: Option<Duration>,
    pub abort: Option<u16>,
}

impl Asked {
    /// The headers' values, when valid: a delay in milliseconds (capped at
    /// [`MAX_HEADER_DELAY`]) and an abort status from 400 to 599. An
    /// invalid value asks for nothing.
    pub fn parse(delay: Option<&[u8]>, abort: Option<&[u8]>) -> Asked {
        let number = |v: &[u8]| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok();
        Asked {
            delay: delay
                .and_then(number)
                .map(|ms| Duration::from_millis(ms).min(MAX_HEADER_DELAY)),
            abort: abort
                .and_then(number)
                .filter(|s| (400..=599).contains(s))
                .map(|s| s as u16),
        }
    }
}

/// The independent draws for one request, each uniform in `0..1_000_000`.
#[derive(Clone, Copy, Debug)]
pub struct Draws {
    pub delay: u32,
    pub abort: u32,
    pub response_rate: u32,
}

impl Draws {
    /// Draws from a 64-bit and a 32-bit random number.
    pub fn from_random(a: u64, b: u32) -> Draws {
        Draws {
            delay: (a as u32) % 1_000_000,
            abort: ((a >> 32) as u32) % 1_000_000,
            response_rate: b % 1_000_000,
        }
    }
}

/// The faults one request suffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    /// The status of levee's answer instead of forwarding, and for gRPC the
    /// `grpc-status` to answer `200` with.
    pub abort: Option<(u16, Option<u32>)>,
    pub response_rate: Option<u64>,
}

impl Injected {
    pub fn any(&self) -> bool {
        self.delay.is_some() || self.abort.is_some() || self.response_rate.is_some()
    }

    /// The access log's and the metric's names of what was injected.
    pub fn kinds(&self) -> impl Iterator<Item = Kind> {
        [
            self.delay.map(|_| Kind::Delay),
            self.abort.map(|_| Kind::Abort),
            self.response_rate.map(|_| Kind::ResponseRate),
        ]
        .into_iter()
        .flatten()
    }
}

/// A kind of fault: the closed label set of the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Delay,
    Abort,
    ResponseRate,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Delay, Kind::Abort, Kind::ResponseRate];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Delay => "delay",
            Kind::Abort => "abort",
            Kind::ResponseRate => "response_rate",
        }
    }
}

impl Faults {
    /// What one request suffers, `grpc` saying it is a gRPC request.
    /// A fault header, when honoured, asks for its fault on this request
    /// whatever the share; `asked` is empty when the headers are not
    /// honoured or the client is not trusted for them.
    pub fn decide(&self, asked: Asked, draws: Draws, grpc: bool) -> Injected {
        let delay = asked.delay.or_else(|| {
            let d = self.delay?;
            d.share.takes(draws.delay).then_some(d.duration)
        });
        let abort = match asked.abort {
            Some(status) => Some((status, None)),
            None => self
                .abort
                .filter(|a| a.share.takes(draws.abort))
                .map(|a| (a.status, a.grpc_status.filter(|_| grpc))),
        };
        let response_rate = self
            .response_rate
            .filter(|r| abort.is_none() && r.share.takes(draws.response_rate))
            .map(|r| r.bytes_per_second);
        Injected {
            delay,
            abort,
            response_rate,
        }
    }
}

/// How long to wait before sending more of a response body whose first
/// `sent` bytes went out `elapsed` ago, at `bytes_per_second`: zero when
/// the body is not ahead of its rate.
pub fn pace(sent: u64, elapsed: Duration, bytes_per_second: u64) -> Duration {
    if bytes_per_second == 0 {
        return Duration::ZERO;
    }
    let due = Duration::from_secs_f64(sent as f64 / bytes_per_second as f64);
    due.saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(delay: u32, abort: u32, response_rate: u32) -> Draws {
        Draws {
            delay,
            abort,
            response_rate,
        }
    }

    fn faults() -> Faults {
        Faults {
            delay: Some(Delay {
                duration: Duration::from_millis(300),
                share: Share::from_percent(10.0).unwrap(),
            }),
            abort: Some(Abort {
                status: 503,
                grpc_status: Some(14),
                share: Share::from_percent(0.5).unwrap(),
            }),
            response_rate: Some(ResponseRate {
                bytes_per_second: 1024,
                share: Share::ALL,
            }),
            headers: true,
        }
    }

    #[test]
    fn shares_are_exact_to_a_millionth() {
        let s = Share::from_percent(0.0001).unwrap();
        assert!(s.takes(0) && !s.takes(1));
        assert!(!Share::NONE.takes(0));
        assert!(Share::ALL.takes(999_999));
        assert_eq!(Share::from_percent(100.5), None);
        assert_eq!(Share::from_percent(-1.0), None);
        assert_eq!(Share::from_percent(12.5).unwrap().percent(), 12.5);
    }

    #[test]
    fn each_fault_takes_its_share_independently() {
        let f = faults();
        let none = f.decide(Asked::default(), draws(999_999, 999_999, 999_999), false);
        assert_eq!(none.delay, None);
        assert_eq!(none.abort, None);
        let delayed = f.decide(Asked::default(), draws(99_999, 999_999, 0), false);
        assert_eq!(delayed.delay, Some(Duration::from_millis(300)));
        assert_eq!(delayed.response_rate, Some(1024));
        let aborted = f.decide(Asked::default(), draws(999_999, 4_999, 0), false);
        assert_eq!(aborted.abort, Some((503, None)), "not gRPC: the HTTP status");
        assert_eq!(
            aborted.response_rate, None,
            "an aborted request has no upstream body to slow"
        );
        let grpc = f.decide(Asked::default(), draws(999_999, 0, 0), true);
        assert_eq!(grpc.abort, Some((503, Some(14))));
        assert_eq!(grpc.kinds().map(Kind::as_str).collect::<Vec<_>>(), ["abort"]);
    }

    #[test]
    fn fault_headers_ask_whatever_the_share() {
        let f = Faults {
            delay: None,
            abort: None,
            response_rate: None,
            headers: true,
        };
        let asked = Asked::parse(Some(b"250"), Some(b"502"));
        let i = f.decide(asked, draws(999_999, 999_999, 999_999), false);
        assert_eq!(i.delay, Some(Duration::from_millis(250)));
        assert_eq!(i.abort, Some((502, None)));
        assert!(i.any());
        assert!(!f.decide(Asked::default(), draws(0, 0, 0), false).any());
    }

    #[test]
    fn fault_header_values_out_of_range_ask_nothing() {
        assert_eq!(Asked::parse(Some(b"x"), Some(b"200")), Asked::default());
        assert_eq!(Asked::parse(None, Some(b"600")), Asked::default());
        let long = Asked::parse(Some(b"999999999"), None);
        assert_eq!(long.delay, Some(MAX_HEADER_DELAY));
        assert_eq!(Asked::parse(Some(b" 5 "), Some(b"429")).abort, Some(429));
    }

    #[test]
    fn pacing_waits_only_when_ahead_of_the_rate() {
        let second = Duration::from_secs(1);
        assert_eq!(pace(1024, Duration::ZERO, 1024), second);
        assert_eq!(pace(1024, second, 1024), Duration::ZERO);
        assert_eq!(
            pace(2048, Duration::from_millis(500), 1024),
            Duration::from_millis(1500)
        );
        assert_eq!(pace(10, Duration::ZERO, 0), Duration::ZERO, "no rate, no wait");
    }
}
