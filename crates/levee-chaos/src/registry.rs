//! The proxies and their toxics, kept with Toxiproxy's rules: what each
//! API call does, which error it gives, and what it answers. The HTTP
//! side (`api.rs`) only maps requests and answers to this.
//!
//! One async lock serialises the calls, as Toxiproxy's collection lock
//! does; a call holds it while a listener binds or a proxy stops, both
//! bounded in time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fastrand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::proxy::{self, Running};
use crate::toxic::{Toxic, ToxicJson, ToxicSet};

mod toxic_api;

/// How long resolving a listen address may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A proxy as the API shows it, in Toxiproxy's field order.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyJson {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
    pub toxics: Vec<ToxicJson>,
}

/// `POST /populate`'s answer: the proxies made or kept, and the error
/// that stopped it, if one did (then its status is the answer's).
#[derive(Clone, Debug, Serialize)]
pub struct Populated {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    pub proxies: Vec<ProxyJson>,
}

/// Every proxy of one API server.
pub struct Registry {
    inner: Mutex<Inner>,
    /// The server's shutdown: every proxy's stop token is a child.
    shutdown: CancellationToken,
}

struct Inner {
    proxies: BTreeMap<String, Entry>,
    /// Toxic ids, so open connections tell a new toxic from an old one
    /// of the same name.
    next_id: u64,
    /// Seeds each proxy's connections' toxicity draws.
    seeds: Rng,
}

struct Entry {
    name: String,
    /// The address as given, or as bound once the proxy has listened.
    listen: String,
    upstream: String,
    /// In the order added; the API lists upstream ones first.
    toxics: Vec<Arc<Toxic>>,
    /// What open connections follow.
    publish: watch::Sender<Arc<ToxicSet>>,
    running: Option<Running>,
}

#[derive(Deserialize)]
struct NewProxy {
    #[serde(default)]
    name: String,
    #[serde(default)]
    listen: String,
    #[serde(default)]
    upstream: String,
    enabled: Option<bool>,
}

#[derive(Deserialize)]
struct ProxyPatch {
    listen: Option<String>,
    upstream: Option<String>,
    enabled: Option<bool>,
}

#[derive(Deserialize)]
struct NewToxic {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    stream: Option<String>,
    toxicity: Option<f32>,
    #[serde(default)]
    attributes: Value,
}

#[derive(Deserialize)]
struct ToxicPatch {
    #[serde(default)]
    attributes: Value,
    toxicity: Option<f32>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::bad_body)
}

/// A listen address as a socket address. An empty one is any free port
/// on loopback (Toxiproxy would listen on every interface).
async fn resolve(listen: &str) -> Result<SocketAddr, ApiError> {
    let listen = if listen.is_empty() { "127.0.0.1:0" } else { listen };
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    let bad = |why: &dyn std::fmt::Display| ApiError::bad_address("listen", listen, why);
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(listen)).await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| bad(&"no address")),
        Ok(Err(e)) => Err(bad(&e)),
        Err(_) => Err(bad(&"timed out resolving")),
    }
}

impl Entry {
    fn new(name: String, listen: String, upstream: String) -> Entry {
        Entry {
            name,
            listen,
            upstream,
            toxics: Vec::new(),
            publish: watch::Sender::new(Arc::new(ToxicSet::default())),
            running: None,
        }
    }

    fn enabled(&self) -> bool {
        self.running.is_some()
    }

    fn json(&self) -> ProxyJson {
        let set = ToxicSet::of(&self.toxics);
        ProxyJson {
            name: self.name.clone(),
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            enabled: self.enabled(),
            toxics: set
                .upstream
                .iter()
                .chain(&set.downstream)
                .map(|t| t.to_json())
                .collect(),
        }
    }

    fn toxic(&self, name: &str) -> Option<&Arc<Toxic>> {
        self.toxics.iter().find(|t| t.name == name)
    }

    /// Tells open connections.
    fn publish(&self) {
        self.publish.send_replace(Arc::new(ToxicSet::of(&self.toxics)));
    }

    /// Listens, unless it already does.
    async fn start(&mut self, seed: u64, shutdown: &CancellationToken) -> Result<(), ApiError> {
        if self.running.is_some() {
            return Ok(());
        }
        let addr = resolve(&self.listen).await?;
        let toxics = self.publish.subscribe();
        let running = proxy::start(addr, self.upstream.clone(), toxics, seed, shutdown)
            .await
            .map_err(|e| ApiError::listen(addr, &e))?;
        tracing::info!(proxy = %self.name, listen = %running.addr, upstream = %self.upstream, "proxy started");
        self.listen = running.addr.to_string();
        self.running = Some(running);
        Ok(())
    }

    /// Stops listening and cuts every connection.
    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
            tracing::info!(proxy = %self.name, "proxy stopped");
        }
    }

    /// Whether `listen` and `upstream` name another place than this
    /// proxy's: then it restarts. Addresses are compared resolved, so
    /// `localhost:80` is `127.0.0.1:80` (as in Toxiproxy 2.12).
    async fn differs(&self, listen: &str, upstream: &str) -> Result<bool, ApiError> {
        if upstream != self.upstream {
            return Ok(true);
        }
        if listen == self.listen {
            return Ok(false);
        }
        let new = resolve(listen).await?;
        Ok(!resolve(&self.listen).await.is_ok_and(|old| old == new))
    }
}

impl Registry {
    /// `seed` makes toxicity draws repeatable; `shutdown` ends every proxy.
    pub fn new(seed: Option<u64>, shutdown: CancellationToken) -> Registry {
        let seeds = seed.map_or_else(Rng::new, Rng::with_seed);
        let inner = Inner {
            proxies: BTreeMap::new(),
            next_id: 1,
            seeds,
        };
        Registry {
            inner: Mutex::new(inner),
            shutdown,
        }
    }

    /// `GET /proxies`: every proxy by name.
    pub async fn list(&self) -> BTreeMap<String, ProxyJson> {
        let inner = self.inner.lock().await;
        inner.proxies.iter().map(|(k, e)| (k.clone(), e.json())).collect()
    }

    /// `GET /proxies/{name}`.
    pub async fn get(&self, name: &str) -> Result<ProxyJson, ApiError> {
        let inner = self.inner.lock().await;
        inner
            .proxies
            .get(name)
            .map(Entry::json)
            .ok_or_else(ApiError::proxy_not_found)
    }

    /// `POST /proxies`: a new proxy, listening unless `enabled` is false.
    pub async fn create(&self, body: &[u8]) -> Result<ProxyJson, ApiError> {
        let new: NewProxy = parse(body)?;
        if new.name.is_empty() {
            return Err(ApiError::missing("name"));
        }
        if new.upstream.is_empty() {
            return Err(ApiError::missing("upstream"));
        }
        let mut inner = self.inner.lock().await;
        if inner.proxies.contains_key(&new.name) {
            return Err(ApiError::proxy_exists());
        }
        let mut entry = Entry::new(new.name, new.listen, new.upstream);
        if new.enabled.unwrap_or(true) {
            let seed = inner.seeds.u64(..);
            entry.start(seed, &self.shutdown).await?;
        } else {
            // Refuse an address that can never bind now rather than at
            // the first enable.
            resolve(&entry.listen).await?;
        }
        let json = entry.json();
        inner.proxies.insert(entry.name.clone(), entry);
        Ok(json)
    }

    /// `POST`/`PATCH /proxies/{name}`: fields not given stay; a new
    /// listen or upstream restarts it (cutting its connections); `enabled`
    /// starts or stops it.
    pub async fn update(&self, name: &str, body: &[u8]) -> Result<ProxyJson, ApiError> {
        let mut inner = self.inner.lock().await;
        let seed = inner.seeds.u64(..);
        let entry = inner
            .proxies
            .get_mut(name)
            .ok_or_else(ApiError::proxy_not_found)?;
        let patch: ProxyPatch = parse(body)?;
        let listen = patch.listen.unwrap_or_else(|| entry.listen.clone());
        let upstream = patch.upstream.unwrap_or_else(|| entry.upstream.clone());
        let enabled = patch.enabled.unwrap_or(entry.enabled());
        if entry.differs(&listen, &upstream).await? {
            entry.stop().await;
            (entry.listen, entry.upstream) = (listen, upstream);
        }
        if enabled {
            entry.start(seed, &self.shutdown).await?;
        } else {
            entry.stop().await;
        }
        Ok(entry.json())
    }

    /// `POST /populate`: each proxy of the list made; or kept, toxics
    /// and all, when one of its name has the same listen address and
    /// upstream; or replaced (its toxics and connections gone) when not.
    /// Proxies not in the list stay. Stops at the first failure, and
    /// answers with it and the proxies done before it, as Toxiproxy does.
    pub async fn populate(&self, body: &[u8]) -> Populated {
        let failed = |e: ApiError, proxies: Vec<ProxyJson>| Populated {
            error: Some(e),
            proxies,
        };
        let list: Vec<NewProxy> = match parse(body) {
            Ok(list) => list,
            Err(e) => return failed(e, Vec::new()),
        };
        // Every entry is checked before any proxy changes.
        for (i, p) in list.iter().enumerate() {
            if p.name.is_empty() {
                return failed(ApiError::missing(&format!("name at proxy {}", i + 1)), Vec::new());
            }
            if p.upstream.is_empty() {
                let field = format!("upstream at proxy {}", i + 1);
                return failed(ApiError::missing(&field), Vec::new());
            }
        }
        let mut inner = self.inner.lock().await;
        let mut done = Vec::with_capacity(list.len());
        for p in list {
            match self.add_or_replace(&mut inner, p).await {
                Ok(json) => done.push(json),
                Err(e) => return failed(e, done),
            }
        }
        Populated {
            error: None,
            proxies: done,
        }
    }

    async fn add_or_replace(&self, inner: &mut Inner, p: NewProxy) -> Result<ProxyJson, ApiError> {
        if let Some(existing) = inner.proxies.get_mut(&p.name) {
            if !existing.differs(&p.listen, &p.upstream).await? {
                return Ok(existing.json());
            }
            existing.stop().await;
        }
        let mut entry = Entry::new(p.name, p.listen, p.upstream);
        if p.enabled.unwrap_or(true) {
            entry.start(inner.seeds.u64(..), &self.shutdown).await?;
        }
        let json = entry.json();
        inner.proxies.insert(entry.name.clone(), entry);
        Ok(json)
    }

    /// `DELETE /proxies/{name}`.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let mut entry = inner.proxies.remove(name).ok_or_else(ApiError::proxy_not_found)?;
        entry.stop().await;
        Ok(())
    }

    /// `POST /reset`: every proxy enabled, every toxic gone.
    pub async fn reset(&self) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let Inner { proxies, seeds, .. } = &mut *inner;
        for entry in proxies.values_mut() {
            entry.start(seeds.u64(..), &self.shutdown).await?;
            entry.toxics.clear();
            entry.publish();
        }
        Ok(())
    }

    /// Stops every proxy, for shutdown.
    pub async fn stop_all(&self) {
        let mut inner = self.inner.lock().await;
        for entry in inner.proxies.values_mut() {
            entry.stop().await;
        }
    }
}
