//! Rate limits on the request path: the rules of `[rate_limit.<name>]`, as
//! listeners and routes name them.
//!
//! A local rule is a [`KeyedLimiter`] in this process. A Redis rule asks
//! Redis (one GCRA script call, so every instance shares the budget) and,
//! when Redis is down, slow or its queue is full, decides locally on this
//! instance's share (`rate / instances`), so Redis trouble never blocks a
//! request beyond `redis.timeout` and never turns into an outage or into no
//! limit at all.
//!
//! Keys are hashed, never stored as text: a local table holds a `u64` per
//! key whatever the header values look like, hashed with a per-process
//! random key so that clients cannot aim collisions at each other. Redis
//! keys must agree between instances, so they use a fixed hash (FNV-1a)
//! of the same parts.

pub(crate) mod redis;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use levee_config::{KeyPart, RateLimit, RateLimitBackend, RateLimitRef};
use levee_core::hash::Fnv1a;
use levee_core::ratelimit::{KeyedLimiter, Quota, Verdict};
use prometheus_client::metrics::counter::Counter;

use crate::fields::FieldsView;
use crate::metrics::Metrics;

/// What a request offers to key a rule on.
pub(crate) struct KeyInput<'a> {
    pub client: IpAddr,
    /// The route's name, if routing has happened.
    pub route: Option<&'a str>,
    pub fields: FieldsView<'a>,
}

/// A refusal: the rule, and when to come back.
pub(crate) struct Limited {
    pub rule: Arc<Rule>,
    pub retry_after: Duration,
    pub reset: Duration,
}

impl Limited {
    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` (the IETF
    /// httpapi draft's structured fields) for the 429.
    pub fn fields(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let q = self.rule.config.quota;
        let name = &self.rule.config.name;
        let secs = |d: Duration| (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1);
        [
            (header::RETRY_AFTER, secs(self.retry_after).to_string()),
            (
                HeaderName::from_static("ratelimit-policy"),
                format!("\"{name}\";q={};w={}", q.rate(), q.per().as_secs().max(1)),
            ),
            (
                HeaderName::from_static("ratelimit"),
                format!("\"{name}\";r=0;t={}", secs(self.reset)),
            ),
        ]
        .into_iter()
        .filter_map(|(n, v)| Some((n, HeaderValue::from_str(&v).ok()?)))
    }
}

pub(crate) struct Rule {
    pub config: RateLimit,
    /// The limit itself for a local rule; this instance's share for a
    /// Redis rule, used while Redis is unavailable.
    local: KeyedLimiter<u64>,
    hasher: RandomState,
    redis: Option<RedisRule>,
    allowed: Counter,
    limited: Counter,
    fallback: Counter,
}

struct RedisRule {
    client: redis::Client,
    settings: levee_config::Redis,
    timeout: Duration,
    prefix: String,
    interval_us: u64,
    span_us: u64,
}

impl Rule {
    /// Requests this rule refused since it was created.
    pub fn limited(&self) -> u64 {
        self.limited.get()
    }

    pub fn new(
        config: &RateLimit,
        redis: Option<(&redis::Client, &levee_config::Redis)>,
        metrics: &Metrics,
    ) -> Rule {
        let q = config.quota;
        let share = |n: u32| (n / config.instances).max(1);
        let local_quota = match (config.backend, config.instances) {
            (RateLimitBackend::Redis, n) if n > 1 => {
                Quota::new(share(q.rate()), q.per(), share(q.burst())).unwrap_or(q)
            }
            _ => q,
        };
        let redis = match (config.backend, redis) {
            (RateLimitBackend::Redis, Some((client, settings))) => {
                let interval_us = u64::try_from(q.interval().as_micros()).unwrap_or(u64::MAX).max(1);
                Some(RedisRule {
                    client: client.clone(),
                    settings: settings.clone(),
                    timeout: settings.timeout,
                    prefix: format!("{}{}:", settings.key_prefix, config.name),
                    interval_us,
                    span_us: interval_us.saturating_mul(u64::from(q.burst())),
                })
            }
            _ => None,
        };
        let (allowed, limited, fallback) = metrics.rate_limit(&config.name);
        Rule {
            config: config.clone(),
            local: KeyedLimiter::new(local_quota, config.max_keys, std::time::Instant::now()),
            hasher: RandomState::new(),
            redis,
            allowed,
            limited,
            fallback,
        }
    }

    /// Whether a rule built for `config` would be this one, so a reload
    /// can keep its table.
    pub fn same(&self, config: &RateLimit, redis: Option<(&redis::Client, &levee_config::Redis)>) -> bool {
        self.config == *config
            && match (&self.redis, redis) {
                (None, None) => true,
                (Some(r), Some((client, settings))) => r.client.same(client) && r.settings == *settings,
                _ => false,
            }
    }

    /// Keys held locally, for the metric.
    pub fn keys(&self) -> usize {
        self.local.len()
    }

    pub fn sweep(&self, now: std::time::Instant) {
        self.local.sweep(now);
    }

    /// Decides one request. `None` if it may pass (or the rule does not
    /// apply: a header the key needs is absent).
    pub async fn check(self: &Arc<Rule>, input: &KeyInput<'_>, now: std::time::Instant) -> Option<Limited> {
        let verdict = match &self.redis {
            None => {
                let key = self.local_key(input)?;
                self.local.check(&key, now)
            }
            Some(r) => {
                let key = self.redis_key(r, input)?;
                match r
                    .client
                    .gcra(key.as_bytes(), r.interval_us, r.span_us, r.timeout)
                    .await
                {
                    Ok(reply) => match verdict_of(&reply) {
                        Some(v) => v,
                        None => self.fall_back(input, now)?,
                    },
                    Err(_) => self.fall_back(input, now)?,
                }
            }
        };
        match verdict {
            Verdict::Allowed { .. } => {
                self.allowed.inc();
                None
            }
            Verdict::Limited { retry_after, reset } => {
                self.limited.inc();
                Some(Limited {
                    rule: self.clone(),
                    retry_after,
                    reset,
                })
            }
        }
    }

    fn fall_back(&self, input: &KeyInput<'_>, now: std::time::Instant) -> Option<Verdict> {
        self.fallback.inc();
        let key = self.local_key(input)?;
        Some(self.local.check(&key, now))
    }

    fn local_key(&self, input: &KeyInput<'_>) -> Option<u64> {
        let mut h = self.hasher.build_hasher();
        self.key_parts(input, |bytes| h.write(bytes))?;
        Some(h.finish())
    }

    fn redis_key(&self, r: &RedisRule, input: &KeyInput<'_>) -> Option<String> {
        Some(format!("{}{:016x}", r.prefix, self.fleet_hash(input)?))
    }

    /// The key's hash as every instance computes it, for the Redis key.
    fn fleet_hash(&self, input: &KeyInput<'_>) -> Option<u64> {
        let mut h = Fnv1a::new();
        self.key_parts(input, |bytes| h.write(bytes))?;
        Some(h.finish())
    }

    /// Feeds the key's parts to `write`, each with a length so that
    /// ("ab", "c") and ("a", "bc") differ. `None` if a part is missing.
    fn key_parts(&self, input: &KeyInput<'_>, mut write: impl FnMut(&[u8])) -> Option<()> {
        for part in &self.config.key {
            match part {
                KeyPart::ClientIp => match input.client {
                    IpAddr::V4(ip) => write(&ip.octets()),
                    IpAddr::V6(ip) => write(&ip.octets()),
                },
                KeyPart::Route => {
                    let route = input.route.unwrap_or("");
                    write(&(route.len() as u64).to_le_bytes());
                    write(route.as_bytes());
                }
                KeyPart::Header(name) => {
                    let value = input.fields.first(name)?;
                    write(&(value.len() as u64).to_le_bytes());
                    write(value);
                }
            }
        }
        Some(())
    }
}

/// The script's answer: `{1, remaining, reset_us}` or `{0, retry_us, reset_us}`.
fn verdict_of(reply: &redis::Reply) -> Option<Verdict> {
    let redis::Reply::Array(items) = reply else {
        return None;
    };
    let [
        redis::Reply::Integer(ok),
        redis::Reply::Integer(a),
        redis::Reply::Integer(b),
    ] = items.as_slice()
    else {
        return None;
    };
    let us = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
    Some(match ok {
        1 => Verdict::Allowed {
            tat: 0,
            remaining: u32::try_from(*a).unwrap_or(0),
            reset: us(*b),
        },
        _ => Verdict::Limited {
            retry_after: us(*a),
            reset: us(*b),
        },
    })
}

/// The rules of one snapshot, by name.
pub(crate) fn build(
    config: &levee_config::Config,
    previous: &[Arc<Rule>],
    redis: Option<&redis::Client>,
    metrics: &Metrics,
) -> Vec<Arc<Rule>> {
    config
        .rate_limits
        .iter()
        .map(|c| {
            // Only Redis rules talk to Redis.
            let redis = redis
                .zip(config.redis.as_ref())
                .filter(|_| c.backend == RateLimitBackend::Redis);
            previous
                .iter()
                .find(|r| r.config.name == c.name && r.same(c, redis))
                .cloned()
                .unwrap_or_else(|| Arc::new(Rule::new(c, redis, metrics)))
        })
        .collect()
}

/// The rules `refs` refer to, in order. `rules` are [`build`]'s, one for
/// each of the config's rate limits, in the config's order.
pub(crate) fn pick(rules: &[Arc<Rule>], refs: &[RateLimitRef]) -> Vec<Arc<Rule>> {
    refs.iter()
        .filter_map(|r| rules.get(r.index()).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn rule(key: Vec<KeyPart>) -> Rule {
        let config = RateLimit {
            name: "api".to_string(),
            quota: Quota::new(10, Duration::from_secs(1), 10).expect("quota"),
            key,
            backend: RateLimitBackend::Redis,
            max_keys: 16,
            instances: 1,
        };
        Rule::new(&config, None, &Metrics::new())
    }

    #[test]
    fn fleet_hashes_are_pinned() {
        // Instances share a Redis budget only while they compute the same
        // key, so these values must not change between releases.
        let api_key = HeaderName::from_static("x-api-key");
        let rule = rule(vec![
            KeyPart::ClientIp,
            KeyPart::Route,
            KeyPart::Header(api_key.clone()),
        ]);
        let mut headers = HeaderMap::new();
        headers.insert(api_key, HeaderValue::from_static("k-123"));
        let mut input = KeyInput {
            client: "192.0.2.7".parse().expect("ip"),
            route: Some("api"),
            fields: FieldsView::Map(&headers),
        };
        assert_eq!(rule.fleet_hash(&input), Some(0x90b1_f39e_2bc8_433e));
        input.client = "2001:db8::1".parse().expect("ip");
        input.route = None;
        assert_eq!(rule.fleet_hash(&input), Some(0x2f7d_e047_04e4_d957));
        let empty = HeaderMap::new();
        input.fields = FieldsView::Map(&empty);
        assert_eq!(rule.fleet_hash(&input), None);
    }
}
