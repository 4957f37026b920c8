//! Zero failed idempotent requests under chaos: the reference
//! topology (`examples/two-regions.toml`, read at test time and moved to
//! free loopback ports) in front of five testkit backends sharing one
//! ledger, under closed-loop keep-alive load from eight clients, while a
//! seeded schedule kills and restarts single endpoints, freezes one, takes
//! the whole primary region down and reloads the config. Events never
//! overlap, so the secondary region is never down with the primary: every
//! failure of an idempotent request is levee's.
//!
//! Afterwards, from the clients' answers, the origins' ledger and levee's
//! own metrics:
//!
//! - no GET failed (anything but `200`, or no answer within 15 s);
//! - no POST ran twice (its request id complete twice in the ledger);
//! - every `200` was served by the origin it names (`x-backend` in the ledger);
//! - no `503` saying the request was never sent reached an origin;
//! - a POST failed only while in flight on an endpoint being killed or
//!   frozen, and never with an answer claiming it was not sent (levee may
//!   send such a POST again).
//!
//! Each violation is listed with its answer (status, `Proxy-Status`), what
//! levee's access log says of its tries, where the ledger saw it, and the
//! chaos events around it, times from the start of the load. One summary
//! line per seed (`--nocapture`), with the retry amplification
//! (`levee_upstream_attempts_total` ÷ requests). The run lasts
//! `LEVEE_SOAK_SECS` seconds (default 60); nothing is timed, so a busy
//! machine makes it slower, never failed.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use levee_testkit::{Backend, Behaviour, Client, Ledger};
use tokio::time::Instant;

use crate::support::*;

const CLIENTS: u64 = 8;
const POST_PERCENT: u64 = 20;
/// Each request's client-side deadline, body included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// Load before the first chaos event.
const WARMUP: Duration = Duration::from_secs(3);
/// At least this long between one event's end and the next one's start.
const GAP: Duration = Duration::from_secs(2);
/// Load after the last event ends.
const TAIL: Duration = Duration::from_secs(3);
/// A bound on each client's loop, far above what a run reaches.
const MAX_REQUESTS_PER_CLIENT: u64 = 5_000_000;
/// Failures listed per category in the assertion message.
const LISTED: usize = 40;
/// Chaos events named around each failure.
const NEAR: usize = 3;
/// The reference topology's endpoints, in the order of its port list.
const NAMES: [&str; 5] = [
    "primary-1",
    "primary-2",
    "primary-3",
    "secondary-1",
    "secondary-2",
];
const PORTS: [&str; 5] = ["9101", "9102", "9103", "9201", "9202"];
const PRIMARIES: usize = 3;
/// Proxy-Status error types by which levee says the request never left it.
const NOT_SENT_503: [&str; 2] = ["destination_unavailable", "connection_limit_reached"];
/// Every "never sent" type: a POST failing with one may be retried by levee,
/// so it is no excuse.
const NOT_SENT: [&str; 6] = [
    "destination_unavailable",
    "connection_limit_reached",
    "connection_refused",
    "connection_timeout",
    "dns_error",
    "destination_ip_unroutable",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_seed_1() {
    soak(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_seed_2() {
    soak(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_seed_3() {
    soak(3).await;
}

async fn soak(seed: u64) {
    let run = Duration::from_secs(
        std::env::var("LEVEE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60)
            .max(1),
    );
    let ledger = Ledger::new();
    let mut backends = Vec::new();
    for name in NAMES {
        backends.push(
            Backend::builder(name)
                .ledger(ledger.clone())
                .start()
                .await
                .expect("backend starts"),
        );
    }
    let logs = tempfile::tempdir().expect("temp dir");
    let access_log = logs.path().join("access.log");
    let original = topology(&backends, &access_log);
    let h = Harness::start_file(&original, false).await;
    checked_healthy(&h, &backends).await;

    let plan = schedule(seed, run);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let hard_end = start + run + Duration::from_secs(120);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = Client::http1(h.addr).with_timeout(REQUEST_DEADLINE);
            tokio::spawn(client_loop(seed, c, client, start, Arc::clone(&stop), hard_end))
        })
        .collect();
    let mut chaos = Chaos {
        backends: &backends,
        harness: &h,
        original: &original,
        start,
        reloads: 0,
        problems: Vec::new(),
    };
    let mut events: Vec<Event> = Vec::new();
    for planned in &plan {
        // On schedule, but never sooner than GAP after the last one ended
        // (a kill can take a while on a busy machine).
        let free = events.last().map_or(start, |e| start + e.end + GAP);
        tokio::time::sleep_until((start + planned.at).max(free)).await;
        events.push(chaos.strike(planned.what).await);
    }
    tokio::time::sleep_until((start + run).max(Instant::now() + TAIL)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.expect("client task"));
    }
    let elapsed = start.elapsed();
    // Arrivals cut off by a kill are recorded when their backend notices.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let record = Record {
        arrivals: index(&ledger),
        levee: levee_view(&access_log, &outcomes, &backends),
        events: &events,
    };
    let verdict = judge(&outcomes, &record);
    let metrics = h.metrics().await;
    println!("{}", summary(seed, elapsed, &verdict, &metrics));
    println!("soak seed {seed} chaos: {}", timeline(&events));
    report(&verdict, &chaos.problems);
}

/// Waits until levee's checks have passed every endpoint twice (`rise`), so
/// the run starts from a settled topology.
async fn checked_healthy(h: &Harness, backends: &[Backend]) {
    for (i, b) in backends.iter().enumerate() {
        let region = if i < PRIMARIES { "primary" } else { "secondary" };
        let series = format!(
            "levee_upstream_health_checks_total{{upstream=\"app\",region=\"{region}\",endpoint=\"{}\",result=\"success\"}}",
            b.addr()
        );
        levee_testkit::eventually_async(SETTLE, &format!("{} checked healthy", b.name()), || async {
            h.metric(&series).await >= 2.0
        })
        .await;
    }
}

/// examples/two-regions.toml with its endpoints on the backends, listener
/// (renamed `main`, as the harness expects) and admin on free ports, plus
/// an access log: for diagnostics only, it says how many tries a failed
/// request had and which endpoint had the last.
fn topology(backends: &[Backend], access_log: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-regions.toml");
    let mut text = std::fs::read_to_string(&path).expect("examples/two-regions.toml");
    for (port, b) in PORTS.iter().zip(backends) {
        swap(
            &mut text,
            &format!("\"127.0.0.1:{port}\""),
            &format!("\"{}\"", b.addr()),
        );
    }
    swap(
        &mut text,
        "\"127.0.0.1:8080\"",
        &format!("\"127.0.0.1:{}\"", free_port()),
    );
    swap(
        &mut text,
        "\"127.0.0.1:9901\"",
        &format!("\"127.0.0.1:{}\"", free_port()),
    );
    swap(&mut text, "[listener.public]", "[listener.main]");
    assert!(
        !text.contains("[access_log]"),
        "update soak.rs: the example has an access log now"
    );
    text.push_str(&format!(
        "\n[access_log]\nenabled = true\npath = {:?}\nformat = \"json\"\nbuffer = 1048576\n\
         fields = [\"request_id\", \"status\", \"attempts\", \"region\", \"endpoint\", \"proxy_status\", \"retry_stop\", \"duration_ms\"]\n",
        access_log.display().to_string()
    ));
    text
}

/// Replaces `from`, which the shipped file must contain: if it changed
/// shape, this test must be told rather than quietly test something else.
fn swap(text: &mut String, from: &str, to: &str) {
    assert!(
        text.contains(from),
        "examples/two-regions.toml no longer contains {from}: update soak.rs"
    );
    *text = text.replace(from, to);
}

/// A port the OS just handed out, for a config that must name its address
/// (so that a reload finds the listener unchanged).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The config with a harmless change: another `response_header_timeout`.
fn retuned(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("response_header_timeout"))
        .expect("examples/two-regions.toml sets response_header_timeout: update soak.rs");
    let new = if line.contains("\"12s\"") { "11s" } else { "12s" };
    text.replacen(line, &format!("response_header_timeout = \"{new}\""), 1)
}

/// SplitMix64: seeded and deterministic (the crate's dev-dependencies have
/// no random number generator, and this needs no more).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).expect("an index")
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[derive(Clone, Copy, Debug)]
enum What {
    /// Kill one endpoint, restart it after `down`.
    Kill { which: usize, down: Duration },
    /// `Behaviour::Hang` for `frozen`, then `Normal`.
    Freeze { which: usize, frozen: Duration },
    /// Kill all of the primary region, restart it after `down`.
    RegionDown { down: Duration },
    /// Rewrite the config file with a harmless change and reload it.
    Reload,
}

impl What {
    fn length(self) -> Duration {
        match self {
            What::Kill { down, .. } | What::RegionDown { down } => down,
            What::Freeze { frozen, .. } => frozen,
            What::Reload => Duration::ZERO,
        }
    }
}

struct Planned {
    at: Duration,
    what: What,
}

/// The seed's chaos: three single kills, a freeze, a region outage and two
/// reloads, in a seeded order, one per slot of the run after the warm-up,
/// each at a seeded moment of its slot that leaves `GAP` before the next.
/// A run too short for the slots gets them back to back, `GAP` apart.
fn schedule(seed: u64, run: Duration) -> Vec<Planned> {
    let mut rng = Rng(seed);
    let mut whats = Vec::new();
    for _ in 0..3 {
        whats.push(What::Kill {
            which: rng.index(NAMES.len()),
            down: rng.millis(2000, 4000),
        });
    }
    whats.push(What::Freeze {
        which: rng.index(NAMES.len()),
        frozen: Duration::from_secs(3),
    });
    whats.push(What::RegionDown {
        down: Duration::from_secs(5),
    });
    whats.extend([What::Reload, What::Reload]);
    for i in (1..whats.len()).rev() {
        whats.swap(i, rng.index(i + 1));
    }
    let slots = u32::try_from(whats.len()).expect("a few events");
    let slot = run.saturating_sub(WARMUP + TAIL) / slots;
    let mut next_free = WARMUP;
    let mut plan = Vec::new();
    for (i, what) in (0..slots).zip(whats) {
        let room = slot.saturating_sub(what.length() + GAP);
        let jitter = Duration::from_millis(rng.below(room.as_millis() as u64 + 1));
        let at = (WARMUP + slot * i + jitter).max(next_free);
        next_free = at + what.length() + GAP;
        plan.push(Planned { at, what });
    }
    plan
}

/// A chaos event as it happened, times from the start of the load.
struct Event {
    label: String,
    begin: Duration,
    end: Duration,
    /// Endpoints that could have been holding requests when it struck, and
    /// when: `(name, from, to)`.
    struck: Vec<(String, Duration, Duration)>,
}

/// Carries out the schedule (one event at a time: they never overlap).
struct Chaos<'a> {
    backends: &'a [Backend],
    harness: &'a Harness,
    original: &'a str,
    start: Instant,
    reloads: u32,
    /// Reloads that were not applied.
    problems: Vec<String>,
}

impl Chaos<'_> {
    async fn strike(&mut self, what: What) -> Event {
        let begin = self.start.elapsed();
        let mut struck = Vec::new();
        let label = match what {
            What::Kill { which, down } => {
                let b = &self.backends[which];
                b.kill().await;
                struck.push((b.name().to_owned(), begin, self.start.elapsed()));
                tokio::time::sleep(down).await;
                restart(b).await;
                format!("kill {} {:.1}s", b.name(), down.as_secs_f64())
            }
            What::Freeze { which, frozen } => {
                let b = &self.backends[which];
                b.set_behaviour(Behaviour::Hang);
                tokio::time::sleep(frozen).await;
                b.set_behaviour(Behaviour::Normal);
                struck.push((b.name().to_owned(), begin, self.start.elapsed()));
                format!("freeze {} {:.1}s", b.name(), frozen.as_secs_f64())
            }
            What::RegionDown { down } => {
                for b in &self.backends[..PRIMARIES] {
                    b.kill().await;
                    struck.push((b.name().to_owned(), begin, self.start.elapsed()));
                }
                tokio::time::sleep(down).await;
                for b in &self.backends[..PRIMARIES] {
                    restart(b).await;
                }
                format!("primary region down {:.1}s", down.as_secs_f64())
            }
            What::Reload => self.reload().await,
        };
        Event {
            label,
            begin,
            end: self.start.elapsed(),
            struck,
        }
    }

    /// Odd reloads apply the retuned config, even ones the original.
    async fn reload(&mut self) -> String {
        self.reloads += 1;
        let text = if self.reloads % 2 == 1 {
            retuned(self.original)
        } else {
            self.original.to_owned()
        };
        std::fs::write(self.harness.config_path(), text).expect("write config");
        match api_reload(self.harness.admin).await {
            Ok(r) if r.status == 200 && r.text().contains("\"status\":\"applied\"") => {}
            Ok(r) => self
                .problems
                .push(format!("reload {}: {} {}", self.reloads, r.status, r.text())),
            Err(e) => self.problems.push(format!("reload {}: {e:#}", self.reloads)),
        }
        format!("reload {}", self.reloads)
    }
}

/// Restarts on the same port, retrying a little should it still be busy.
async fn restart(b: &Backend) {
    for _ in 0..50 {
        if b.restart().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.restart()
        .await
        .unwrap_or_else(|e| panic!("restarting {}: {e}", b.name()));
}

/// What one client request got.
struct Outcome {
    id: String,
    post: bool,
    begin: Duration,
    end: Duration,
    answer: Result<Answer, String>,
}

struct Answer {
    status: u16,
    proxy_status: Option<String>,
    backend: Option<String>,
}

/// One client: one request at a time on its own keep-alive connection,
/// until told to stop (or a hard deadline, or a count, whichever first).
async fn client_loop(
    seed: u64,
    c: u64,
    client: Client,
    start: Instant,
    stop: Arc<AtomicBool>,
    hard_end: Instant,
) -> Vec<Outcome> {
    let mut rng = Rng(seed ^ (c + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut out = Vec::new();
    for n in 0..MAX_REQUESTS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) || Instant::now() >= hard_end {
            break;
        }
        let post = rng.below(100) < POST_PERCENT;
        let id = format!("soak{seed}-c{c}-{n}");
        let req = if post {
            Request::post(format!("/orders/{n}"))
                .header("x-request-id", &id)
                .body(Full::new(Bytes::from(format!("order {id}"))))
        } else {
            Request::get(format!("/items/{n}"))
                .header("x-request-id", &id)
                .body(Full::new(Bytes::new()))
        };
        let begin = start.elapsed();
        let answer = match client.send(req.expect("request")).await {
            Ok(r) => Ok(Answer {
                status: r.status,
                proxy_status: r.header("proxy-status").map(str::to_owned),
                backend: r.header("x-backend").map(str::to_owned),
            }),
            Err(e) => Err(format!("{e:#}")),
        };
        out.push(Outcome {
            id,
            post,
            begin,
            end: start.elapsed(),
            answer,
        });
    }
    out
}

/// One arrival, as much as the verdict needs.
struct Seen {
    backend: String,
    complete: bool,
}

fn index(ledger: &Ledger) -> HashMap<String, Vec<Seen>> {
    let mut by_id: HashMap<String, Vec<Seen>> = HashMap::new();
    for a in ledger.arrivals() {
        if let Some(id) = a.request_id {
            by_id.entry(id).or_default().push(Seen {
                backend: a.backend,
                complete: a.complete,
            });
        }
    }
    by_id
}

#[derive(Default)]
struct Verdict {
    requests: usize,
    posts: usize,
    failed_gets: Vec<String>,
    /// Failed POSTs in flight on a killed or frozen endpoint, and how many
    /// of them the ledger has.
    excused_posts: Vec<String>,
    excused_in_ledger: usize,
    failed_posts: Vec<String>,
    duplicated_posts: Vec<String>,
    unmatched_200s: Vec<String>,
    false_not_sent: Vec<String>,
}

/// What the origins, levee and the chaos driver recorded, for the verdict.
struct Record<'a> {
    arrivals: HashMap<String, Vec<Seen>>,
    /// Levee's access log line, summed up, for each request not answered 200.
    levee: HashMap<String, String>,
    events: &'a [Event],
}

/// The access log's word on every request that did not get a 200: tries,
/// and the endpoint (by backend name) of the last one.
fn levee_view(path: &Path, outcomes: &[Outcome], backends: &[Backend]) -> HashMap<String, String> {
    let failed: HashSet<&str> = outcomes
        .iter()
        .filter(|o| !matches!(&o.answer, Ok(a) if a.status == 200))
        .map(|o| o.id.as_str())
        .collect();
    let names: HashMap<String, &str> = backends
        .iter()
        .map(|b| (b.addr().to_string(), b.name()))
        .collect();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut view = HashMap::new();
    // Most lines are 200s: skip them unparsed.
    for line in text.lines().filter(|l| !l.contains("\"status\":200,")) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(id) = v["request_id"].as_str().filter(|id| failed.contains(id)) else {
            continue;
        };
        let endpoint = v["endpoint"].as_str().unwrap_or("none");
        view.insert(
            id.to_owned(),
            format!(
                "levee: {} tries, last to {} ({}), {} after {} ms, not saved: {}",
                v["attempts"],
                names.get(endpoint).copied().unwrap_or(endpoint),
                v["region"].as_str().unwrap_or("-"),
                v["status"],
                v["duration_ms"],
                v["retry_stop"].as_str().unwrap_or("-")
            ),
        );
    }
    view
}

fn judge(outcomes: &[Outcome], record: &Record<'_>) -> Verdict {
    let mut v = Verdict {
        requests: outcomes.len(),
        ..Verdict::default()
    };
    for o in outcomes {
        let seen = record.arrivals.get(&o.id).map_or(&[][..], Vec::as_slice);
        v.posts += usize::from(o.post);
        if let Ok(a) = &o.answer {
            let error = a.proxy_status.as_deref().and_then(error_type);
            if a.status == 200
                && !seen
                    .iter()
                    .any(|s| s.complete && a.backend.as_deref() == Some(s.backend.as_str()))
            {
                v.unmatched_200s.push(describe(o, seen, record));
            }
            if a.status == 503 && error.is_some_and(|e| NOT_SENT_503.contains(&e)) && !seen.is_empty() {
                v.false_not_sent.push(describe(o, seen, record));
            }
        }
        if o.post && seen.iter().filter(|s| s.complete).count() > 1 {
            v.duplicated_posts.push(describe(o, seen, record));
        }
        if matches!(&o.answer, Ok(a) if a.status == 200) {
            continue;
        }
        if !o.post {
            v.failed_gets.push(describe(o, seen, record));
        } else if excused(o, seen, record.events) {
            v.excused_posts.push(describe(o, seen, record));
            v.excused_in_ledger += usize::from(!seen.is_empty());
        } else {
            v.failed_posts.push(describe(o, seen, record));
        }
    }
    v
}

/// The `error=` parameter of a `Proxy-Status` value.
fn error_type(proxy_status: &str) -> Option<&str> {
    proxy_status
        .split(';')
        .find_map(|p| p.trim().strip_prefix("error="))
}

/// A failed POST is excused when it was in flight on an endpoint while
/// that endpoint was killed or frozen (on the one the ledger saw it on, if
/// any), and levee does not claim it never sent it.
fn excused(o: &Outcome, seen: &[Seen], events: &[Event]) -> bool {
    let error = o
        .answer
        .as_ref()
        .ok()
        .and_then(|a| a.proxy_status.as_deref())
        .and_then(error_type);
    if error.is_some_and(|e| NOT_SENT.contains(&e)) {
        return false;
    }
    events.iter().flat_map(|e| &e.struck).any(|(name, from, to)| {
        o.begin <= *to && o.end >= *from && (seen.is_empty() || seen.iter().any(|s| &s.backend == name))
    })
}

fn describe(o: &Outcome, seen: &[Seen], record: &Record<'_>) -> String {
    let answer = match &o.answer {
        Ok(a) => format!(
            "{} proxy-status {:?} x-backend {:?}",
            a.status, a.proxy_status, a.backend
        ),
        Err(e) => format!("no answer: {e}"),
    };
    let ledger = if seen.is_empty() {
        "not in the ledger".to_owned()
    } else {
        let list: Vec<String> = seen
            .iter()
            .map(|s| format!("{}{}", s.backend, if s.complete { "" } else { " (incomplete)" }))
            .collect();
        format!("ledger: {}", list.join(", "))
    };
    // The last few events that began by its end and ended at most a
    // failback (5 s + a 10 s ramp, and a little) before it began.
    let near: Vec<&Event> = record
        .events
        .iter()
        .filter(|e| e.begin <= o.end && o.begin <= e.end + Duration::from_secs(16))
        .collect();
    let near: Vec<String> = near[near.len().saturating_sub(NEAR)..]
        .iter()
        .map(|e| {
            format!(
                "{} [{:+.3}s..{:+.3}s from its start]",
                e.label,
                secs(e.begin) - secs(o.begin),
                secs(e.end) - secs(o.begin)
            )
        })
        .collect();
    let levee = record
        .levee
        .get(&o.id)
        .map_or("not in levee's access log", String::as_str);
    format!(
        "{} {} at +{:.3}s..+{:.3}s: {answer}; {levee}; {ledger}; chaos near: {}",
        o.id,
        if o.post { "POST" } else { "GET" },
        secs(o.begin),
        secs(o.end),
        if near.is_empty() {
            "none".to_owned()
        } else {
            near.join("; ")
        }
    )
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn timeline(events: &[Event]) -> String {
    let list: Vec<String> = events
        .iter()
        .map(|e| format!("+{:.1}s..+{:.1}s {}", secs(e.begin), secs(e.end), e.label))
        .collect();
    list.join(", ")
}

fn summary(seed: u64, elapsed: Duration, v: &Verdict, metrics: &str) -> String {
    let m = |series: &str| levee_testkit::metric_value(metrics, series);
    let tries = m("levee_upstream_attempts_total{upstream=\"app\"}");
    let retries: f64 = ["connect_failure", "reset", "timeout", "status"]
        .iter()
        .map(|r| {
            m(&format!(
                "levee_upstream_retries_total{{upstream=\"app\",reason=\"{r}\"}}"
            ))
        })
        .sum();
    let refused = m("levee_upstream_retry_budget_exhausted_total{upstream=\"app\"}");
    let overflow = m("levee_upstream_overflow_total{upstream=\"app\",limit=\"retries\"}");
    format!(
        "soak seed {seed}: {:.1}s, {} requests ({} GETs, {} POSTs), failed GETs {}, failed POSTs {} \
         ({} in flight on a killed/frozen endpoint, {} of those in the ledger; {} not excused), \
         duplicated POSTs {}, 200s without an arrival {}, \"not sent\" 503s that arrived {}, \
         retry amplification {:.4} ({tries} tries / {} requests; {retries} retries, {refused} refused by the budget, {overflow} by max_retries)",
        secs(elapsed),
        v.requests,
        v.requests - v.posts,
        v.posts,
        v.failed_gets.len(),
        v.excused_posts.len() + v.failed_posts.len(),
        v.excused_posts.len(),
        v.excused_in_ledger,
        v.failed_posts.len(),
        v.duplicated_posts.len(),
        v.unmatched_200s.len(),
        v.false_not_sent.len(),
        tries / v.requests.max(1) as f64,
        v.requests,
    )
}

/// Prints the excused POSTs and fails with every violation listed.
fn report(v: &Verdict, problems: &[String]) {
    for p in v.excused_posts.iter().take(LISTED) {
        println!("  excused POST: {p}");
    }
    let mut message = String::new();
    let categories = [
        ("failed GETs", v.failed_gets.as_slice()),
        (
            "failed POSTs not in flight on a killed/frozen endpoint",
            &v.failed_posts,
        ),
        ("POSTs executed twice", &v.duplicated_posts),
        ("200s with no matching arrival", &v.unmatched_200s),
        (
            "503s claiming \"not sent\" that reached an origin",
            &v.false_not_sent,
        ),
        ("reloads not applied", problems),
    ];
    for (what, list) in categories {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(message, "{} {what}:", list.len());
        for line in list.iter().take(LISTED) {
            let _ = writeln!(message, "  {line}");
        }
        if list.len() > LISTED {
            let _ = writeln!(message, "  ... and {} more", list.len() - LISTED);
        }
    }
    assert!(message.is_empty(), "soak found violations:\n{message}");
}
