//! Grouping, repeats and resolved notifications over real deliveries.

use std::time::Duration;

use levee_core::alert::Kind;

use crate::support::{Receiver, Running, endpoint};

fn endpoints(received: &crate::support::Received) -> Vec<(String, String)> {
    received.body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["endpoint"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn alerts_firing_within_group_wait_arrive_together_then_repeat_then_resolve() {
    let receiver = Receiver::start().await;
    let alerting = Running::start(&format!(
        "[alerting]\nevaluation_interval = \"50ms\"\n\n\
         [alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"2s\"\ngroup_interval = \"300ms\"\nrepeat_interval = \"4s\"\n\n\
         [[alert]]\nname = \"down\"\nkind = \"endpoint_down\"\n",
        receiver.url("/")
    ));
    alerting.endpoint("127.0.0.1:1", true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    alerting.source.set(
        Kind::EndpointDown,
        vec![endpoint("127.0.0.1:1", true), endpoint("127.0.0.1:2", true)],
    );
    let got = receiver.wait_for(1).await;
    assert_eq!(
        endpoints(&got[0]),
        [
            ("127.0.0.1:1".to_string(), "firing".to_string()),
            ("127.0.0.1:2".to_string(), "firing".to_string())
        ],
        "both alerts in the one notification"
    );
    // Nothing changes: the group is sent again after repeat_interval, not before.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(receiver.received().len(), 1, "no repeat before repeat_interval");
    let got = receiver.wait_for(2).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_secs(4), "repeated after {gap:?}");
    assert_eq!(endpoints(&got[1]).len(), 2);
    // One resolves: reported once, beside the one still firing.
    alerting.endpoint("127.0.0.1:2", true);
    let got = receiver.wait_for(3).await;
    assert_eq!(
        endpoints(&got[2]),
        [
            ("127.0.0.1:1".to_string(), "resolved".to_string()),
            ("127.0.0.1:2".to_string(), "firing".to_string())
        ]
    );
    assert_eq!(got[2].body["status"], "firing");
    alerting.source.set(Kind::EndpointDown, vec![]);
    let got = receiver.wait_for(4).await;
    assert_eq!(
        endpoints(&got[3]),
        [("127.0.0.1:2".to_string(), "resolved".to_string())],
        "the earlier resolution is not repeated"
    );
    assert_eq!(got[3].body["status"], "resolved");
    // And then silence: the group is gone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.received().len(), 4);
    alerting.shutdown().await;
}

#[tokio::test]
async fn without_send_resolved_only_firing_is_notified() {
    let receiver = Receiver::start().await;
    let alerting = Running::start(&format!(
        "[alerting]\nevaluation_interval = \"50ms\"\n\n\
         [alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\ngroup_interval = \"0s\"\nsend_resolved = false\n\n\
         [[alert]]\nname = \"down\"\nkind = \"endpoint_down\"\n",
        receiver.url("/")
    ));
    alerting.endpoint("127.0.0.1:1", true);
    receiver.wait_for(1).await;
    alerting.source.set(Kind::EndpointDown, vec![]);
    levee_testkit::eventually(crate::support::SETTLE, "the resolution seen", || {
        alerting.events().iter().any(|(_, state, _)| *state == "resolved")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
    alerting.shutdown().await;
}
