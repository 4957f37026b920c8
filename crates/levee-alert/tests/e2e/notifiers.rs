//! Each payload format, retries, backoff and the bounded queue.

use std::time::{Duration, Instant};

use levee_core::alert::Kind;

use crate::support::{Blackhole, Receiver, Running, endpoint};

/// `levee_alert_notifications_total` of notifier "hook" for `result`.
fn hook(result: &str) -> String {
    format!("levee_alert_notifications_total{{notifier=\"hook\",result=\"{result}\"}}")
}

const HOOK_RETRIES: &str = "levee_alert_notification_retries_total{notifier=\"hook\"}";

/// One rule on endpoint_down, firing at once, to `notifier`.
fn rules(notifier: &str) -> String {
    format!(
        "[alerting]\nevaluation_interval = \"50ms\"\n\n{notifier}\n\n[[alert]]\nname = \"down\"\nkind = \"endpoint_down\"\nseverity = \"critical\"\nrunbook_url = \"https://runbooks.example.com/down\"\n"
    )
}

#[tokio::test]
async fn webhook_gets_firing_then_resolved_in_alertmanagers_webhook_format() {
    let receiver = Receiver::start().await;
    let alerting = Running::start(&rules(&format!(
        "[alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\nheaders = {{ authorization = \"Bearer t0ken\" }}\ngroup_wait = \"0s\"\ngroup_interval = \"0s\"\n",
        receiver.url("/hooks/levee?x=1")
    )));
    alerting.endpoint("127.0.0.1:1", true);
    let got = receiver.wait_for(1).await;
    let n = &got[0];
    assert_eq!(n.path, "/hooks/levee");
    assert_eq!(n.headers["authorization"], "Bearer t0ken");
    assert_eq!(n.headers["content-type"], "application/json");
    let b = &n.body;
    assert_eq!(b["version"], "4");
    assert_eq!(b["receiver"], "hook");
    assert_eq!(b["status"], "firing");
    assert_eq!(b["groupLabels"]["alertname"], "down");
    let a = &b["alerts"][0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["rule"], "down");
    assert_eq!(a["kind"], "endpoint_down");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["value"], 1.0);
    assert_eq!(a["labels"]["endpoint"], "127.0.0.1:1");
    assert_eq!(a["labels"]["upstream"], "app");
    assert_eq!(
        a["annotations"]["summary"],
        "endpoint 127.0.0.1:1 of app (region local) is down"
    );
    assert_eq!(
        a["annotations"]["runbook_url"],
        "https://runbooks.example.com/down"
    );
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a["generatorURL"], "http://127.0.0.1:9901/#alerts");

    alerting.endpoint("127.0.0.1:1", false);
    let got = receiver.wait_for(2).await;
    let b = &got[1].body;
    assert_eq!(b["status"], "resolved");
    assert_eq!(b["alerts"][0]["status"], "resolved");
    assert_ne!(b["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    alerting.eventually_metric(&hook("sent"), 2.0).await;
    let status = &alerting.alerting.notifiers()[0];
    assert_eq!((status.name.as_str(), status.kind), ("hook", "webhook"));
    assert!(status.last_success_ms.is_some() && status.last_error.is_none());
    alerting.shutdown().await;
}

#[tokio::test]
async fn slack_gets_its_incoming_webhook_shape() {
    let receiver = Receiver::start().await;
    let alerting = Running::start(&rules(&format!(
        "[alerting.notifier.chat]\nkind = \"slack\"\nurl = \"{}\"\ngroup_wait = \"0s\"\ngroup_interval = \"0s\"\n",
        receiver.url("/services/T0/B0/secret")
    )));
    alerting.endpoint("127.0.0.1:1", true);
    let got = receiver.wait_for(1).await;
    let b = &got[0].body;
    assert_eq!(got[0].path, "/services/T0/B0/secret");
    assert_eq!(b["text"], "[FIRING:1] down");
    let att = &b["attachments"][0];
    assert_eq!(att["color"], "#d93025", "critical is red");
    assert_eq!(att["title"], "[FIRING] down (critical)");
    assert!(
        att["text"]
            .as_str()
            .unwrap()
            .contains("<https://runbooks.example.com/down|Runbook>")
    );
    alerting.source.set(Kind::EndpointDown, vec![]);
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].body["text"], "[RESOLVED:1] down");
    assert_eq!(
        got[1].body["attachments"][0]["color"], "#2eb886",
        "resolved is green"
    );
    alerting.shutdown().await;
}

#[tokio::test]
async fn alertmanager_gets_every_alert_on_api_v2_and_again_each_resend_interval() {
    let receiver = Receiver::start().await;
    let alerting = Running::start(&rules(&format!(
        "[alerting.notifier.am]\nkind = \"alertmanager\"\nurl = \"{}\"\nresend_interval = \"300ms\"\n",
        receiver.url("/")
    )));
    alerting.source.set(
        Kind::EndpointDown,
        vec![endpoint("127.0.0.1:1", true), endpoint("127.0.0.1:2", true)],
    );
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path, "/api/v2/alerts");
    let list = got[0].body.as_array().unwrap();
    assert_eq!(list.len(), 2, "one evaluation's alerts in one post: {list:?}");
    assert_eq!(list[0]["labels"]["alertname"], "down");
    assert_eq!(list[0]["labels"]["severity"], "critical");
    assert!(list[0]["endsAt"].as_str().unwrap() > list[0]["startsAt"].as_str().unwrap());
    // Re-posted while firing, with nothing changed.
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].body.as_array().unwrap().len(), 2);
    // One resolves: posted at once with its endsAt, beside the one still firing.
    alerting.endpoint("127.0.0.1:2", true);
    levee_testkit::eventually(crate::support::SETTLE, "the resolution posted", || {
        receiver.received().iter().any(|r| {
            r.body.as_array().is_some_and(|l| {
                l.iter().any(|a| {
                    a["labels"]["endpoint"] == "127.0.0.1:1"
                        && a["endsAt"].as_str() <= Some(r.at_rfc3339.as_str())
                })
            })
        })
    })
    .await;
    alerting.shutdown().await;
}

#[tokio::test]
async fn a_failed_delivery_is_retried_until_it_passes() {
    let receiver = Receiver::start().await;
    receiver.answer_next(&[500, 503]);
    let alerting = Running::start(&rules(&format!(
        "[alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\nbackoff_base = \"20ms\"\nbackoff_max = \"50ms\"\n",
        receiver.url("/")
    )));
    alerting.endpoint("127.0.0.1:1", true);
    let got = receiver.wait_for(3).await;
    assert_eq!(got[0].body, got[2].body, "the same notification, tried again");
    alerting.eventually_metric(&hook("sent"), 1.0).await;
    assert_eq!(alerting.metric(HOOK_RETRIES), 2.0);
    assert_eq!(alerting.metric(&hook("failed")), 0.0);
    let status = &alerting.alerting.notifiers()[0];
    assert_eq!(status.last_error.as_deref(), Some("answered HTTP 503"));
    assert!(status.last_success_ms.is_some());
    alerting.shutdown().await;
}

#[tokio::test]
async fn retries_back_off_within_their_cap_and_then_give_up() {
    let receiver = Receiver::start().await;
    receiver.always(500);
    let alerting = Running::start(&rules(&format!(
        "[alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\nmax_retries = 8\nbackoff_base = \"100ms\"\nbackoff_max = \"100ms\"\n",
        receiver.url("/")
    )));
    alerting.endpoint("127.0.0.1:1", true);
    alerting.eventually_metric(&hook("failed"), 1.0).await;
    let got = receiver.received();
    assert_eq!(got.len(), 9, "the first attempt and 8 retries");
    assert_eq!(alerting.metric(HOOK_RETRIES), 8.0);
    // Capped at 100 ms each, 8 waits take under a second; uncapped
    // doubling from 100 ms would take about 13 s on average.
    let spread = got[8].at.duration_since(got[0].at);
    println!("9 attempts over {spread:?}");
    assert!(spread < Duration::from_secs(5), "{spread:?}");
    alerting.shutdown().await;
}

#[tokio::test]
async fn a_refused_notification_is_not_retried() {
    let receiver = Receiver::start().await;
    receiver.always(400);
    let alerting = Running::start(&rules(&format!(
        "[alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\n",
        receiver.url("/")
    )));
    alerting.endpoint("127.0.0.1:1", true);
    alerting.eventually_metric(&hook("failed"), 1.0).await;
    assert_eq!(receiver.received().len(), 1);
    alerting.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_fills_the_queue_and_nothing_else() {
    let hole = Blackhole::start().await.unwrap();
    // Each alert its own group, sent at once: every change is a notification.
    let alerting = Running::start(&rules(&format!(
        "[alerting.notifier.dead]\nkind = \"webhook\"\nurl = \"http://{}/\"\ngroup_by = [\"...\"]\ngroup_wait = \"0s\"\ntimeout = \"5s\"\nmax_retries = 0\nqueue = 2\n",
        hole.addr()
    )));
    let started = Instant::now();
    let mut facts = Vec::new();
    for i in 1..=20 {
        facts.push(endpoint(&format!("127.0.0.1:{i}"), true));
        alerting.source.set(Kind::EndpointDown, facts.clone());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // The evaluator kept up: every alert is active, whatever the receiver does.
    levee_testkit::eventually(crate::support::SETTLE, "20 active alerts", || {
        alerting.alerting.alerts().len() == 20
    })
    .await;
    alerting
        .eventually_metric("levee_alert_notifications_dropped_total{notifier=\"dead\"}", 1.0)
        .await;
    let queued = alerting.metric("levee_alert_notifications_queued{notifier=\"dead\"}");
    assert!(queued <= 2.0, "the queue is bounded: {queued}");
    assert_eq!(hole.connections(), 1, "one delivery at a time");
    println!(
        "after {:?}: dropped {}, queued {queued}",
        started.elapsed(),
        alerting.metric("levee_alert_notifications_dropped_total{notifier=\"dead\"}")
    );
    // The attempt times out and counts as failed.
    alerting
        .eventually_metric(
            "levee_alert_notifications_total{notifier=\"dead\",result=\"failed\"}",
            1.0,
        )
        .await;
    let status = &alerting.alerting.notifiers()[0];
    assert_eq!(status.last_error.as_deref(), Some("no answer within 5000ms"));
    alerting.shutdown().await;
}

#[tokio::test]
async fn errors_never_show_the_url() {
    // Nothing listens on port 9 of loopback: connections are refused.
    let alerting = Running::start(&rules(
        "[alerting.notifier.hook]\nkind = \"slack\"\nurl = \"http://127.0.0.1:9/services/s3cret\"\ngroup_wait = \"0s\"\nmax_retries = 0\n",
    ));
    alerting.endpoint("127.0.0.1:1", true);
    alerting.eventually_metric(&hook("failed"), 1.0).await;
    let error = alerting.alerting.notifiers()[0].last_error.clone().unwrap();
    assert!(error.starts_with("connect:"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    alerting.shutdown().await;
}
