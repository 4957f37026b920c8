//! The scenario as `levee chaos run` uses it: the validated file
//! (`Scenario` and its parts), the schedule and load derived from it
//! (`Step`, `Planned`), what the runner observed (`Outcome`, `Run`) and
//! the SLO verdict (`Verdict`). Plain data; the functions that make and
//! read it live in the sibling files.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

/// The demo target's regions, as `levee demo` runs them
/// (`examples/two-regions.toml`).
pub const DEMO_REGIONS: [&str; 2] = ["primary", "secondary"];

/// The demo target's backends: (name, region).
pub const DEMO_ENDPOINTS: [(&str, &str); 5] = [
    ("primary-1", "primary"),
    ("primary-2", "primary"),
    ("primary-3", "primary"),
    ("secondary-1", "secondary"),
    ("secondary-2", "secondary"),
];

/// A validated scenario file.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// Seeds the load's method draws (and whatever the runner draws), so
    /// the same seed gives the same run plan.
    pub seed: u64,
    pub duration: Duration,
    pub target: Target,
    pub load: Load,
    /// In file order; `schedule` puts them in time order.
    pub faults: Vec<Fault>,
    pub slo: Slo,
}

/// What the load goes through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `levee demo`'s topology, in-process: gateway 127.0.0.1:8080, admin
    /// 127.0.0.1:9901, backends `DEMO_ENDPOINTS`.
    Demo,
    /// A gateway that is already running; `admin` is its admin API, needed
    /// by `drain`, `reload` and `restore`.
    Running { url: String, admin: Option<String> },
}

/// The open-loop load.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// Requests per second, evenly spaced.
    pub rate: u32,
    /// Each method with its share; the shares sum to 1.
    pub methods: Vec<(http::Method, f64)>,
    /// The request path (with query, if any); default `/`.
    pub path: String,
    /// Per request, from its intended send time; default 10 s.
    pub timeout: Duration,
}

/// One `[[fault]]` of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// From the start of the load.
    pub at: Duration,
    pub action: Action,
    pub target: Selector,
    /// `for`: the fault is restored this long after `at`.
    pub lasts: Option<Duration>,
}

/// What a fault acts on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// No target: the whole gateway (`drain`, `reload`) or none (`flood`).
    All,
    Region(String),
    Endpoint(String),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all"),
            Selector::Region(r) => write!(f, "region {r}"),
            Selector::Endpoint(e) => write!(f, "endpoint {e}"),
        }
    }
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The backends stop listening and reset their connections.
    Fail,
    /// The backends accept and read, and never answer.
    Hang,
    /// The backends answer `delay` late.
    Latency { delay: Duration },
    /// The backends answer `status` to a `ratio` of requests.
    Errors { status: u16, ratio: f64 },
    /// The backends reset every connection as a request arrives.
    Reset,
    /// Undoes every fault on the target.
    Restore,
    /// Drains the endpoint through the admin API (or, with no target, the
    /// gateway).
    Drain,
    /// Reloads the gateway's config (or restarts the endpoint).
    Reload,
    /// One extra client sends `rate` requests per second.
    Flood { rate: u32 },
    /// A Toxiproxy toxic on the target's connections (`levee chaos proxy`'s
    /// toxics): `toxic` is its type, `stream` `downstream` or `upstream`.
    Toxic {
        toxic: String,
        stream: String,
        toxicity: f32,
        attributes: BTreeMap<String, i64>,
    },
}

impl Action {
    /// The action's name as the file spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Fail => "fail",
            Action::Hang => "hang",
            Action::Latency { .. } => "latency",
            Action::Errors { .. } => "errors",
            Action::Reset => "reset",
            Action::Restore => "restore",
            Action::Drain => "drain",
            Action::Reload => "reload",
            Action::Flood { .. } => "flood",
            Action::Toxic { .. } => "toxic",
        }
    }

    /// Whether the action takes a whole region out (the faults
    /// `failover_within` measures).
    pub fn takes_out(&self) -> bool {
        matches!(self, Action::Fail | Action::Hang | Action::Reset)
    }
}

impl fmt::Display for Action {
    /// The action with its settings: `latency 300ms`, `errors 503 50%`,
    /// `flood 500/s`, `toxic latency downstream latency=300 jitter=50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Latency { delay } => write!(f, "latency {}", human(*delay)),
            Action::Errors { status, ratio } => {
                write!(f, "errors {status} {}%", trim_float(ratio * 100.0))
            }
            Action::Flood { rate } => write!(f, "flood {rate}/s"),
            Action::Toxic {
                toxic,
                stream,
                toxicity,
                attributes,
            } => {
                write!(f, "toxic {toxic} {stream}")?;
                for (k, v) in attributes {
                    write!(f, " {k}={v}")?;
                }
                if *toxicity < 1.0 {
                    write!(f, " toxicity={}", trim_float(f64::from(*toxicity)))?;
                }
                Ok(())
            }
            other => f.write_str(other.name()),
        }
    }
}

/// The SLOs of `[slo]`; each is checked only when set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slo {
    /// Share of all requests answered 2xx, 0 to 1.
    pub success_ratio: Option<f64>,
    /// The same over idempotent requests only (`is_idempotent`).
    pub success_ratio_idempotent: Option<f64>,
    /// Latency from the intended send time, over all requests.
    pub p99: Option<Duration>,
    /// Non-idempotent requests that a backend processed more than once.
    pub max_duplicated: Option<u64>,
    /// Requests a backend processed whose client got no 2xx.
    pub max_lost: Option<u64>,
    /// After a region is taken out: until the last request that failed or
    /// was answered by it.
    pub failover_within: Option<Duration>,
}

/// One step of the schedule as run: faults in time order; a fault with
/// `lasts` adds its own restore step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
    pub target: Selector,
    /// What the step does, for humans: `fail region primary`.
    pub label: String,
    /// For a restore added by `for`: the index of the step it ends.
    pub restores: Option<usize>,
}

/// One planned request of the open-loop load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// From 0, in send order.
    pub index: u64,
    /// The intended send time, from the start of the load.
    pub at: Duration,
    pub method: http::Method,
}

/// What became of one request (filled by the runner).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub index: u64,
    /// The request id the runner sent (and the backends' ledgers record).
    pub id: String,
    /// The intended send time.
    pub at: Duration,
    pub method: http::Method,
    /// From the intended send time to the end of the answer, or to the
    /// failure.
    pub latency: Duration,
    /// `None`: no answer (transport error, timeout).
    pub status: Option<u16>,
    pub proxy_status: Option<String>,
    /// The backend and region that answered, when the answer says.
    pub backend: Option<String>,
    pub region: Option<String>,
    /// From the flood client: not counted in the SLOs.
    pub flood: bool,
}

impl Outcome {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }
}

/// Everything the runner saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    pub outcomes: Vec<Outcome>,
    /// The schedule as run: (actual time from the start of the load, label).
    pub steps: Vec<(Duration, String)>,
    /// Request id → the backends that processed it, from the demo
    /// backends' ledgers; `None` against a running gateway.
    pub processed: Option<HashMap<String, Vec<String>>>,
    /// How long the run took.
    pub wall: Duration,
}

/// The SLO verdict: one row per SLO.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub rows: Vec<Row>,
}

/// One SLO: its name as `[slo]` spells it, what was measured, the limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: &'static str,
    pub measured: String,
    pub limit: String,
    pub state: RowState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowState {
    Pass,
    Fail,
    /// Not checked, and why.
    NotEvaluated(String),
}

/// Problems in a scenario file are reported as config problems are: one
/// `path: message` line each (a path such as `fault[2].action`).
pub use levee_config::{ConfigError as ScenarioError, ConfigErrors as ScenarioErrors};

/// GET, HEAD, PUT, DELETE, OPTIONS and TRACE (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(m)
}

/// A duration as people write it: `250ms`, `1.5s`, `2m`, `40s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 && !d.is_zero() {
        format!("{}µs", trim_float(d.as_secs_f64() * 1e6))
    } else if ms < 1000.0 {
        format!("{}ms", trim_float(ms))
    } else if ms < 120_000.0 {
        format!("{}s", trim_float(ms / 1000.0))
    } else {
        format!("{}m", trim_float(ms / 60_000.0))
    }
}

/// A number with at most two decimals and no trailing zeros: `1.5`, `40`.
pub fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}
