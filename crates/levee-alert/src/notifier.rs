//! One notifier: two tasks joined by its bounded queue.
//!
//! The grouping task takes the evaluator's news (never blocking it: the
//! evaluator `try_send`s), applies the notifier's grouping policy and
//! renders each notification due into the queue. The delivery task takes
//! notifications off the queue one at a time, in order, and POSTs each
//! with retries. A receiver that is slow or dead holds up only the
//! delivery task; the queue fills, and what does not fit is dropped and
//! counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use levee_config::{Notifier, NotifierKind};
use levee_core::alert::group::{Grouper, Update};
use levee_core::sync::lock;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert::Alert;
use crate::http::{Failure, Target};
use crate::metrics::{AlertMetrics, NotifierMetrics};
use crate::payload::{self, Context};

/// The news of one evaluation for one notifier.
pub(crate) type News = Vec<Update<Arc<Alert>>>;

/// A notifier's state, as `GET /api/v1/alerts`'s neighbours may show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotifierStatus {
    pub name: String,
    pub kind: &'static str,
    /// When a notification was last delivered (ms since the Unix epoch).
    pub last_success_ms: Option<u64>,
    /// The last failed attempt's reason (never the URL), and when.
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// Notifications waiting for delivery.
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
}

/// What the delivery task reports, read by [`NotifierHandle::status`].
struct Shared {
    name: String,
    kind: NotifierKind,
    metrics: NotifierMetrics,
    last_success_ms: AtomicU64,
    last_error: Mutex<Option<(u64, String)>>,
}

impl Shared {
    fn succeeded(&self) {
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn failed(&self, why: &Failure) {
        let mut last = lock(&self.last_error);
        *last = Some((now_ms(), why.to_string()));
    }
}

/// A running notifier.
pub(crate) struct NotifierHandle {
    pub config: Notifier,
    pub external_url: String,
    news: mpsc::Sender<News>,
    stop: CancellationToken,
    shared: Arc<Shared>,
}

impl NotifierHandle {
    /// Starts the notifier's two tasks on `tracker`; they end when `parent`
    /// is cancelled or [`stop`](Self::stop) is called.
    pub fn start(
        config: Notifier,
        external_url: &str,
        metrics: &AlertMetrics,
        tracker: &TaskTracker,
        parent: &CancellationToken,
    ) -> NotifierHandle {
        let stop = parent.child_token();
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            kind: config.kind,
            metrics: metrics.notifier(&config.name),
            last_success_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        // A restarted notifier's old queue is gone with its tasks.
        shared.metrics.queued.set(0);
        let (news_tx, news_rx) = mpsc::channel(config.queue);
        let (queue_tx, queue_rx) = mpsc::channel(config.queue);
        tracker.spawn(group(
            Grouper::new(config.grouping.clone()),
            news_rx,
            queue_tx,
            Render {
                kind: config.kind,
                receiver: config.name.clone(),
                external_url: external_url.to_string(),
                resend_interval: config.grouping.repeat_interval,
            },
            shared.clone(),
            stop.clone(),
        ));
        let target = Target::new(&config.url).map(|t| match config.kind {
            NotifierKind::Alertmanager => t.join("/api/v2/alerts"),
            _ => t,
        });
        tracker.spawn(deliver(
            queue_rx,
            target,
            config.clone(),
            shared.clone(),
            stop.clone(),
        ));
        NotifierHandle {
            config,
            external_url: external_url.to_string(),
            news: news_tx,
            stop,
            shared,
        }
    }

    /// Hands over an evaluation's news without waiting: when the notifier
    /// is that far behind, the news is dropped and counted.
    pub fn tell(&self, news: News) {
        if news.is_empty() {
            return;
        }
        if self.news.try_send(news).is_err() {
            self.shared.metrics.dropped.inc();
        }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn status(&self) -> NotifierStatus {
        let m = &self.shared.metrics;
        let last_success = self.shared.last_success_ms.load(Ordering::Relaxed);
        let last_error = lock(&self.shared.last_error).clone();
        NotifierStatus {
            name: self.shared.name.clone(),
            kind: self.shared.kind.as_str(),
            last_success_ms: (last_success > 0).then_some(last_success),
            last_error_ms: last_error.as_ref().map(|(at, _)| *at),
            last_error: last_error.map(|(_, why)| why),
            queued: u64::try_from(m.queued.get()).unwrap_or(0),
            sent: m.sent.get(),
            failed: m.failed.get(),
            dropped: m.dropped.get(),
        }
    }
}

struct Render {
    kind: NotifierKind,
    receiver: String,
    external_url: String,
    resend_interval: std::time::Duration,
}

/// The grouping task: news in, rendered notifications out to the queue.
async fn group(
    mut grouper: Grouper<Arc<Alert>>,
    mut news: mpsc::Receiver<News>,
    queue: mpsc::Sender<Bytes>,
    render: Render,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let due = grouper.next_due().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = stop.cancelled() => return,
            n = news.recv() => match n {
                Some(updates) => {
                    let now = now();
                    for u in updates {
                        grouper.update(u, now);
                    }
                }
                None => return,
            },
            _ = sleep_until(due) => {}
        }
        let now_ms = now_ms();
        for batch in grouper.poll(now()) {
            let cx = Context {
                receiver: &render.receiver,
                external_url: &render.external_url,
                now_ms,
                resend_interval: render.resend_interval,
            };
            let body = payload::render(render.kind, &batch, &cx);
            match queue.try_send(body) {
                Ok(()) => {
                    shared.metrics.queued.inc();
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    shared.metrics.dropped.inc();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

/// The delivery task: one notification at a time, each with its retries.
async fn deliver(
    mut queue: mpsc::Receiver<Bytes>,
    target: Result<Target, Failure>,
    config: Notifier,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let body = tokio::select! {
            _ = stop.cancelled() => return,
            b = queue.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        shared.metrics.queued.dec();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = attempts(&target, &config, &shared, body) => {}
        }
    }
}

/// Sends one notification, retrying what may pass with full-jitter
/// exponential backoff, up to `max_retries` times.
async fn attempts(target: &Result<Target, Failure>, config: &Notifier, shared: &Shared, body: Bytes) {
    let target = match target {
        Ok(t) => t,
        Err(why) => {
            shared.failed(why);
            shared.metrics.failed.inc();
            return;
        }
    };
    let mut retry = 0;
    loop {
        match target.post(&config.headers, body.clone(), config.timeout).await {
            Ok(_) => {
                shared.succeeded();
                shared.metrics.sent.inc();
                return;
            }
            Err(why) => {
                shared.failed(&why);
                if !why.retryable() || retry >= config.max_retries {
                    shared.metrics.failed.inc();
                    tracing::warn!(
                        notifier = %config.name,
                        error = %why,
                        attempts = retry + 1,
                        "notification not delivered"
                    );
                    return;
                }
                retry += 1;
                shared.metrics.retries.inc();
                tracing::debug!(notifier = %config.name, error = %why, retry, "notification attempt failed");
                tokio::time::sleep(config.backoff.delay(retry, fastrand::u64(..))).await;
            }
        }
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Monotonic time through tokio's clock, so tests can pause it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) fn now_ms() -> u64 {
    levee_core::calendar::unix_millis(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    //! The grouping task on tokio's paused clock, news in and rendered
    //! notifications out, no receiver: `group_wait`, `group_interval` and
    //! `repeat_interval` are asserted at exact instants.

    use std::time::Duration;

    use levee_config::AlertRule;
    use levee_core::alert::{Instance, State};
    use prometheus_client::registry::Registry;
    use serde_json::Value;
    use tokio::time::Instant;

    use super::*;

    /// A webhook notifier `hook` with these settings, and rule `down`.
    fn config(settings: &str) -> (Notifier, AlertRule) {
        let text = format!(
            "[listener.main]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nname = \"all\"\nupstream = \"app\"\n\n\
             [upstream.app.region.local]\nendpoints = [\"127.0.0.1:9\"]\n\n\
             [alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n{settings}\n\n\
             [[alert]]\nname = \"down\"\nkind = \"endpoint_down\"\n"
        );
        let mut config = levee_config::parse(&text).unwrap();
        (
            config.alerting.notifiers.remove(0),
            config.alerting.rules.remove(0),
        )
    }

    /// The grouping task of `notifier`: its news in, its queue out.
    struct Grouping {
        news: mpsc::Sender<News>,
        queue: mpsc::Receiver<Bytes>,
        rule: AlertRule,
        start: Instant,
        stop: CancellationToken,
    }

    impl Grouping {
        fn start(settings: &str) -> Grouping {
            let (notifier, rule) = config(settings);
            let metrics = AlertMetrics::register(&mut Registry::default());
            let shared = Arc::new(Shared {
                name: notifier.name.clone(),
                kind: notifier.kind,
                metrics: metrics.notifier(&notifier.name),
                last_success_ms: AtomicU64::new(0),
                last_error: Mutex::new(None),
            });
            let (news_tx, news_rx) = mpsc::channel(16);
            let (queue_tx, queue_rx) = mpsc::channel(16);
            let stop = CancellationToken::new();
            let render = Render {
                kind: notifier.kind,
                receiver: notifier.name.clone(),
                external_url: String::new(),
                resend_interval: notifier.grouping.repeat_interval,
            };
            tokio::spawn(group(
                Grouper::new(notifier.grouping.clone()),
                news_rx,
                queue_tx,
                render,
                shared,
                stop.clone(),
            ));
            Grouping {
                news: news_tx,
                queue: queue_rx,
                rule,
                start: Instant::now(),
                stop,
            }
        }

        /// Tells the task that `endpoint`'s alert fires, or resolved.
        async fn tell(&self, endpoint: &str, firing: bool) {
            let instance = Instance {
                labels: vec![("endpoint", endpoint.to_string())],
                value: 1.0,
                state: State::Firing,
                active_since: now(),
                active_since_ms: 1,
                firing_since_ms: Some(1),
            };
            let state = if firing { "firing" } else { "resolved" };
            let alert = Arc::new(Alert::new(&self.rule, &instance, state, None));
            let update = Update {
                id: alert.id(),
                labels: alert.all_labels(),
                firing,
                payload: alert,
            };
            self.news.send(vec![update]).await.unwrap();
        }

        async fn at(&self, ms: u64) {
            tokio::time::sleep_until(self.start + Duration::from_millis(ms)).await;
        }

        /// The next notification: when (ms since the start), its status,
        /// and its alerts' (endpoint, status).
        async fn next(&mut self) -> (u64, String, Vec<(String, String)>) {
            let body = self.queue.recv().await.unwrap();
            let at = u64::try_from(self.start.elapsed().as_millis()).unwrap();
            let json: Value = serde_json::from_slice(&body).unwrap();
            let alerts = json["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["labels"]["endpoint"].as_str().unwrap().to_string(),
                        a["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (at, json["status"].as_str().unwrap().to_string(), alerts)
        }

        /// Whether no notification is waiting.
        fn quiet(&mut self) -> bool {
            self.queue.try_recv().is_err()
        }
    }

    fn alerts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(e, s)| (e.to_string(), s.to_string())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn group_wait_gathers_then_repeat_interval_resends_then_resolutions_go_once() {
        let mut g =
            Grouping::start("group_wait = \"2s\"\ngroup_interval = \"300ms\"\nrepeat_interval = \"4s\"");
        g.tell("a", true).await;
        g.at(200).await;
        g.tell("b", true).await;
        let both = alerts(&[("a", "firing"), ("b", "firing")]);
        assert_eq!(g.next().await, (2_000, "firing".to_string(), both.clone()));
        // Nothing changes: the group again after repeat_interval, exactly.
        assert_eq!(g.next().await, (6_000, "firing".to_string(), both));
        // A resolution after group_interval is sent at once, beside what
        // still fires; one within group_interval waits for its end.
        g.at(7_000).await;
        assert!(g.quiet());
        g.tell("a", false).await;
        assert_eq!(
            g.next().await,
            (
                7_000,
                "firing".to_string(),
                alerts(&[("a", "resolved"), ("b", "firing")])
            )
        );
        g.at(7_100).await;
        g.tell("b", false).await;
        assert_eq!(
            g.next().await,
            (7_300, "resolved".to_string(), alerts(&[("b", "resolved")])),
            "the earlier resolution is not repeated"
        );
        // Then silence: the group is gone.
        g.at(100_000).await;
        assert!(g.quiet());
        g.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn without_send_resolved_only_firing_is_notified() {
        let mut g = Grouping::start(
            "group_wait = \"0s\"\ngroup_interval = \"0s\"\nrepeat_interval = \"1h\"\nsend_resolved = false",
        );
        g.tell("a", true).await;
        let firing = alerts(&[("a", "firing")]);
        assert_eq!(g.next().await, (0, "firing".to_string(), firing.clone()));
        g.at(1_000).await;
        g.tell("a", false).await;
        g.at(5_000).await;
        assert!(g.quiet(), "the resolution is not sent");
        // Firing again is news: sent at once, and nothing was kept of the
        // resolved alert to repeat in between.
        g.tell("a", true).await;
        assert_eq!(g.next().await, (5_000, "firing".to_string(), firing));
        g.at(3_600_000).await;
        assert!(g.quiet());
        g.stop.cancel();
    }
}
