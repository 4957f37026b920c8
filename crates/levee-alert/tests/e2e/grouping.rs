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

/// Delivered for real: the evaluator's news of two evaluations, grouped
/// into one notification, then the resolutions. The exact waits (and the
/// repeats and `send_resolved`) are the grouping task's paused-clock tests
/// in `src/notifier.rs`.
#[tokio::test]
async fn alerts_firing_within_group_wait_arrive_together_then_resolve() {
    let receiver = Receiver::start().await;
    let alerting = Running::start(&format!(
        "[alerting]\nevaluation_interval = \"50ms\"\n\n\
         [alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"2s\"\ngroup_interval = \"300ms\"\n\n\
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
    // One resolves: reported once, beside the one still firing.
    alerting.endpoint("127.0.0.1:2", true);
    let got = receiver.wait_for(2).await;
    assert_eq!(
        endpoints(&got[1]),
        [
            ("127.0.0.1:1".to_string(), "resolved".to_string()),
            ("127.0.0.1:2".to_string(), "firing".to_string())
        ]
    );
    assert_eq!(got[1].body["status"], "firing");
    alerting.source.set(Kind::EndpointDown, vec![]);
    let got = receiver.wait_for(3).await;
    assert_eq!(
        endpoints(&got[2]),
        [("127.0.0.1:2".to_string(), "resolved".to_string())],
        "the earlier resolution is not repeated"
    );
    assert_eq!(got[2].body["status"], "resolved");
    alerting.shutdown().await;
}
