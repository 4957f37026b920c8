//! `levee chaos run SCENARIO.toml`: a scenario's open-loop load through a
//! gateway, its faults on their schedule, then the SLO verdict. The
//! scenario's rules, the verdict and the reports are `levee_chaos`'s
//! (pure); this module runs them: the target ([`target`]), the load
//! ([`load`]) and the schedule, with a progress line once a second.

mod load;
mod target;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_chaos::scenario::{self, Action, Run, Scenario, Step, Target};
use levee_core::sync::lock;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::load::{Recorder, Shot};
use self::target::Live;
use crate::client::Client;
use crate::demo::Ports;

/// How a run is made.
pub struct RunOptions {
    /// Where `report.json`, `junit.xml` and `report.html` go.
    pub report: Option<PathBuf>,
    /// The demo target's ports: the reference ones, or free ones (tests).
    pub ports: Ports,
}

/// How a run ended, for the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// Every SLO held (exit 0).
    Passed,
    /// An SLO failed (exit 1).
    Failed,
    /// The scenario is invalid: every problem, one a line (exit 78).
    Invalid(String),
    /// The run could not be made: the target did not start, a report could
    /// not be written (exit 1).
    Error(String),
    /// Ctrl-C or SIGTERM ended it early (exit 130).
    Interrupted,
}

/// Runs the scenario `text`, printing progress and the verdict to `out`,
/// until it ends or `interrupted`.
pub async fn run(
    text: &str,
    options: RunOptions,
    out: &mut dyn Write,
    interrupted: CancellationToken,
) -> Finished {
    let scenario = match scenario::parse(text) {
        Ok(s) => s,
        Err(errors) => return Finished::Invalid(errors.to_string()),
    };
    let tracker = TaskTracker::new();
    let stop = interrupted.child_token();
    let live = match start(&scenario, options.ports, &tracker, &stop).await {
        Ok(live) => live,
        Err(e) => return Finished::Error(e),
    };
    let finished = match live.gateway() {
        Some(gateway) => drive(&scenario, &live, gateway, &options, out, &tracker, &stop).await,
        None => Finished::Error("the gateway has no listener".into()),
    };
    live.shutdown().await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    if interrupted.is_cancelled() {
        return Finished::Interrupted;
    }
    finished
}

async fn start(
    scenario: &Scenario,
    ports: Ports,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Live, String> {
    match &scenario.target {
        Target::Demo => {
            let toxics = (scenario.faults.iter()).any(|f| matches!(f.action, Action::Toxic { .. }));
            Live::demo(ports, toxics, scenario.seed).await
        }
        Target::Running { url, admin } => {
            let gateway = address_of(url)?;
            let admin = admin.as_deref().map(address_of).transpose()?;
            Ok(Live::running(gateway, admin, tracker, stop))
        }
    }
}

/// `http://host:port` as a socket address (the load speaks plain HTTP/1.1).
fn address_of(url: &str) -> Result<SocketAddr, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// targets are supported"));
    }
    let host = uri.host().ok_or_else(|| format!("{url:?}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("{url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url:?}: no address"))
}

/// The load and the schedule side by side, then the verdict.
async fn drive(
    scenario: &Scenario,
    live: &Live,
    gateway: SocketAddr,
    options: &RunOptions,
    out: &mut dyn Write,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Finished {
    let load = &scenario.load;
    let steps = scenario::schedule(scenario);
    let recorder = Arc::new(Recorder::new(live.regions()));
    // Room for every request the load can have in flight at its rate.
    let room = (load.rate as usize)
        .saturating_mul(load.timeout.as_secs() as usize + 1)
        .clamp(64, 100_000);
    let shot = Arc::new(Shot {
        client: Arc::new(Client::new(gateway, tracker.clone(), stop.clone())),
        recorder: recorder.clone(),
        path: load.path.clone(),
        timeout: load.timeout,
        prefix: format!("{}-{}", scenario.name, scenario.seed),
        start: Instant::now() + Duration::from_millis(100),
        room: Arc::new(Semaphore::new(room)),
        tracker: tracker.clone(),
    });
    let ran = Mutex::new(Vec::new());
    let current = Mutex::new(None::<String>);
    let plan: Vec<_> = scenario::plan(scenario).collect();
    let end = shot.start + scenario.duration;
    let loaded = shot.clone().drive(plan.into_iter(), stop.clone());
    let scheduled = schedule(&steps, live, &shot, &ran, &current, end, stop);
    let shown = progress(&recorder, &current, shot.start, end, out, stop);
    tokio::join!(loaded, scheduled, shown);
    // The last requests get their whole timeout to be answered.
    let drained = tokio::time::timeout(
        load.timeout + Duration::from_secs(1),
        shot.room.acquire_many(room as u32),
    );
    let _ = tokio::select! {
        r = drained => r.is_ok(),
        () = stop.cancelled() => false,
    };
    let run = Run {
        outcomes: recorder.take(),
        steps: std::mem::take(&mut *lock(&ran)),
        processed: live.processed(),
        wall: shot.start.elapsed(),
    };
    verdict(scenario, &run, options, out)
}

fn verdict(scenario: &Scenario, run: &Run, options: &RunOptions, out: &mut dyn Write) -> Finished {
    let verdict = scenario::evaluate(scenario, run);
    let _ = writeln!(out, "\n{}", verdict.table());
    evidence(run, out);
    if let Some(dir) = &options.report {
        if let Err(e) =
            std::fs::create_dir_all(dir).and_then(|()| scenario::write_report(dir, scenario, run, &verdict))
        {
            return Finished::Error(format!("cannot write the report to {}: {e}", dir.display()));
        }
        let _ = writeln!(out, "report: {}", dir.join("report.html").display());
    }
    if verdict.passed() {
        Finished::Passed
    } else {
        Finished::Failed
    }
}

/// The evidence behind "lost" and "duplicated": each such request with
/// what its client got and which backends processed it (the first ten).
fn evidence(run: &Run, out: &mut dyn Write) {
    let Some(processed) = &run.processed else {
        return;
    };
    let load: Vec<_> = run.outcomes.iter().filter(|o| !o.flood).collect();
    let lost = scenario::lost(&load, processed);
    let duplicated = scenario::duplicated(&load, processed);
    for (what, ids) in [("lost", lost), ("duplicated", duplicated)] {
        for id in ids.iter().take(10) {
            let Some(o) = load.iter().find(|o| &o.id == id) else {
                continue;
            };
            let status = o
                .status
                .map_or_else(|| "no answer".to_string(), |s| s.to_string());
            let _ = writeln!(
                out,
                "{what}: {id} {} at {:.3}s: {status} after {:?} ({}), processed by {}",
                o.method,
                o.at.as_secs_f64(),
                o.latency,
                o.proxy_status.as_deref().unwrap_or("no proxy-status"),
                processed.get(id).map(|b| b.join(", ")).unwrap_or_default(),
            );
        }
    }
}

/// Runs the schedule's steps at their times; a flood runs until its
/// restore step (or the end).
async fn schedule(
    steps: &[Step],
    live: &Live,
    shot: &Arc<Shot>,
    ran: &Mutex<Vec<(Duration, String)>>,
    current: &Mutex<Option<String>>,
    end: Instant,
    stop: &CancellationToken,
) {
    let floods: Vec<CancellationToken> = steps.iter().map(|_| stop.child_token()).collect();
    for (i, step) in steps.iter().enumerate() {
        tokio::select! {
            () = tokio::time::sleep_until(shot.start + step.at) => {}
            () = stop.cancelled() => return,
        }
        let result = match (&step.action, step.restores) {
            (Action::Flood { rate }, None) => {
                let flood = shot.clone().flood(*rate, step.at, floods[i].clone());
                shot.tracker.spawn(flood);
                Ok(())
            }
            (_, Some(ended)) if matches!(steps.get(ended).map(|s| &s.action), Some(Action::Flood { .. })) => {
                floods[ended].cancel();
                Ok(())
            }
            _ => live.apply(step, steps).await,
        };
        let label = match result {
            Ok(()) => step.label.clone(),
            Err(why) => format!("{} (failed: {why})", step.label),
        };
        *lock(current) = (step.restores.is_none()).then(|| label.clone());
        lock(ran).push((shot.start.elapsed(), label));
    }
    // A flood without a restore lasts until the load ends.
    tokio::select! {
        () = tokio::time::sleep_until(end) => {}
        () = stop.cancelled() => {}
    }
    for flood in floods {
        flood.cancel();
    }
}

/// One progress line a second until the load ends.
async fn progress(
    recorder: &Recorder,
    current: &Mutex<Option<String>>,
    start: Instant,
    end: Instant,
    out: &mut dyn Write,
    stop: &CancellationToken,
) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let fault = lock(current).clone();
        let line = recorder.with_outcomes(|o| scenario::progress_line(start.elapsed(), o, fault.as_deref()));
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
