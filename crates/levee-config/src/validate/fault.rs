//! `[route.fault]`: the faults a route injects.

use std::time::Duration;

use levee_core::fault::{Abort, Delay, Faults, ResponseRate, Share};

use super::scalar::{cidr_set, count, timeout};
use crate::error::Errors;
use crate::model::*;
use crate::raw::RawFault;

/// The fastest response rate a fault may set: beyond it, it is no fault.
const MAX_RATE: usize = 1 << 30;

pub(crate) fn fault(e: &mut Errors, path: &str, raw: RawFault, trusted: &CidrSet) -> RouteFault {
    let share = |e: &mut Errors, key: &str, raw: Option<f64>, set: bool| {
        let Some(percent) = raw else {
            return Share::ALL;
        };
        if !set {
            e.push(format!("{path}.{key}"), "has no fault to apply to");
        }
        Share::from_percent(percent).unwrap_or_else(|| {
            e.push(
                format!("{path}.{key}"),
                format!("must be between 0 and 100, got {percent}"),
            );
            Share::ALL
        })
    };
    let delay_share = share(e, "delay_percent", raw.delay_percent, raw.delay.is_some());
    let delay = (raw.delay).map(|d| Delay {
        duration: timeout(e, &format!("{path}.delay"), Some(d), Duration::from_secs(1)),
        share: delay_share,
    });
    let abort_share = share(e, "abort_percent", raw.abort_percent, raw.abort_status.is_some());
    if raw.abort_grpc_status.is_some() && raw.abort_status.is_none() {
        e.push(
            format!("{path}.abort_grpc_status"),
            "needs abort_status: the answer of requests that are not gRPC",
        );
    }
    let grpc_status = count(
        e,
        &format!("{path}.abort_grpc_status"),
        raw.abort_grpc_status,
        0,
        1,
        16,
    )
    .map(|s| s as u32)
    .filter(|_| raw.abort_grpc_status.is_some());
    let abort = raw.abort_status.and_then(|status| {
        let status = count(e, &format!("{path}.abort_status"), Some(status), 0, 400, 599)?;
        Some(Abort {
            status: status as u16,
            grpc_status,
            share: abort_share,
        })
    });
    let rate_share = share(
        e,
        "response_rate_percent",
        raw.response_rate_percent,
        raw.response_rate.is_some(),
    );
    let response_rate = raw.response_rate.and_then(|rate| {
        let rate = count(e, &format!("{path}.response_rate"), Some(rate), 0, 1, MAX_RATE)?;
        Some(ResponseRate {
            bytes_per_second: rate as u64,
            share: rate_share,
        })
    });
    let headers = raw.headers.unwrap_or(false);
    let headers_from = cidr_set(e, &format!("{path}.headers_from"), raw.headers_from);
    if headers && headers_from.is_empty() && trusted.is_empty() {
        e.push(
            format!("{path}.headers"),
            "needs headers_from or server.trusted_proxies: fault headers are honoured only from the addresses listed there",
        );
    }
    if delay.is_none() && abort.is_none() && response_rate.is_none() && !headers {
        e.push(
            path,
            "injects nothing: set delay, abort_status, response_rate or headers = true",
        );
    }
    RouteFault {
        faults: Faults {
            delay,
            abort,
            response_rate,
            headers,
        },
        headers_from: if headers_from.is_empty() {
            trusted.clone()
        } else {
            headers_from
        },
    }
}
