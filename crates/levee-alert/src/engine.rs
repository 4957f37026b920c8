//! The evaluator: one task that, every `evaluation_interval`, asks the
//! [`Source`] for each rule's facts, steps each rule's states, publishes
//! every change, tells the notifiers, and keeps the list of active alerts
//! for the API.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use levee_config::{AlertRule, Config};
use levee_core::alert::group::Update;
use levee_core::alert::{Change, Fact, RuleState, Source, State};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert::Alert;
use crate::metrics::{AlertMetrics, RuleLabels};
use crate::notifier::{News, NotifierHandle, NotifierStatus, now, now_ms};

/// What the evaluator reads and whom it tells.
pub struct Inputs {
    /// The config in force, read at every evaluation: a new one (after a
    /// reload) is applied then.
    pub config: Arc<dyn Fn() -> Arc<Config> + Send + Sync>,
    /// The facts rules are evaluated on.
    pub source: Arc<dyn Source + Send + Sync>,
    /// Notified when what the facts say may have changed (an endpoint's
    /// health, a failover, a reload): the rules are evaluated at once, so
    /// an alert waits for no tick.
    pub changed: Arc<tokio::sync::Notify>,
    /// Told every state change (`pending`, `firing`, `resolved`,
    /// `inactive`), on the evaluator's task: it must not block.
    pub publish: Arc<dyn Fn(&Alert) + Send + Sync>,
}

/// A handle on running alerting: what is active, how the notifiers fare.
#[derive(Clone)]
pub struct Alerting {
    shared: Arc<Shared>,
}

struct Shared {
    active: ArcSwap<Vec<Alert>>,
    notifiers: ArcSwap<Vec<Arc<NotifierHandle>>>,
}

impl Alerting {
    /// Starts the evaluator and the notifiers on `tracker`. They stop when
    /// `stop` is cancelled. The first evaluation happens at once.
    pub fn start(
        inputs: Inputs,
        metrics: AlertMetrics,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Alerting {
        let shared = Arc::new(Shared {
            active: ArcSwap::from_pointee(Vec::new()),
            notifiers: ArcSwap::from_pointee(Vec::new()),
        });
        let config = (inputs.config)();
        let mut evaluator = Evaluator {
            inputs,
            metrics,
            tracker: tracker.clone(),
            stop: stop.clone(),
            shared: shared.clone(),
            config: config.clone(),
            rules: Vec::new(),
            notifiers: BTreeMap::new(),
            firing_series: HashSet::new(),
        };
        evaluator.reconfigure(config, true);
        tracker.spawn(evaluator.run());
        Alerting { shared }
    }

    /// The alerts pending or firing now, as of the last evaluation, rule by
    /// rule in config order.
    pub fn alerts(&self) -> Arc<Vec<Alert>> {
        self.shared.active.load_full()
    }

    /// Each notifier's delivery state.
    pub fn notifiers(&self) -> Vec<NotifierStatus> {
        self.shared.notifiers.load().iter().map(|n| n.status()).collect()
    }
}

struct RuleRun {
    rule: AlertRule,
    state: RuleState,
}

struct Evaluator {
    inputs: Inputs,
    metrics: AlertMetrics,
    tracker: TaskTracker,
    stop: CancellationToken,
    shared: Arc<Shared>,
    /// The config last applied.
    config: Arc<Config>,
    rules: Vec<RuleRun>,
    notifiers: BTreeMap<String, Arc<NotifierHandle>>,
    /// `levee_alerts_firing` series set, to remove those of gone rules.
    firing_series: HashSet<RuleLabels>,
}

impl Evaluator {
    async fn run(mut self) {
        let mut ticks = ticker(self.config.alerting.evaluation_interval);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = ticks.tick() => {}
                () = self.inputs.changed.notified() => {}
            }
            let latest = (self.inputs.config)();
            if !Arc::ptr_eq(&latest, &self.config) {
                let every = latest.alerting.evaluation_interval;
                let changed = every != self.config.alerting.evaluation_interval;
                self.reconfigure(latest, false);
                if changed {
                    ticks = ticker(every);
                }
            }
            self.evaluate();
        }
    }

    /// One evaluation of every rule.
    fn evaluate(&mut self) {
        let now = now();
        let now_ms = now_ms();
        let mut news: BTreeMap<&str, News> = BTreeMap::new();
        for run in &mut self.rules {
            let rule = &run.rule;
            let facts: Vec<Fact> = self
                .inputs
                .source
                .facts(rule.condition.kind, rule.window, now)
                .into_iter()
                .filter(|f| rule.selects(f))
                .collect();
            for t in run.state.step(&rule.condition, &facts, now, now_ms) {
                let alert = Arc::new(Alert::new(rule, &t.instance, t.change.as_str(), t.resolved_ms));
                (self.inputs.publish)(&alert);
                let firing = match t.change {
                    Change::Firing => true,
                    Change::Resolved => false,
                    // Pending alerts are the dashboard's, not the receivers'.
                    Change::Pending | Change::Inactive => continue,
                };
                for n in &rule.notifiers {
                    news.entry(n.as_str()).or_default().push(update(&alert, firing));
                }
            }
        }
        for (name, updates) in news {
            if let Some(n) = self.notifiers.get(name) {
                n.tell(updates);
            }
        }
        self.show_active();
    }

    /// Applies a config: notifiers whose settings changed restart, rules
    /// that keep their name and kind keep their state, and each notifier
    /// is told what now fires for it and what no longer does.
    fn reconfigure(&mut self, latest: Arc<Config>, first: bool) {
        let now_ms = now_ms();
        let alerting = &latest.alerting;
        let before = self.routes();

        let mut old_notifiers = std::mem::take(&mut self.notifiers);
        let mut fresh: HashSet<String> = HashSet::new();
        for n in &alerting.notifiers {
            let handle = match old_notifiers.remove(&n.name) {
                Some(h) if h.config == *n && h.external_url == alerting.external_url => h,
                old => {
                    if let Some(h) = old {
                        h.stop();
                    }
                    fresh.insert(n.name.clone());
                    Arc::new(NotifierHandle::start(
                        n.clone(),
                        &alerting.external_url,
                        &self.metrics,
                        &self.tracker,
                        &self.stop,
                    ))
                }
            };
            self.notifiers.insert(n.name.clone(), handle);
        }
        for (name, h) in old_notifiers {
            h.stop();
            self.metrics.remove_notifier(&name);
        }

        let mut old_rules: BTreeMap<String, RuleRun> =
            self.rules.drain(..).map(|r| (r.rule.name.clone(), r)).collect();
        let mut ended = Vec::new();
        for rule in &alerting.rules {
            let state = match old_rules.remove(&rule.name) {
                Some(old) if old.rule.condition.kind == rule.condition.kind => old.state,
                Some(old) => {
                    ended.push(old);
                    RuleState::new()
                }
                None => RuleState::new(),
            };
            self.rules.push(RuleRun {
                rule: rule.clone(),
                state,
            });
        }
        ended.extend(old_rules.into_values());
        for mut run in ended {
            for t in run.state.clear(now_ms) {
                let alert = Alert::new(&run.rule, &t.instance, t.change.as_str(), t.resolved_ms);
                (self.inputs.publish)(&alert);
            }
        }

        // What each notifier must now hear: a kept notifier, that an alert
        // no longer fires for it; a fresh one, everything that fires.
        let after = self.routes();
        let mut news: BTreeMap<&str, News> = BTreeMap::new();
        for ((notifier, id), alert) in &before {
            if !after.contains_key(&(notifier.clone(), id.clone())) && !fresh.contains(notifier) {
                let resolved = Arc::new(alert.resolved_at(now_ms));
                news.entry(notifier.as_str())
                    .or_default()
                    .push(update(&resolved, false));
            }
        }
        for ((notifier, id), alert) in &after {
            if fresh.contains(notifier) || !before.contains_key(&(notifier.clone(), id.clone())) {
                news.entry(notifier.as_str())
                    .or_default()
                    .push(update(alert, true));
            }
        }
        for (name, updates) in news {
            if let Some(n) = self.notifiers.get(name) {
                n.tell(updates);
            }
        }

        let wanted: HashSet<RuleLabels> = self.rules.iter().map(|r| series(&r.rule)).collect();
        for gone in self.firing_series.difference(&wanted) {
            self.metrics.firing.remove(gone);
        }
        self.firing_series = wanted;
        self.shared
            .notifiers
            .store(Arc::new(self.notifiers.values().cloned().collect()));
        self.config = latest;
        if !first {
            tracing::info!(
                rules = self.rules.len(),
                notifiers = self.notifiers.len(),
                "alerting reconfigured"
            );
        }
        self.show_active();
    }

    /// Every (notifier, alert id) a firing alert goes to, with the alert.
    fn routes(&self) -> BTreeMap<(String, String), Arc<Alert>> {
        let mut routes = BTreeMap::new();
        for run in &self.rules {
            for instance in run.state.instances().filter(|i| i.state == State::Firing) {
                let alert = Arc::new(Alert::new(&run.rule, instance, "firing", None));
                let id = alert.id();
                for n in &run.rule.notifiers {
                    routes.insert((n.clone(), id.clone()), alert.clone());
                }
            }
        }
        routes
    }

    /// Publishes the active alerts and the firing gauges.
    fn show_active(&self) {
        let mut active = Vec::new();
        for run in &self.rules {
            let mut firing = 0;
            for instance in run.state.instances() {
                if instance.state == State::Firing {
                    firing += 1;
                }
                active.push(Alert::new(&run.rule, instance, instance.state.as_str(), None));
            }
            self.metrics.firing.get_or_create(&series(&run.rule)).set(firing);
        }
        self.shared.active.store(Arc::new(active));
    }
}

fn update(alert: &Arc<Alert>, firing: bool) -> Update<Arc<Alert>> {
    Update {
        id: alert.id(),
        labels: alert.all_labels(),
        firing,
        payload: alert.clone(),
    }
}

fn series(rule: &AlertRule) -> RuleLabels {
    RuleLabels {
        rule: rule.name.clone(),
        severity: rule.severity.as_str(),
    }
}

/// Ticks every `every`, the first at once; a late tick is not caught up
/// (evaluations that were missed are simply missed).
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

#[cfg(test)]
mod tests {
    //! The evaluator on tokio's paused clock: evaluations happen at exact
    //! instants, so `for`, resolution and the evaluation interval are
    //! asserted to the millisecond.

    use std::sync::Mutex;

    use levee_core::alert::{Fact, Kind, Source};
    use prometheus_client::registry::Registry;
    use tokio::time::Instant;

    use super::*;

    /// `endpoint_down` facts: each endpoint the test named, down or up.
    #[derive(Default)]
    struct Endpoints(Mutex<BTreeMap<&'static str, bool>>);

    impl Source for Endpoints {
        fn facts(&self, _kind: Kind, _window: Duration, _now: std::time::Instant) -> Vec<Fact> {
            let endpoints = self.0.lock().unwrap();
            endpoints
                .iter()
                .map(|(&endpoint, &down)| Fact {
                    labels: vec![
                        ("upstream", "app".to_string()),
                        ("region", "local".to_string()),
                        ("endpoint", endpoint.to_string()),
                    ],
                    value: if down { 1.0 } else { 0.0 },
                })
                .collect()
        }
    }

    fn config(alerting: &str) -> Arc<Config> {
        let text = format!(
            "[listener.main]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nname = \"all\"\nupstream = \"app\"\n\n\
             [upstream.app.region.local]\nendpoints = [\"127.0.0.1:9\"]\n\n{alerting}"
        );
        Arc::new(levee_config::parse(&text).unwrap())
    }

    /// A state change: ms since the start, the state, the endpoint.
    type Logged = (u64, &'static str, String);

    /// Alerting on [`Endpoints`], each state change logged with the
    /// milliseconds since the start.
    struct Run {
        alerting: Alerting,
        source: Arc<Endpoints>,
        changed: Arc<tokio::sync::Notify>,
        config: Arc<Mutex<Arc<Config>>>,
        log: Arc<Mutex<Vec<Logged>>>,
        stop: CancellationToken,
        tracker: TaskTracker,
    }

    impl Run {
        fn start(alerting: &str) -> Run {
            let start = Instant::now();
            let source = Arc::new(Endpoints::default());
            let changed = Arc::new(tokio::sync::Notify::new());
            let config = Arc::new(Mutex::new(config(alerting)));
            let log = Arc::new(Mutex::new(Vec::new()));
            let read = config.clone();
            let write = log.clone();
            let inputs = Inputs {
                config: Arc::new(move || read.lock().unwrap().clone()),
                source: source.clone(),
                changed: changed.clone(),
                publish: Arc::new(move |a: &Alert| {
                    let at = u64::try_from(start.elapsed().as_millis()).unwrap();
                    let endpoint = a.labels.get("endpoint").cloned().unwrap_or_default();
                    write.lock().unwrap().push((at, a.state, endpoint));
                }),
            };
            let metrics = AlertMetrics::register(&mut Registry::default());
            let tracker = TaskTracker::new();
            let stop = CancellationToken::new();
            let alerting = Alerting::start(inputs, metrics, &tracker, stop.clone());
            Run {
                alerting,
                source,
                changed,
                config,
                log,
                stop,
                tracker,
            }
        }

        /// Sets an endpoint's fact, unseen until the next evaluation.
        fn set(&self, endpoint: &'static str, down: bool) {
            self.source.0.lock().unwrap().insert(endpoint, down);
        }

        /// The state changes so far.
        fn log(&self) -> Vec<Logged> {
            self.log.lock().unwrap().clone()
        }

        async fn stop(self) {
            self.stop.cancel();
            self.tracker.close();
            self.tracker.wait().await;
        }
    }

    fn change(at: u64, state: &'static str, endpoint: &str) -> Logged {
        (at, state, endpoint.to_string())
    }

    async fn sleep_until_ms(start: Instant, ms: u64) {
        tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn for_is_held_then_the_alert_fires_once_and_resolves_at_the_next_evaluation() {
        let start = Instant::now();
        let run = Run::start(
            "[alerting]\nevaluation_interval = \"1s\"\n\n\
             [[alert]]\nname = \"down\"\nkind = \"endpoint_down\"\nfor = \"5s\"\n",
        );
        run.set("a", true);
        // Evaluations at 0 s, 1 s, 2 s...: pending at once, firing when
        // it has held for 5 s, not an evaluation earlier or later.
        sleep_until_ms(start, 4_500).await;
        assert_eq!(run.alerting.alerts()[0].state, "pending");
        sleep_until_ms(start, 10_500).await;
        assert_eq!(
            run.log(),
            [change(0, "pending", "a"), change(5_000, "firing", "a")]
        );
        assert_eq!(run.alerting.alerts()[0].state, "firing");
        // Up again: resolved at the next evaluation, once.
        run.set("a", false);
        sleep_until_ms(start, 20_500).await;
        assert_eq!(run.log()[2..], [change(11_000, "resolved", "a")]);
        assert!(run.alerting.alerts().is_empty());
        run.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_is_evaluated_at_once_and_for_counts_from_then() {
        let start = Instant::now();
        let run = Run::start(
            "[alerting]\nevaluation_interval = \"1s\"\n\n\
             [[alert]]\nname = \"down\"\nkind = \"endpoint_down\"\nfor = \"5s\"\n",
        );
        // A blip shorter than `for`, announced: pending at once, inactive
        // at the evaluation after it ended, never firing.
        sleep_until_ms(start, 2_300).await;
        run.set("a", true);
        run.changed.notify_one();
        sleep_until_ms(start, 4_500).await;
        run.set("a", false);
        // Down again, announced: `for` counts from 10.3 s, and is first
        // seen to have held at the evaluation of 16 s (the ticks keep
        // their pace whatever woke the evaluator in between).
        sleep_until_ms(start, 10_300).await;
        run.set("a", true);
        run.changed.notify_one();
        sleep_until_ms(start, 20_000).await;
        assert_eq!(
            run.log(),
            [
                change(2_300, "pending", "a"),
                change(5_000, "inactive", "a"),
                change(10_300, "pending", "a"),
                change(16_000, "firing", "a"),
            ]
        );
        run.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_with_a_new_interval_paces_the_evaluations_anew() {
        let start = Instant::now();
        let rule = "[[alert]]\nname = \"down\"\nkind = \"endpoint_down\"\n";
        let run = Run::start(&format!("[alerting]\nevaluation_interval = \"10s\"\n\n{rule}"));
        sleep_until_ms(start, 1_000).await;
        *run.config.lock().unwrap() =
            config(&format!("[alerting]\nevaluation_interval = \"200ms\"\n\n{rule}"));
        // Seen at the next evaluation (10 s); from then on every 200 ms.
        sleep_until_ms(start, 10_050).await;
        run.set("a", true);
        sleep_until_ms(start, 10_300).await;
        run.set("a", false);
        sleep_until_ms(start, 11_000).await;
        assert_eq!(
            run.log(),
            [change(10_200, "firing", "a"), change(10_400, "resolved", "a")]
        );
        run.stop().await;
    }
}
