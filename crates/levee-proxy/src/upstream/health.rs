//! Active health checks: one task per checked endpoint probes it on a
//! schedule and publishes healthy or not for selection to read.
//!
//! The task holds only a weak reference to the endpoint's state, so it ends
//! by itself when no config snapshot uses the endpoint any more; it also
//! ends when the upstream's checks are removed (the endpoint then counts as
//! healthy) or when the gateway drains. Its [`Health`] lives in the task,
//! so an endpoint that stays across a reload keeps its state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use levee_config::{CheckKind, EndpointAddress, HealthCheck};
use levee_core::health::{Health, Thresholds, Transition, jittered};
use levee_core::outcome::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use super::{CheckResult, EndpointState};
use crate::codec::parse::parse_response_head;
use crate::events::{EventKind, Events};

/// Names for the log lines a checker writes.
#[derive(Clone, Debug)]
pub(crate) struct EndpointName {
    pub upstream: String,
    pub region: String,
    pub address: EndpointAddress,
}

/// Probes one endpoint until it leaves the config, loses its checks, or
/// `stop` fires.
pub(crate) async fn run(
    state: Weak<EndpointState>,
    name: EndpointName,
    events: Arc<Events>,
    stop: CancellationToken,
) {
    loop {
        check(&state, &name, &events, &stop).await;
        let Some(s) = state.upgrade() else { return };
        // Without checks, an endpoint takes traffic.
        s.set_healthy(true);
        s.checking.store(false, Ordering::Release);
        // A reload may have given the endpoint checks again after this task
        // saw them removed, and left them to this task because it was still
        // running: then it carries on, with a fresh history.
        if stop.is_cancelled() || s.check.load().is_none() || s.checking.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

/// The least time between two probes of one endpoint when real traffic
/// brings them forward.
const SOONEST: Duration = Duration::from_millis(50);

async fn check(state: &Weak<EndpointState>, name: &EndpointName, events: &Events, stop: &CancellationToken) {
    let mut health = Health::new();
    let Some(soon) = state.upgrade().map(|s| s.probe_soon.clone()) else {
        return;
    };
    let mut probed = tokio::time::Instant::now();
    // The first probe comes anywhere within the first interval, so a fleet
    // (or many endpoints started at once) does not probe in step.
    let mut delay = match state.upgrade().and_then(|s| s.check.load_full()) {
        Some(c) => jittered(c.interval / 2, 100, fastrand::u64(..)),
        None => Duration::ZERO,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
            () = brought_forward(&soon, probed) => {}
        }
        probed = tokio::time::Instant::now();
        let Some(s) = state.upgrade() else { break };
        let Some(check) = current(&s) else {
            break;
        };
        // Held for one probe at most (bounded by its timeout).
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = probe(&s.pool, &check) => outcome,
        };
        let _ = match &outcome {
            Ok(()) => s.metrics.check_ok.inc(),
            Err(_) => s.metrics.check_failed.inc(),
        };
        let result = match outcome {
            Ok(()) => CheckResult::Ok,
            Err(TIMED_OUT) => CheckResult::Timeout,
            Err(_) => CheckResult::Failed,
        };
        s.checked(result, tokio::time::Instant::now());
        if outcome.is_ok() && s.uneject_on_check.load(Ordering::Relaxed) && s.uneject() {
            tracing::info!(
                upstream = %name.upstream,
                region = %name.region,
                endpoint = %name.address,
                "endpoint back from ejection: an active check passed",
            );
            s.changed.load().notify_one();
            events.publish(EventKind::EndpointReturned {
                upstream: name.upstream.clone(),
                region: name.region.clone(),
                endpoint: name.address.to_string(),
            });
        }
        let thresholds = thresholds(&check);
        match health.observe(outcome.is_ok(), &thresholds) {
            Some(Transition::BecameUnhealthy) => {
                s.set_healthy(false);
                tracing::warn!(
                    upstream = %name.upstream,
                    region = %name.region,
                    endpoint = %name.address,
                    reason = outcome.err().unwrap_or("failed"),
                    "endpoint is unhealthy",
                );
                events.publish(health_event(name, false));
            }
            Some(Transition::BecameHealthy) => {
                s.set_healthy(true);
                tracing::info!(
                    upstream = %name.upstream,
                    region = %name.region,
                    endpoint = %name.address,
                    "endpoint is healthy",
                );
                events.publish(health_event(name, true));
            }
            None => {}
        }
        delay = health.next_delay(&thresholds, fastrand::u64(..));
    }
}

/// Returns when a failed try asked for an early probe, no sooner than
/// [`SOONEST`] after the last one.
async fn brought_forward(soon: &Notify, last: tokio::time::Instant) {
    soon.notified().await;
    tokio::time::sleep_until(last + SOONEST).await;
}

fn health_event(name: &EndpointName, healthy: bool) -> EventKind {
    EventKind::EndpointHealth {
        upstream: name.upstream.clone(),
        region: name.region.clone(),
        endpoint: name.address.to_string(),
        healthy,
    }
}

/// The endpoint's check settings, unless they were removed.
fn current(s: &Arc<EndpointState>) -> Option<Arc<HealthCheck>> {
    s.check.load_full()
}

fn thresholds(c: &HealthCheck) -> Thresholds {
    Thresholds {
        rise: c.rise,
        fall: c.fall,
        interval: c.interval,
        unhealthy_interval: c.unhealthy_interval,
        jitter_percent: c.jitter_percent,
    }
}

const TIMED_OUT: &str = "timed out";

/// One probe within the check's timeout. The error says why, for the log.
async fn probe(pool: &Pool, check: &HealthCheck) -> Result<(), &'static str> {
    match tokio::time::timeout(check.timeout, probe_once(pool, &check.kind)).await {
        Ok(r) => r,
        Err(_) => Err(TIMED_OUT),
    }
}

/// Over TLS when the upstream uses it, as requests do, so a check passes
/// only when a request could.
async fn probe_once(pool: &Pool, kind: &CheckKind) -> Result<(), &'static str> {
    let address = &pool.address;
    let mut stream = pool.open_stream().await.map_err(|e| match e {
        ErrorKind::TlsCertificate => "TLS certificate refused",
        ErrorKind::TlsProtocol => "TLS handshake failed",
        _ => "connection failed",
    })?;
    let CheckKind::Http { path, host, expect } = kind else {
        return Ok(());
    };
    let host = host.clone().unwrap_or_else(|| address.to_string());
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: levee-health-check\r\nconnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|_| "write failed")?;
    let mut buf = bytes::BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await.map_err(|_| "read failed")? == 0 {
            return Err("closed before a response");
        }
        match parse_response_head(&mut buf) {
            Ok(Some(head)) => {
                let status = head.status.as_u16();
                return if expect.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)) {
                    Ok(())
                } else {
                    Err("unexpected status")
                };
            }
            Ok(None) => {}
            Err(_) => return Err("malformed response"),
        }
    }
}
