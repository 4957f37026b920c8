//! The evaluator: states, events, the active list, metrics and reloads.

use std::time::Duration;

use levee_core::alert::{Fact, Kind};

use crate::support::{Receiver, Running, SETTLE};

#[tokio::test]
async fn for_holds_an_alert_pending_and_pending_is_never_notified() {
    let receiver = Receiver::start().await;
    let alerting = Running::start(&format!(
        "[alerting]\nevaluation_interval = \"50ms\"\n\n\
         [alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\ngroup_interval = \"0s\"\n\n\
         [[alert]]\nname = \"down\"\nkind = \"endpoint_down\"\nfor = \"600ms\"\n",
        receiver.url("/")
    ));
    // A blip shorter than `for`: pending, then inactive, never notified.
    alerting.endpoint("127.0.0.1:1", true);
    levee_testkit::eventually(SETTLE, "pending", || {
        alerting
            .alerting
            .alerts()
            .first()
            .is_some_and(|a| a.state == "pending")
    })
    .await;
    let pending = alerting.alerting.alerts()[0].clone();
    assert_eq!(pending.firing_since_ms, None);
    alerting.endpoint("127.0.0.1:1", false);
    levee_testkit::eventually(SETTLE, "inactive", || alerting.alerting.alerts().is_empty()).await;
    // Held past `for`: firing, notified.
    alerting.endpoint("127.0.0.1:1", true);
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].body["alerts"][0]["status"], "firing");
    let firing = alerting.alerting.alerts()[0].clone();
    assert_eq!(firing.state, "firing");
    let held = firing.firing_since_ms.unwrap() - firing.active_since_ms;
    assert!(held >= 600, "fired after {held} ms");
    assert_eq!(
        alerting.events(),
        [
            ("down".to_string(), "pending", "127.0.0.1:1".to_string()),
            ("down".to_string(), "inactive", "127.0.0.1:1".to_string()),
            ("down".to_string(), "pending", "127.0.0.1:1".to_string()),
            ("down".to_string(), "firing", "127.0.0.1:1".to_string()),
        ]
    );
    assert_eq!(receiver.received().len(), 1);
    alerting.shutdown().await;
}

#[tokio::test]
async fn the_active_list_serialises_as_the_api_shows_it_and_the_gauge_counts_firing() {
    let alerting = Running::start(
        "[alerting]\nevaluation_interval = \"50ms\"\n\n\
         [[alert]]\nname = \"app-failover\"\nkind = \"failover_active\"\nseverity = \"critical\"\n\
         labels = { team = \"edge\" }\nrunbook_url = \"https://runbooks.example.com/failover\"\n",
    );
    alerting.source.set(
        Kind::FailoverActive,
        vec![Fact {
            labels: vec![("upstream", "app".to_string())],
            value: 1.0,
        }],
    );
    alerting
        .eventually_metric(
            "levee_alerts_firing{rule=\"app-failover\",severity=\"critical\"}",
            1.0,
        )
        .await;
    let json = serde_json::to_value(&*alerting.alerting.alerts()).unwrap();
    let a = &json[0];
    assert_eq!(a["rule"], "app-failover");
    assert_eq!(a["kind"], "failover_active");
    assert_eq!(a["state"], "firing");
    assert_eq!(a["severity"], "critical");
    assert_eq!(
        a["labels"],
        serde_json::json!({"upstream": "app", "team": "edge"})
    );
    assert_eq!(
        a["annotations"]["summary"],
        "app: 100% of requests failed over from the preferred region"
    );
    assert_eq!(
        a["annotations"]["runbook_url"],
        "https://runbooks.example.com/failover"
    );
    assert_eq!(a["value"], 1.0);
    assert!(a["active_since_ms"].as_u64().unwrap() > 0);
    assert_eq!(a["firing_since_ms"], a["active_since_ms"]);
    assert!(a.get("resolved_ms").is_none());
    alerting.source.set(Kind::FailoverActive, vec![]);
    levee_testkit::eventually(SETTLE, "the gauge back to 0", || {
        alerting.metric("levee_alerts_firing{rule=\"app-failover\",severity=\"critical\"}") == 0.0
    })
    .await;
    alerting.shutdown().await;
}

// No receiver, so on the paused clock: the 300 ms without an alert span
// six evaluation intervals however busy the machine is.
#[tokio::test(start_paused = true)]
async fn upstream_filters_pick_their_facts() {
    let alerting = Running::start(
        "[alerting]\nevaluation_interval = \"50ms\"\n\n\
         [[alert]]\nname = \"app-errors\"\nkind = \"error_ratio\"\nupstream = \"app\"\nthreshold = 0.1\n",
    );
    let fact = |upstream: &str, value| Fact {
        labels: vec![("upstream", upstream.to_string())],
        value,
    };
    alerting
        .source
        .set(Kind::ErrorRatio, vec![fact("other", 0.9), fact("app", 0.05)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alerting.alerting.alerts().is_empty(),
        "other is not watched; app is below"
    );
    alerting
        .source
        .set(Kind::ErrorRatio, vec![fact("other", 0.9), fact("app", 0.25)]);
    levee_testkit::eventually(SETTLE, "app's alert", || alerting.alerting.alerts().len() == 1).await;
    let a = alerting.alerting.alerts()[0].clone();
    assert_eq!(a.annotations["summary"], "app: 25% of responses are errors");
    alerting.shutdown().await;
}

#[tokio::test]
async fn a_reload_keeps_what_stays_resolves_what_goes_and_tells_new_notifiers() {
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let notifier = |name: &str, r: &Receiver| {
        format!(
            "[alerting.notifier.{name}]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\ngroup_interval = \"0s\"\n\n",
            r.url("/")
        )
    };
    let rule = |name: &str| format!("[[alert]]\nname = \"{name}\"\nkind = \"endpoint_down\"\n\n");
    let head = "[alerting]\nevaluation_interval = \"50ms\"\n\n";
    let alerting = Running::start(&format!(
        "{head}{}{}{}",
        notifier("one", &first),
        rule("stays"),
        rule("goes")
    ));
    alerting.endpoint("127.0.0.1:1", true);
    let got = first.wait_for(1).await;
    assert_eq!(
        got[0].body["alerts"].as_array().unwrap().len(),
        1,
        "one group per rule"
    );
    first.wait_for(2).await;
    let firing_since = alerting.alerting.alerts()[0].firing_since_ms;

    alerting.reload(&format!(
        "{head}{}{}{}",
        notifier("one", &first),
        notifier("two", &second),
        rule("stays")
    ));
    // The new notifier hears what fires now.
    let got = second.wait_for(1).await;
    assert_eq!(got[0].body["alerts"][0]["rule"], "stays");
    // The kept one hears that "goes" resolved, and nothing about "stays".
    let got = first.wait_for(3).await;
    assert_eq!(got[2].body["alerts"][0]["rule"], "goes");
    assert_eq!(got[2].body["status"], "resolved");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first.received().len(), 3);
    // "stays" kept its state.
    let active = alerting.alerting.alerts();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].firing_since_ms, firing_since);
    assert!(
        alerting
            .events()
            .contains(&("goes".to_string(), "resolved", "127.0.0.1:1".to_string())),
        "{:?}",
        alerting.events()
    );
    assert_eq!(alerting.alerting.notifiers().len(), 2);
    alerting.shutdown().await;
}
