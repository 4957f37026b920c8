//! Alerting's metrics, added to the gateway's registry. Label values are
//! names from the config (rules, notifiers) and closed sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RuleLabels {
    pub rule: String,
    /// A [`levee_config::Severity`].
    pub severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct NotifierLabels {
    pub notifier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub notifier: String,
    /// `sent` or `failed` (every attempt failed, or one was refused).
    pub result: &'static str,
}

/// The handles alerting records into.
#[derive(Clone, Default)]
pub struct AlertMetrics {
    pub(crate) firing: Family<RuleLabels, Gauge>,
    pub(crate) notifications: Family<ResultLabels, Counter>,
    pub(crate) dropped: Family<NotifierLabels, Counter>,
    pub(crate) retries: Family<NotifierLabels, Counter>,
    pub(crate) queued: Family<NotifierLabels, Gauge>,
}

impl AlertMetrics {
    /// Registers alerting's metrics in `registry` (the gateway's, prefixed
    /// `levee`): `levee_alerts_firing`, `levee_alert_notifications_total`,
    /// `levee_alert_notifications_dropped_total`,
    /// `levee_alert_notification_retries_total` and
    /// `levee_alert_notifications_queued`.
    pub fn register(registry: &mut Registry) -> AlertMetrics {
        let m = AlertMetrics::default();
        registry.register(
            "alerts_firing",
            "Alerts firing now, by rule and severity",
            m.firing.clone(),
        );
        registry.register(
            "alert_notifications",
            "Notifications a notifier finished with, by result (sent, failed after its retries)",
            m.notifications.clone(),
        );
        registry.register(
            "alert_notifications_dropped",
            "Notifications dropped because the notifier's queue was full (its receiver slow or down)",
            m.dropped.clone(),
        );
        registry.register(
            "alert_notification_retries",
            "Delivery attempts repeated after a failure",
            m.retries.clone(),
        );
        registry.register(
            "alert_notifications_queued",
            "Notifications waiting for delivery",
            m.queued.clone(),
        );
        m
    }

    /// Every series of a notifier, visible from the start at 0.
    pub(crate) fn notifier(&self, name: &str) -> NotifierMetrics {
        let labels = NotifierLabels {
            notifier: name.to_string(),
        };
        let result = |result| ResultLabels {
            notifier: name.to_string(),
            result,
        };
        NotifierMetrics {
            sent: self.notifications.get_or_create_owned(&result("sent")),
            failed: self.notifications.get_or_create_owned(&result("failed")),
            dropped: self.dropped.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            queued: self.queued.get_or_create_owned(&labels),
        }
    }

    /// Forgets a notifier's series (removed by a reload).
    pub(crate) fn remove_notifier(&self, name: &str) {
        let labels = NotifierLabels {
            notifier: name.to_string(),
        };
        for result in ["sent", "failed"] {
            self.notifications.remove(&ResultLabels {
                notifier: name.to_string(),
                result,
            });
        }
        self.dropped.remove(&labels);
        self.retries.remove(&labels);
        self.queued.remove(&labels);
    }
}

/// One notifier's series, resolved once.
#[derive(Clone)]
pub(crate) struct NotifierMetrics {
    pub sent: Counter,
    pub failed: Counter,
    pub dropped: Counter,
    pub retries: Counter,
    pub queued: Gauge,
}
