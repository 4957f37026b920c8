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
