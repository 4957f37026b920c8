use std::collections::BTreeMap;
use std::time::Duration;

use super::EXAMPLE;
use crate::scenario::*;

fn errors(text: &str) -> Vec<String> {
    parse(text).expect_err("must be refused").lines()
}

/// Asserts that `lines` has a line starting with each of `wanted`.
fn has_all(lines: &[String], wanted: &[&str]) {
    for w in wanted {
        assert!(
            lines.iter().any(|l| l.starts_with(w)),
            "no {w:?} in:\n{}",
            lines.join("\n")
        );
    }
}

const HEAD: &str = "[scenario]\nname = \"x\"\nduration = \"40s\"\n[target]\ndemo = true\n[load]\nrate = 10\n";

#[test]
fn parses_the_example() {
    let s = parse(EXAMPLE).unwrap();
    assert_eq!(s.name, "region-outage");
    assert_eq!(s.seed, 7);
    assert_eq!(s.duration, Duration::from_secs(40));
    assert_eq!(s.target, Target::Demo);
    assert_eq!(s.load.rate, 200);
    assert_eq!(s.load.path, "/");
    assert_eq!(s.load.timeout, Duration::from_secs(10));
    let methods: BTreeMap<String, f64> = s.load.methods.iter().map(|(m, w)| (m.to_string(), *w)).collect();
    assert_eq!(methods.len(), 2);
    assert!((methods["GET"] - 0.8).abs() < 1e-12 && (methods["POST"] - 0.2).abs() < 1e-12);
    assert_eq!(
        s.faults,
        vec![Fault {
            at: Duration::from_secs(5),
            action: Action::Fail,
            target: Selector::Region("primary".into()),
            lasts: Some(Duration::from_secs(15)),
        }]
    );
    assert_eq!(
        s.slo,
        Slo {
            success_ratio: Some(0.999),
            success_ratio_idempotent: Some(1.0),
            p99: Some(Duration::from_millis(250)),
            max_duplicated: Some(0),
            max_lost: Some(0),
            failover_within: Some(Duration::from_secs(2)),
        }
    );
}

#[test]
fn parses_every_action_and_the_running_target() {
    let text = r#"
[scenario]
name = "all"
duration = "1m"
[target]
url = "http://127.0.0.1:8080/"
admin = "http://127.0.0.1:9901"
[load]
rate = 5
methods = { PUT = 1, DELETE = 3 }
path = "/api?x=1"
timeout = "2s"
[[fault]]
at = "1s"
action = "drain"
endpoint = "10.0.0.1:80"
for = "5s"
[[fault]]
at = "2s"
action = "reload"
[[fault]]
at = "3s"
action = "flood"
rate = 500
[[fault]]
at = "4s"
action = "restore"
region = "primary"
"#;
    let s = parse(text).unwrap();
    assert_eq!(s.seed, 0);
    assert_eq!(
        s.target,
        Target::Running {
            url: "http://127.0.0.1:8080".into(),
            admin: Some("http://127.0.0.1:9901".into())
        }
    );
    assert_eq!(
        s.load.methods,
        vec![(http::Method::DELETE, 0.75), (http::Method::PUT, 0.25)]
    );
    assert_eq!(
        (s.load.path.as_str(), s.load.timeout),
        ("/api?x=1", Duration::from_secs(2))
    );
    let actions: Vec<Action> = s.faults.iter().map(|f| f.action.clone()).collect();
    assert_eq!(
        actions,
        vec![
            Action::Drain,
            Action::Reload,
            Action::Flood { rate: 500 },
            Action::Restore
        ]
    );
    assert_eq!(s.slo, Slo::default());

    let demo = format!(
        "{HEAD}{}",
        r#"
[[fault]]
at = "1s"
action = "latency"
endpoint = "primary-2"
delay = "300ms"
[[fault]]
at = "2s"
action = "errors"
region = "secondary"
ratio = 0.5
[[fault]]
at = "3s"
action = "toxic"
toxic = "latency"
region = "primary"
toxicity = 0.5
attributes = { latency = 300, jitter = 50 }
[[fault]]
at = "4s"
action = "hang"
endpoint = "secondary-1"
[[fault]]
at = "5s"
action = "reset"
region = "primary"
"#
    );
    let s = parse(&demo).unwrap();
    assert_eq!(
        s.faults[0].action,
        Action::Latency {
            delay: Duration::from_millis(300)
        }
    );
    assert_eq!(s.faults[0].target, Selector::Endpoint("primary-2".into()));
    assert_eq!(
        s.faults[1].action,
        Action::Errors {
            status: 503,
            ratio: 0.5
        }
    );
    assert_eq!(
        s.faults[2].action,
        Action::Toxic {
            toxic: "latency".into(),
            stream: "downstream".into(),
            toxicity: 0.5,
            attributes: [("jitter".to_string(), 50), ("latency".to_string(), 300)].into(),
        }
    );
    assert_eq!(s.faults[3].action, Action::Hang);
    assert_eq!(s.faults[4].action, Action::Reset);
}

#[test]
fn a_syntax_error_names_its_line() {
    let e = errors("[scenario]\nname = \n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("line 2, column"), "{e:?}");
}

#[test]
fn every_problem_of_the_head_in_one_pass() {
    let text = r#"
[scenario]
name = ""
seed = -1
duration = 40
colour = "red"
[target]
[load]
rate = 0
methods = { GET = -1, get = 1, "BAD METHOD" = 1, CONNECT = 1 }
path = "relative"
timeout = "0s"
[slo]
success_ratio = 1.5
p99 = 250
max_lost = -1
failover_within = "soon"
p95 = "1s"
[extra]
"#;
    let e = errors(text);
    has_all(
        &e,
        &[
            "scenario.name: must not be empty",
            "scenario.seed: must be from 0 to",
            "scenario.duration: must be a duration such as \"250ms\", got 40",
            "scenario.colour: unknown key; expected one of name, seed, duration",
            "target: needs demo = true, or url =",
            "load.rate: must be from 1 to 100000, got 0",
            "load.methods.GET: must be from 0 to",
            "load.methods.get: methods are case-sensitive; write GET",
            "load.methods.\"BAD METHOD\": is not an HTTP method",
            "load.methods.CONNECT: CONNECT opens a tunnel",
            "load.path: must be a path such as",
            "load.timeout: must be longer than 0",
            "slo.success_ratio: must be from 0 to 1, got 1.5",
            "slo.p99: must be a duration such as \"250ms\", got 250",
            "slo.max_lost: must be from 0 to",
            "slo.failover_within: must be a duration such as \"250ms\" (units ms, s, m, h), got \"soon\"",
            "slo.p95: unknown key; expected one of success_ratio,",
            "extra: unknown section; expected one of scenario, target, load, fault, slo",
        ],
    );
    assert_eq!(e.len(), 18, "{}", e.join("\n"));
}

#[test]
fn required_keys_are_named() {
    let e = errors("[target]\nurl = \"ftp://x\"\nadmin = \"http://h:1/path\"\n");
    has_all(
        &e,
        &[
            "scenario.name: is required",
            "scenario.duration: is required",
            "target.url: must be a server's address such as \"http://127.0.0.1:8080\", got \"ftp://x\"",
            "target.admin: must be a server's address",
            "load.rate: is required",
        ],
    );
    assert_eq!(e.len(), 5, "{}", e.join("\n"));
    let e = errors(
        "[scenario]\nname = \"x\"\nduration = \"1s\"\n[target]\ndemo = true\nurl = \"http://a\"\n[load]\nrate = 1\n",
    );
    assert_eq!(
        e,
        vec!["target.url: not with demo = true: the demo runs its own gateway"]
    );
}

#[test]
fn every_problem_of_the_faults_in_one_pass() {
    let faults = r#"
[[fault]]
at = "5s"
action = "fail"
[[fault]]
at = "50s"
action = "hang"
region = "tertiary"
[[fault]]
at = "1s"
action = "explode"
delay = "1s"
[[fault]]
action = "restore"
[[fault]]
at = "1s"
action = "flood"
endpoint = "primary-1"
[[fault]]
at = "1s"
action = "latency"
region = "primary"
status = 500
[[fault]]
at = "1s"
action = "errors"
endpoint = "primary-9"
status = 700
ratio = 2
[[fault]]
at = "30s"
action = "fail"
region = "primary"
endpoint = "primary-1"
for = "20s"
[[fault]]
at = "1s"
action = "toxic"
toxic = "lag"
stream = "sideways"
region = "primary"
[[fault]]
at = "1s"
action = "toxic"
toxic = "bandwidth"
region = "primary"
toxicity = 2
attributes = { rate = -1, latency = 5 }
[[fault]]
at = "1s"
action = "drain"
region = "primary"
colour = "red"
[[fault]]
at = "1s"
action = "reload"
for = "1s"
[[fault]]
at = "35s"
action = "fail"
region = "primary"
for = "10s"
"#;
    let e = errors(&format!("{HEAD}{faults}"));
    has_all(
        &e,
        &[
            "fault[0]: fail needs a target: region = \"...\" or endpoint = \"...\"",
            "fault[1].region: \"tertiary\" is not a region of the demo; expected one of primary, secondary",
            "fault[1].at: 50s is not within the scenario's duration (40s)",
            "fault[2].action: \"explode\" is not one of fail, hang, latency, errors, reset, restore, drain, reload, flood, toxic",
            "fault[3].at: is required",
            "fault[3]: restore needs a target",
            "fault[4]: flood takes no target",
            "fault[4].rate: is required by flood",
            "fault[5].delay: is required by latency",
            "fault[5].status: applies only to action errors",
            "fault[6].status: must be from 100 to 599, got 700",
            "fault[6].ratio: must be from 0 to 1, got 2",
            "fault[7]: names both a region and an endpoint",
            "fault[7].for: ends at 50s, after the scenario's end (40s)",
            "fault[8].toxic: \"lag\" is not one of latency, bandwidth, slow_close, timeout, reset_peer, slicer, limit_data",
            "fault[8].stream: \"sideways\" is not one of downstream, upstream",
            "fault[9].toxicity: must be from 0 to 1, got 2",
            "fault[9].attributes.latency: is not an attribute of this toxic; it takes rate",
            "fault[9].attributes.rate: must be a whole number from 0, got -1",
            "fault[10]: drain takes no target or an endpoint, not a region",
            "fault[10].colour: unknown key; expected one of at, action,",
            "fault[11].for: reload happens at once; it has nothing to end",
            "fault[12].for: ends at 45s, after the scenario's end (40s)",
        ],
    );
    // Each fault's problems, and nothing else: fault[6] also names an
    // endpoint the demo does not have.
    has_all(
        &e,
        &["fault[6].endpoint: \"primary-9\" is not a backend of the demo"],
    );
    assert_eq!(e.len(), 24, "{}", e.join("\n"));
}

#[test]
fn demo_only_actions_against_a_running_gateway_say_why() {
    let text = r#"
[scenario]
name = "x"
duration = "10s"
[target]
url = "http://127.0.0.1:8080"
[load]
rate = 1
[[fault]]
at = "1s"
action = "fail"
region = "eu"
[[fault]]
at = "1s"
action = "drain"
endpoint = "a"
[[fault]]
at = "1s"
action = "toxic"
toxic = "timeout"
endpoint = "a"
[[fault]]
at = "1s"
action = "flood"
rate = 10
"#;
    let e = errors(text);
    assert_eq!(
        e,
        vec![
            "fault[0].action: fail needs target.demo = true: levee acts on the demo's own backends, and a running gateway's backends are not levee's to break",
            "fault[1].action: drain needs target.admin: it goes through the gateway's admin API",
            "fault[2].action: toxic needs target.demo = true: levee acts on the demo's own backends, and a running gateway's backends are not levee's to break",
        ]
    );
}

#[test]
fn the_errors_display_one_per_line() {
    let e = parse("[scenario]\n[target]\ndemo = true\n[load]\nrate = 1\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "scenario.name: is required: what the reports call this scenario\n\
         scenario.duration: is required: how long the load runs, such as \"40s\""
    );
}
