use std::collections::HashMap;
use std::time::Duration;

use super::EXAMPLE;
use crate::scenario::*;

pub fn outcome(index: u64, at_ms: u64, method: http::Method, status: Option<u16>, region: &str) -> Outcome {
    Outcome {
        index,
        id: format!("r{index}"),
        at: Duration::from_millis(at_ms),
        method,
        latency: Duration::from_millis(20),
        status,
        proxy_status: None,
        backend: Some(format!("{region}-1")),
        region: Some(region.to_string()),
        flood: false,
    }
}

/// A run of the example that meets every SLO: 10 requests a second for
/// 40 s, every fifth a POST, all answered 200; primary fails at 5 s and
/// answers nothing from 6 s until its restore at 20 s.
pub fn good_run() -> Run {
    let mut outcomes = Vec::new();
    let mut processed = HashMap::new();
    for i in 0..400u64 {
        let at = i * 100;
        let method = if i % 5 == 0 {
            http::Method::POST
        } else {
            http::Method::GET
        };
        let region = if (6000..20_000).contains(&at) {
            "secondary"
        } else {
            "primary"
        };
        let o = outcome(i, at, method, Some(200), region);
        processed.insert(o.id.clone(), vec![o.backend.clone().unwrap()]);
        outcomes.push(o);
    }
    Run {
        outcomes,
        steps: vec![
            (Duration::from_millis(5000), "fail region primary".into()),
            (Duration::from_millis(20_000), "restore region primary".into()),
        ],
        processed: Some(processed),
        wall: Duration::from_secs(41),
    }
}

fn states(v: &Verdict) -> Vec<(&'static str, RowState)> {
    v.rows.iter().map(|r| (r.name, r.state.clone())).collect()
}

/// The rows' states with `name` failing and all others passing.
fn only_failing(name: &str) -> Vec<(&'static str, RowState)> {
    SLOS.iter()
        .map(|n| {
            (
                *n,
                if *n == name {
                    RowState::Fail
                } else {
                    RowState::Pass
                },
            )
        })
        .collect()
}

#[test]
fn a_run_that_meets_every_slo_passes() {
    let s = parse(EXAMPLE).unwrap();
    let v = evaluate(&s, &good_run());
    assert_eq!(states(&v), only_failing("none"));
    assert!(v.passed());
    let row = |n: &str| v.rows.iter().find(|r| r.name == n).unwrap().clone();
    assert_eq!(row("success_ratio").measured, "100% (400 of 400)");
    assert_eq!(row("success_ratio").limit, ">= 99.9%");
    assert_eq!(row("success_ratio_idempotent").measured, "100% (320 of 320)");
    assert_eq!(row("p99").measured, "20ms");
    assert_eq!(row("max_lost").measured, "0");
    // The last request answered by primary after 5 s was sent at 5.9 s.
    assert_eq!(row("failover_within").measured, "900ms (fail region primary)");
}

#[test]
fn each_slo_failing_alone_flips_only_its_row() {
    let s = parse(EXAMPLE).unwrap();

    // One POST failed at 30 s (a backend never saw it): only
    // success_ratio. (At 10 s it would fail failover_within too: a failure
    // while primary is down counts as not failed over yet.)
    let mut run = good_run();
    run.outcomes[300].status = Some(503);
    run.processed.as_mut().unwrap().remove("r300");
    assert_eq!(states(&evaluate(&s, &run)), only_failing("success_ratio"));

    // A GET failed, before the fault: only the idempotent ratio (the overall one is
    // 99.95%, within 99.9%).
    let mut s2 = s.clone();
    s2.slo.success_ratio = Some(0.99);
    let mut run = good_run();
    run.outcomes[1].status = None;
    run.processed.as_mut().unwrap().remove("r1");
    let v = evaluate(&s2, &run);
    assert_eq!(states(&v), only_failing("success_ratio_idempotent"));
    assert_eq!(v.rows[1].measured, "99.688% (319 of 320)");

    // Slow answers: 5 of 400 over 250 ms put the p99 at 1 s.
    let mut run = good_run();
    for o in run.outcomes.iter_mut().skip(300).take(5) {
        o.latency = Duration::from_secs(1);
    }
    assert_eq!(states(&evaluate(&s, &run)), only_failing("p99"));

    // A POST processed twice, answered 200: duplicated.
    let mut run = good_run();
    run.processed
        .as_mut()
        .unwrap()
        .get_mut("r5")
        .unwrap()
        .push("primary-2".into());
    assert_eq!(states(&evaluate(&s, &run)), only_failing("max_duplicated"));

    // A GET processed twice is not a duplicate.
    let mut run = good_run();
    run.processed
        .as_mut()
        .unwrap()
        .get_mut("r6")
        .unwrap()
        .push("primary-2".into());
    assert!(evaluate(&s, &run).passed());

    // Primary answers at 8 s, 3 s into its failure: failover too slow.
    let mut run = good_run();
    run.outcomes[80].region = Some("primary".into());
    let v = evaluate(&s, &run);
    assert_eq!(states(&v), only_failing("failover_within"));
    assert_eq!(v.rows[5].measured, "3s (fail region primary)");
}

#[test]
fn lost_and_duplicated_are_exact_from_the_ledger() {
    let s = parse(EXAMPLE).unwrap();
    let mut run = good_run();
    let p = run.processed.as_mut().unwrap();
    // Processed, and the client got a 502 and a timeout: lost.
    run.outcomes[12].status = Some(502);
    run.outcomes[13].status = None;
    // Failed and never processed: not lost.
    run.outcomes[14].status = Some(503);
    p.remove("r14");
    // Answered but processed nowhere (a cache, say): not lost either.
    p.remove("r15");
    // POSTs r10 (3 times) and r20 (twice): duplicated; a PUT twice is not.
    p.insert("r10".into(), vec!["a".into(), "b".into(), "c".into()]);
    p.insert("r20".into(), vec!["a".into(), "a".into()]);
    run.outcomes[21].method = http::Method::PUT;
    p.insert("r21".into(), vec!["a".into(), "b".into()]);
    // A flood request processed and failed counts for nothing.
    run.outcomes[30].flood = true;
    run.outcomes[30].status = Some(429);
    let load: Vec<&Outcome> = run.outcomes.iter().filter(|o| !o.flood).collect();
    let p = run.processed.as_ref().unwrap();
    assert_eq!(verdict_lost(&load, p), vec!["r12", "r13"]);
    assert_eq!(verdict_duplicated(&load, p), vec!["r10", "r20"]);
    let v = evaluate(&s, &run);
    let row = |n: &str| v.rows.iter().find(|r| r.name == n).unwrap().clone();
    assert_eq!(row("max_lost").measured, "2 (r12, r13)");
    assert_eq!(row("max_lost").state, RowState::Fail);
    assert_eq!(row("max_duplicated").measured, "2 (r10, r20)");
}

fn verdict_lost(load: &[&Outcome], p: &HashMap<String, Vec<String>>) -> Vec<String> {
    crate::scenario::verdict::lost(load, p)
}

fn verdict_duplicated(load: &[&Outcome], p: &HashMap<String, Vec<String>>) -> Vec<String> {
    crate::scenario::verdict::duplicated(load, p)
}

#[test]
fn rows_follow_the_slos_set_and_what_is_known() {
    let mut s = parse(EXAMPLE).unwrap();
    s.slo = Slo::default();
    // Nothing set, ledgers known: rows for lost and duplicated only, with
    // no limit to hold them to.
    let v = evaluate(&s, &good_run());
    assert_eq!(
        states(&v),
        vec![
            ("max_duplicated", RowState::NotEvaluated("no limit set".into())),
            ("max_lost", RowState::NotEvaluated("no limit set".into())),
        ]
    );
    assert!(v.passed());
    // Against a running gateway: no ledgers, no regions.
    let s = parse(EXAMPLE).unwrap();
    let mut run = good_run();
    run.processed = None;
    for o in &mut run.outcomes {
        o.region = None;
    }
    let v = evaluate(&s, &run);
    let na: Vec<(&str, RowState)> = states(&v)
        .into_iter()
        .filter(|(_, st)| *st != RowState::Pass)
        .collect();
    assert_eq!(
        na,
        vec![
            ("max_duplicated", RowState::NotEvaluated(NEEDS_LEDGERS.into())),
            ("max_lost", RowState::NotEvaluated(NEEDS_LEDGERS.into())),
            (
                "failover_within",
                RowState::NotEvaluated("the answers name no region".into())
            ),
        ]
    );
    assert!(v.passed());
    // No fault takes a region out.
    let mut s = parse(EXAMPLE).unwrap();
    s.faults[0].target = Selector::Endpoint("primary-1".into());
    let v = evaluate(&s, &good_run());
    assert_eq!(
        v.rows[5].state,
        RowState::NotEvaluated("no fault takes a whole region out".into())
    );
}

#[test]
fn failover_counts_failures_and_uses_the_times_as_run() {
    let s = parse(EXAMPLE).unwrap();
    let mut run = good_run();
    // The fault really started at 5.5 s; a request sent at 7.2 s failed.
    run.steps[0].0 = Duration::from_millis(5500);
    run.outcomes[72].status = Some(503);
    run.outcomes[72].region = None;
    let v = evaluate(&s, &run);
    assert_eq!(v.rows[5].measured, "1.7s (fail region primary)");
    // After the restore, primary answering again does not count.
    assert_eq!(v.rows[5].state, RowState::Pass);
    // Without `for`, the window runs to the end: primary at 30 s counts.
    let mut s2 = s.clone();
    s2.faults[0].lasts = None;
    let mut run = good_run();
    run.steps.truncate(1);
    let v = evaluate(&s2, &run);
    assert_eq!(v.rows[5].measured, "34.9s (fail region primary)");
}

#[test]
fn the_table_is_aligned() {
    let s = parse(EXAMPLE).unwrap();
    let mut run = good_run();
    run.outcomes[300].status = Some(503);
    let mut v = evaluate(&s, &run);
    v.rows.truncate(2);
    v.rows[1].state = RowState::NotEvaluated("no idempotent requests".into());
    assert_eq!(
        v.table(),
        "SLO                      | measured            | limit    | verdict\n\
         -------------------------+---------------------+----------+-----------------------------\n\
         success_ratio            | 99.75% (399 of 400) | >= 99.9% | FAIL\n\
         success_ratio_idempotent | 100% (320 of 320)   | >= 100%  | n/a (no idempotent requests)\n"
    );
    assert!(!v.passed());
}
