use std::time::Duration;

use super::EXAMPLE;
use crate::scenario::*;

fn with_seed(seed: u64) -> Scenario {
    let mut s = parse(EXAMPLE).unwrap();
    s.seed = seed;
    s
}

#[test]
fn the_plan_is_evenly_spaced_over_the_duration() {
    let s = with_seed(7);
    let p = plan(&s);
    assert_eq!(p.len(), 8000);
    let v: Vec<Planned> = p.collect();
    assert_eq!(v.len(), 8000);
    assert_eq!(v[0].at, Duration::ZERO);
    assert_eq!(v[1].at, Duration::from_millis(5));
    assert_eq!(v[7999].at, Duration::from_millis(39_995));
    assert!(v.iter().enumerate().all(|(i, p)| p.index == i as u64));
    // A rate that does not divide a second: 3/s over 1.5s is 0, 1/3, 2/3,
    // 1, 4/3 s.
    let mut s = with_seed(1);
    s.load.rate = 3;
    s.duration = Duration::from_millis(1500);
    let at: Vec<u128> = plan(&s).map(|p| p.at.as_nanos()).collect();
    assert_eq!(
        at,
        vec![0, 333_333_333, 666_666_666, 1_000_000_000, 1_333_333_333]
    );
}

#[test]
fn the_same_seed_gives_the_same_plan_and_schedule() {
    let a: Vec<Planned> = plan(&with_seed(7)).collect();
    let b: Vec<Planned> = plan(&with_seed(7)).collect();
    assert_eq!(a, b);
    assert_eq!(schedule(&with_seed(7)), schedule(&with_seed(7)));
    let c: Vec<Planned> = plan(&with_seed(8)).collect();
    assert_ne!(a, c, "another seed draws other methods");
    // The draws follow the weights: 20% POST, within a few points.
    let posts = a.iter().filter(|p| p.method == http::Method::POST).count();
    assert!((1400..=1800).contains(&posts), "{posts} POSTs of 8000");
}

#[test]
fn a_single_method_is_always_drawn() {
    let mut s = with_seed(3);
    s.load.methods = vec![(http::Method::PUT, 1.0)];
    assert!(plan(&s).all(|p| p.method == http::Method::PUT));
}

#[test]
fn the_schedule_orders_faults_and_adds_their_restores() {
    let text = EXAMPLE.replace(
        "[slo]",
        r#"
[[fault]]
at = "2s"
action = "latency"
endpoint = "secondary-1"
delay = "300ms"
[[fault]]
at = "20s"
action = "flood"
rate = 50
for = "5s"
[[fault]]
at = "20s"
action = "reload"
[slo]"#,
    );
    let s = parse(&text).unwrap();
    let steps = schedule(&s);
    let short: Vec<(u64, &str, Option<usize>)> = steps
        .iter()
        .map(|s| (s.at.as_secs(), s.label.as_str(), s.restores))
        .collect();
    assert_eq!(
        short,
        vec![
            (2, "latency 300ms endpoint secondary-1", None),
            (5, "fail region primary", None),
            // The restore at 20s comes before the faults that start then.
            (20, "restore region primary", Some(1)),
            (20, "flood 50/s", None),
            (20, "reload", None),
            (25, "end flood 50/s", Some(3)),
        ]
    );
    assert_eq!(steps[2].action, Action::Restore);
    assert_eq!(steps[2].target, Selector::Region("primary".into()));
    assert_eq!(steps[5].target, Selector::All);
}

#[test]
fn labels_carry_the_settings() {
    let toxic = Action::Toxic {
        toxic: "latency".into(),
        stream: "upstream".into(),
        toxicity: 0.5,
        attributes: [("latency".to_string(), 300)].into(),
    };
    assert_eq!(
        label(&toxic, &Selector::Region("primary".into())),
        "toxic latency upstream latency=300 toxicity=0.5 region primary"
    );
    assert_eq!(
        label(
            &Action::Errors {
                status: 500,
                ratio: 0.25
            },
            &Selector::Endpoint("primary-1".into())
        ),
        "errors 500 25% endpoint primary-1"
    );
}

#[test]
fn the_progress_line() {
    let mut outcomes = Vec::new();
    for i in 0..200u64 {
        outcomes.push(Outcome {
            index: i,
            id: format!("r{i}"),
            at: Duration::from_millis(11_000 + 5 * i),
            method: http::Method::GET,
            latency: Duration::from_millis(if i == 0 { 41 } else { 10 }),
            status: Some(if i < 2 { 502 } else { 200 }),
            proxy_status: None,
            backend: None,
            region: None,
            flood: false,
        });
    }
    // Ended before the last second, or after `elapsed` (r199): not
    // counted; r1 of the 198 failed.
    outcomes[0].at = Duration::from_millis(10_000);
    let line = progress_line(Duration::from_secs(12), &outcomes, Some("fail region primary"));
    assert_eq!(
        line,
        "12.0s  198 req/s  errors 0.51%  p99 10ms  fault: fail region primary"
    );
    assert_eq!(
        progress_line(Duration::from_millis(500), &[], None),
        "0.5s  0 req/s  errors 0%  p99 -"
    );
}
