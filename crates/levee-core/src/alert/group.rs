//! When a notifier speaks: Alertmanager's grouping, as a policy.
//!
//! Firing and resolved alerts are put in groups by the values of the
//! notifier's `group_by` labels. A new group waits `group_wait` before its
//! first notification, so that alerts caused by one event (every endpoint
//! of a region going down) arrive as one message. After that a group is
//! notified again at most every `group_interval`, and only when something
//! changed (an alert fired or resolved), or when `repeat_interval` passed
//! with alerts still firing. Each notification carries the whole group: the
//! alerts firing now, and those resolved since the last one (when
//! `send_resolved`). A resolved alert is reported once, then forgotten; an
//! alert that resolves before it was ever notified is forgotten silently.
//!
//! No I/O and no clock: [`Grouper::update`] and [`Grouper::poll`] take the
//! time, and [`Grouper::next_due`] says when to poll next.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Which labels make a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// The values of these labels (a missing label counts as empty). No
    /// label at all puts every alert in one group.
    Labels(Vec<String>),
    /// Every label: each alert is a group of its own (`"..."`).
    All,
}

/// A notifier's grouping settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub group_by: GroupBy,
    /// Wait before a new group's first notification.
    pub group_wait: Duration,
    /// Wait after a notification before the next one about changes.
    pub group_interval: Duration,
    /// Wait after a notification before sending a group that still fires
    /// again, when nothing changed.
    pub repeat_interval: Duration,
    /// Whether resolved alerts are notified.
    pub send_resolved: bool,
}

/// An alert's news for the grouper.
#[derive(Clone, Debug, PartialEq)]
pub struct Update<P> {
    /// What makes the alert itself: its rule and instance labels.
    pub id: String,
    /// Every label, for grouping.
    pub labels: BTreeMap<String, String>,
    /// Firing, or resolved.
    pub firing: bool,
    /// What a notification carries for it (its latest version is sent).
    pub payload: P,
}

/// One notification: a group and its alerts.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch<P> {
    /// The group's labels (the `group_by` labels and their values).
    pub group: BTreeMap<String, String>,
    /// The group's alerts, firing ones and those resolved since the last
    /// notification, in id order: (firing, payload).
    pub alerts: Vec<(bool, P)>,
}

impl<P> Batch<P> {
    pub fn firing(&self) -> usize {
        self.alerts.iter().filter(|(f, _)| *f).count()
    }
}

#[derive(Clone, Debug)]
struct Entry<P> {
    firing: bool,
    /// Whether the receiver was last told this alert fires.
    notified: bool,
    payload: P,
}

impl<P> Entry<P> {
    /// Whether the receiver has not been told the alert's state yet.
    fn news(&self) -> bool {
        self.firing != self.notified
    }
}

#[derive(Clone, Debug)]
struct Group<P> {
    labels: BTreeMap<String, String>,
    alerts: BTreeMap<String, Entry<P>>,
    created: Instant,
    last_flush: Option<Instant>,
}

impl<P> Group<P> {
    fn due(&self, policy: &Policy) -> Option<Instant> {
        let news = self.alerts.values().any(Entry::news);
        match self.last_flush {
            None => news.then_some(self.created + policy.group_wait),
            Some(last) if news => Some(last + policy.group_interval),
            Some(last) => self
                .alerts
                .values()
                .any(|e| e.firing)
                .then_some(last + policy.repeat_interval),
        }
    }
}

/// The groups of one notifier.
#[derive(Clone, Debug)]
pub struct Grouper<P> {
    policy: Policy,
    groups: BTreeMap<Vec<(String, String)>, Group<P>>,
}

impl<P: Clone> Grouper<P> {
    pub fn new(policy: Policy) -> Grouper<P> {
        Grouper {
            policy,
            groups: BTreeMap::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Takes an alert's news: it fires, still fires (a newer payload), or
    /// resolved.
    pub fn update(&mut self, update: Update<P>, now: Instant) {
        let key = self.key(&update.labels);
        if !update.firing {
            // Only an alert the group holds can resolve.
            let Some(group) = self.groups.get_mut(&key) else {
                return;
            };
            let Some(entry) = group.alerts.get_mut(&update.id) else {
                return;
            };
            if !entry.notified || !self.policy.send_resolved {
                // Nobody is waiting to hear it ended.
                group.alerts.remove(&update.id);
                if group.alerts.is_empty() {
                    self.groups.remove(&key);
                }
                return;
            }
            entry.firing = false;
            entry.payload = update.payload;
            return;
        }
        let group = self.groups.entry(key).or_insert_with_key(|key| Group {
            labels: key.iter().cloned().collect(),
            alerts: BTreeMap::new(),
            created: now,
            last_flush: None,
        });
        group
            .alerts
            .entry(update.id)
            .and_modify(|e| {
                e.firing = true;
                e.payload = update.payload.clone();
            })
            .or_insert(Entry {
                firing: true,
                notified: false,
                payload: update.payload,
            });
    }

    /// When [`poll`](Self::poll) has something to do next, if ever.
    pub fn next_due(&self) -> Option<Instant> {
        self.groups.values().filter_map(|g| g.due(&self.policy)).min()
    }

    /// The notifications due at `now`. Each group notified forgets its
    /// resolved alerts; a group left with none is dropped.
    pub fn poll(&mut self, now: Instant) -> Vec<Batch<P>> {
        let mut batches = Vec::new();
        self.groups.retain(|_, group| {
            if group.due(&self.policy).is_none_or(|due| due > now) {
                return true;
            }
            let alerts: Vec<(bool, P)> = group
                .alerts
                .values()
                .map(|e| (e.firing, e.payload.clone()))
                .collect();
            if !alerts.is_empty() {
                batches.push(Batch {
                    group: group.labels.clone(),
                    alerts,
                });
            }
            group.alerts.retain(|_, e| e.firing);
            for e in group.alerts.values_mut() {
                e.notified = true;
            }
            group.last_flush = Some(now);
            !group.alerts.is_empty()
        });
        batches
    }

    /// Alerts held, firing or resolved and not yet notified.
    pub fn len(&self) -> usize {
        self.groups.values().map(|g| g.alerts.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn key(&self, labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
        match &self.policy.group_by {
            GroupBy::All => labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            GroupBy::Labels(names) => {
                let mut key: Vec<(String, String)> = names
                    .iter()
                    .map(|n| (n.clone(), labels.get(n).cloned().unwrap_or_default()))
                    .collect();
                key.sort();
                key
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn policy() -> Policy {
        Policy {
            group_by: GroupBy::Labels(vec!["alertname".to_string()]),
            group_wait: 5 * S,
            group_interval: 60 * S,
            repeat_interval: 3600 * S,
            send_resolved: true,
        }
    }

    fn update(rule: &str, endpoint: &str, firing: bool) -> Update<String> {
        let labels = BTreeMap::from([
            ("alertname".to_string(), rule.to_string()),
            ("endpoint".to_string(), endpoint.to_string()),
        ]);
        Update {
            id: format!("{rule}/{endpoint}"),
            labels,
            firing,
            payload: format!("{rule}/{endpoint}/{}", if firing { "firing" } else { "resolved" }),
        }
    }

    fn ids(batch: &Batch<String>) -> Vec<&str> {
        batch.alerts.iter().map(|(_, p)| p.as_str()).collect()
    }

    #[test]
    fn alerts_within_group_wait_arrive_as_one_notification() {
        let t0 = Instant::now();
        let mut g = Grouper::new(policy());
        g.update(update("down", "a", true), t0);
        g.update(update("down", "b", true), t0 + 2 * S);
        assert_eq!(g.next_due(), Some(t0 + 5 * S), "the first alert starts the wait");
        assert!(g.poll(t0 + 4 * S).is_empty());
        let batches = g.poll(t0 + 5 * S);
        assert_eq!(batches.len(), 1);
        assert_eq!(ids(&batches[0]), ["down/a/firing", "down/b/firing"]);
        assert_eq!(
            batches[0].group,
            BTreeMap::from([("alertname".to_string(), "down".to_string())])
        );
        assert!(g.poll(t0 + 6 * S).is_empty(), "nothing new");
    }

    #[test]
    fn groups_are_notified_apart() {
        let t0 = Instant::now();
        let mut g = Grouper::new(policy());
        g.update(update("down", "a", true), t0);
        g.update(update("errors", "a", true), t0);
        assert_eq!(g.poll(t0 + 5 * S).len(), 2);
    }

    #[test]
    fn a_change_waits_for_group_interval() {
        let t0 = Instant::now();
        let mut g = Grouper::new(policy());
        g.update(update("down", "a", true), t0);
        assert_eq!(g.poll(t0 + 5 * S).len(), 1);
        g.update(update("down", "b", true), t0 + 10 * S);
        assert_eq!(g.next_due(), Some(t0 + 65 * S));
        assert!(g.poll(t0 + 64 * S).is_empty());
        let batches = g.poll(t0 + 65 * S);
        assert_eq!(
            ids(&batches[0]),
            ["down/a/firing", "down/b/firing"],
            "the whole group"
        );
    }

    #[test]
    fn resolved_is_sent_once_then_forgotten() {
        let t0 = Instant::now();
        let mut g = Grouper::new(policy());
        g.update(update("down", "a", true), t0);
        g.update(update("down", "b", true), t0);
        g.poll(t0 + 5 * S);
        g.update(update("down", "a", false), t0 + 30 * S);
        let batches = g.poll(t0 + 65 * S);
        assert_eq!(ids(&batches[0]), ["down/a/resolved", "down/b/firing"]);
        assert_eq!(batches[0].firing(), 1);
        g.update(update("down", "b", false), t0 + 70 * S);
        let batches = g.poll(t0 + 125 * S);
        assert_eq!(ids(&batches[0]), ["down/b/resolved"]);
        assert!(g.is_empty(), "a group with nothing left is dropped");
        assert_eq!(g.next_due(), None);
    }

    #[test]
    fn repeat_interval_resends_a_group_still_firing() {
        let t0 = Instant::now();
        let mut g = Grouper::new(policy());
        g.update(update("down", "a", true), t0);
        g.poll(t0 + 5 * S);
        assert_eq!(g.next_due(), Some(t0 + 3605 * S));
        assert!(g.poll(t0 + 3604 * S).is_empty());
        assert_eq!(g.poll(t0 + 3605 * S).len(), 1);
    }

    #[test]
    fn without_send_resolved_a_resolution_is_not_news() {
        let t0 = Instant::now();
        let mut g = Grouper::new(Policy {
            send_resolved: false,
            ..policy()
        });
        g.update(update("down", "a", true), t0);
        g.update(update("down", "b", true), t0);
        g.poll(t0 + 5 * S);
        g.update(update("down", "a", false), t0 + 10 * S);
        assert_eq!(g.next_due(), Some(t0 + 3605 * S), "only the repeat is due");
        let batches = g.poll(t0 + 3605 * S);
        assert_eq!(ids(&batches[0]), ["down/b/firing"]);
    }

    #[test]
    fn an_alert_resolved_before_its_first_notification_is_not_sent() {
        let t0 = Instant::now();
        let mut g = Grouper::new(policy());
        g.update(update("down", "a", true), t0);
        g.update(update("down", "a", false), t0 + S);
        assert!(g.poll(t0 + 5 * S).is_empty());
        assert!(g.is_empty());
    }

    #[test]
    fn a_resolution_of_an_unknown_alert_is_ignored() {
        let t0 = Instant::now();
        let mut g = Grouper::new(policy());
        g.update(update("down", "a", false), t0);
        assert!(g.is_empty());
    }

    #[test]
    fn zero_waits_notify_every_change_at_once() {
        // The Alertmanager notifier: one group, no waiting, a periodic resend.
        let t0 = Instant::now();
        let mut g = Grouper::new(Policy {
            group_by: GroupBy::Labels(vec![]),
            group_wait: Duration::ZERO,
            group_interval: Duration::ZERO,
            repeat_interval: 60 * S,
            send_resolved: true,
        });
        g.update(update("down", "a", true), t0);
        assert_eq!(g.poll(t0).len(), 1);
        g.update(update("errors", "x", true), t0 + S);
        let batches = g.poll(t0 + S);
        assert_eq!(ids(&batches[0]), ["down/a/firing", "errors/x/firing"]);
        g.update(update("down", "a", false), t0 + 2 * S);
        let batches = g.poll(t0 + 2 * S);
        assert_eq!(ids(&batches[0]), ["down/a/resolved", "errors/x/firing"]);
        assert_eq!(g.next_due(), Some(t0 + 62 * S));
    }

    #[test]
    fn group_by_every_label_makes_each_alert_its_own_group() {
        let t0 = Instant::now();
        let mut g = Grouper::new(Policy {
            group_by: GroupBy::All,
            ..policy()
        });
        g.update(update("down", "a", true), t0);
        g.update(update("down", "b", true), t0);
        let batches = g.poll(t0 + 5 * S);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].group.get("endpoint").map(String::as_str), Some("a"));
    }

    /// What a receiver has seen, checked against the policy's promises.
    #[derive(Default)]
    struct Receiver {
        first_update: Option<Instant>,
        last_sent: Option<Instant>,
        /// Firing alerts not yet told, since when they fire.
        waiting: BTreeMap<String, Instant>,
        /// What the receiver was last told fires.
        told: std::collections::BTreeSet<String>,
        resolved_sent: BTreeMap<String, u32>,
    }

    impl Receiver {
        fn poll(&mut self, g: &mut Grouper<String>, at: Instant) -> Result<(), TestCaseError> {
            let p = g.policy().clone();
            for b in g.poll(at) {
                if let Some(last) = self.last_sent {
                    prop_assert!(at.duration_since(last) >= p.group_interval);
                }
                if let Some(first) = self.first_update {
                    prop_assert!(at.duration_since(first) >= p.group_wait);
                }
                self.last_sent = Some(at);
                for (firing, payload) in &b.alerts {
                    let id = payload
                        .trim_end_matches("/firing")
                        .trim_end_matches("/resolved")
                        .to_string();
                    if *firing {
                        self.waiting.remove(&id);
                        self.told.insert(id);
                    } else {
                        self.told.remove(&id);
                        let n = self.resolved_sent.entry(id.clone()).or_default();
                        *n += 1;
                        prop_assert!(*n <= 1, "resolved twice: {}", id);
                    }
                }
            }
            if g.is_empty() {
                // A group left empty is dropped; a new one starts afresh.
                self.last_sent = None;
            }
            for since in self.waiting.values() {
                prop_assert!(at.duration_since(*since) <= p.group_wait + p.group_interval);
            }
            Ok(())
        }

        fn update(&mut self, g: &mut Grouper<String>, u: Update<String>, at: Instant) {
            self.first_update.get_or_insert(at);
            if u.firing {
                if !self.told.contains(&u.id) {
                    self.waiting.entry(u.id.clone()).or_insert(at);
                }
                self.resolved_sent.remove(&u.id);
            } else {
                self.waiting.remove(&u.id);
            }
            g.update(u, at);
        }
    }

    proptest! {
        /// Whatever happens: a group is never notified twice within
        /// group_interval, never before group_wait after its first alert,
        /// every firing alert is notified within group_wait +
        /// group_interval of firing, and a resolved alert is notified at
        /// most once.
        #[test]
        fn notifications_keep_their_intervals(
            steps in proptest::collection::vec((0u64..5_000, 0usize..4, any::<bool>()), 1..60),
        ) {
            let mut g: Grouper<String> = Grouper::new(Policy {
                group_by: GroupBy::Labels(vec!["alertname".to_string()]),
                group_wait: Duration::from_millis(500),
                group_interval: Duration::from_millis(2000),
                repeat_interval: Duration::from_millis(7000),
                send_resolved: true,
            });
            let mut receiver = Receiver::default();
            let mut now = Instant::now();
            for (gap_ms, endpoint, firing) in steps {
                // Walk time forward, polling when due as the task does.
                let until = now + Duration::from_millis(gap_ms);
                while let Some(due) = g.next_due().filter(|d| *d <= until) {
                    now = due.max(now);
                    receiver.poll(&mut g, now)?;
                }
                now = until;
                receiver.update(&mut g, update("down", &endpoint.to_string(), firing), now);
                receiver.poll(&mut g, now)?;
            }
        }
    }
}
