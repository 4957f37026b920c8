//! What a chaos run acts on: `levee demo`'s topology in-process (its
//! backends misbehave on command, keep ledgers, and sit behind fault
//! proxies when the scenario has network toxics), or a gateway that is
//! already running, reached through its admin API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use levee_chaos::registry::Registry;
use levee_chaos::scenario::{Action, Selector, Step};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::demo::{Behaviour, Demo, DemoBackend, Options, Ports};

/// How long an admin API call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) enum Live {
    Demo {
        demo: Demo,
        /// The fault proxies in front of the backends, when there are.
        proxies: Option<Arc<Registry>>,
        /// Stops the proxies.
        stop: CancellationToken,
    },
    Running {
        gateway: SocketAddr,
        admin: Option<Client>,
    },
}

impl Live {
    /// The demo topology, with fault proxies in front of its backends when
    /// `toxics` (the scenario has network faults).
    pub async fn demo(ports: Ports, toxics: bool, seed: u64) -> Result<Live, String> {
        let stop = CancellationToken::new();
        let proxies = toxics.then(|| Arc::new(Registry::new(Some(seed), stop.child_token())));
        let demo = Demo::start_with(Options {
            ports,
            traffic: None,
            front: proxies.clone(),
        })
        .await
        .map_err(|e| e.to_string())?;
        for b in demo.backends.iter() {
            b.start_recording();
        }
        Ok(Live::Demo { demo, proxies, stop })
    }

    /// A running gateway at `gateway`, with its admin API at `admin`.
    pub fn running(
        gateway: SocketAddr,
        admin: Option<SocketAddr>,
        tracker: &tokio_util::task::TaskTracker,
        stop: &CancellationToken,
    ) -> Live {
        Live::Running {
            gateway,
            admin: admin.map(|a| Client::new(a, tracker.clone(), stop.clone())),
        }
    }

    /// Where the load goes.
    pub fn gateway(&self) -> Option<SocketAddr> {
        match self {
            Live::Demo { demo, .. } => demo.app.listener_addr("public"),
            Live::Running { gateway, .. } => Some(*gateway),
        }
    }

    /// Each backend's region, to name the region of an answer by its
    /// `x-backend`.
    pub fn regions(&self) -> HashMap<String, String> {
        match self {
            Live::Demo { demo, .. } => (demo.backends.iter())
                .map(|b| (b.name.to_string(), b.region.to_string()))
                .collect(),
            Live::Running { .. } => HashMap::new(),
        }
    }

    /// Request id → the backends that processed it, from the demo's
    /// ledgers; `None` for a running gateway, whose backends keep none.
    pub fn processed(&self) -> Option<HashMap<String, Vec<String>>> {
        let Live::Demo { demo, .. } = self else {
            return None;
        };
        let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
        for b in demo.backends.iter() {
            for (id, times) in b.processed() {
                let seen = by_id.entry(id).or_default();
                seen.extend(std::iter::repeat_n(b.name.to_string(), times as usize));
            }
        }
        Some(by_id)
    }

    /// Applies one step of the schedule (a restore step undoes the step it
    /// ends); `Err` says why it could not be.
    pub async fn apply(&self, step: &Step, steps: &[Step]) -> Result<(), String> {
        // A restore step undoes the fault it ends.
        let (action, target) = match step.restores.and_then(|i| steps.get(i)) {
            Some(ended) => (Action::Restore, &ended.target),
            None => (step.action.clone(), &step.target),
        };
        match self {
            Live::Demo { demo, proxies, .. } => demo_apply(demo, proxies.as_deref(), &action, target).await,
            Live::Running { admin, .. } => running_apply(admin.as_ref(), &action, target).await,
        }
    }

    pub async fn shutdown(self) {
        if let Live::Demo { demo, proxies, stop } = self {
            demo.shutdown().await;
            if let Some(registry) = proxies {
                registry.stop_all().await;
            }
            stop.cancel();
        }
    }
}

fn chosen<'d>(demo: &'d Demo, target: &Selector) -> Vec<&'d Arc<DemoBackend>> {
    demo.backends
        .iter()
        .filter(|b| match target {
            Selector::All => true,
            Selector::Region(r) => b.region == r.as_str(),
            Selector::Endpoint(e) => b.name == e.as_str(),
        })
        .collect()
}

async fn demo_apply(
    demo: &Demo,
    proxies: Option<&Registry>,
    action: &Action,
    target: &Selector,
) -> Result<(), String> {
    let backends = chosen(demo, target);
    if backends.is_empty() && *target != Selector::All {
        return Err(format!("no demo backend in {target}"));
    }
    for b in backends {
        match action {
            Action::Fail => {
                b.fail();
                // Behind a proxy, the proxy goes too: the gateway must see
                // a refused connection, as from a dead machine, not one
                // accepted and then closed.
                set_proxy(proxies, b.name, false).await?;
            }
            Action::Hang => b.set_behaviour(Behaviour::Hang),
            Action::Latency { delay } => b.set_behaviour(Behaviour::Latency(*delay)),
            Action::Errors { status, ratio } => b.set_behaviour(Behaviour::Errors {
                status: *status,
                ratio: *ratio,
            }),
            Action::Reset => b.set_behaviour(Behaviour::Reset),
            Action::Restore => {
                b.set_behaviour(Behaviour::Normal);
                b.restore().map_err(|e| e.to_string())?;
                set_proxy(proxies, b.name, true).await?;
                if let Some(registry) = proxies {
                    for toxic in registry.toxics(b.name).await.map_err(|e| e.to_string())? {
                        let _ = registry.remove_toxic(b.name, &toxic.name).await;
                    }
                }
                drain(demo, b, false)?;
            }
            Action::Drain => drain(demo, b, true)?,
            Action::Toxic {
                toxic,
                stream,
                toxicity,
                attributes,
            } => {
                let Some(registry) = proxies else {
                    return Err("a toxic needs the demo's fault proxies".into());
                };
                let body = serde_json::json!({
                    "type": toxic,
                    "stream": stream,
                    "toxicity": toxicity,
                    "attributes": attributes,
                });
                registry
                    .add_toxic(b.name, body.to_string().as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // The gateway-wide actions, done once below.
            Action::Reload | Action::Flood { .. } => {}
        }
    }
    if matches!(action, Action::Reload) {
        // The demo's config is fixed: applied again, it goes through a
        // reload all the same (new snapshot, state carried over).
        let gateway = demo.app.gateway();
        gateway
            .apply((*gateway.config()).clone())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Drains (or undrains) a demo backend's endpoint through the gateway, as
/// the admin API would.
fn drain(demo: &Demo, b: &DemoBackend, drained: bool) -> Result<(), String> {
    let endpoint = demo.endpoints.get(b.name).ok_or("no such endpoint")?;
    (demo.app.gateway())
        .drain("app", endpoint, None, drained)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn set_proxy(proxies: Option<&Registry>, name: &str, enabled: bool) -> Result<(), String> {
    let Some(registry) = proxies else {
        return Ok(());
    };
    let body = serde_json::json!({ "enabled": enabled });
    registry
        .update(name, body.to_string().as_bytes())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn running_apply(admin: Option<&Client>, action: &Action, target: &Selector) -> Result<(), String> {
    let Some(admin) = admin else {
        return Err(format!("{} needs target.admin", action.name()));
    };
    let (method, path) = match (action, target) {
        (Action::Reload, _) => ("POST", "/api/v1/reload".to_string()),
        (Action::Drain, Selector::Endpoint(e)) => {
            ("POST", format!("/api/v1/upstreams/app/endpoints/{e}/drain"))
        }
        (Action::Restore, Selector::Endpoint(e)) => {
            ("POST", format!("/api/v1/upstreams/app/endpoints/{e}/undrain"))
        }
        (Action::Flood { .. }, _) => return Ok(()),
        _ => return Err(format!("{} on {target} needs the demo target", action.name())),
    };
    let request = http::Request::builder()
        .method(method)
        .uri(&path)
        .header(http::header::HOST, "levee-chaos")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    match admin.send(request, ADMIN_TIMEOUT).await {
        Some(a) if (200..300).contains(&a.status) => Ok(()),
        Some(a) => Err(format!("{method} {path}: {}", a.status)),
        None => Err(format!("{method} {path}: no answer")),
    }
}
