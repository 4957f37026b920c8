//! Active health checks: failing endpoints leave rotation, recovered ones
//! come back, the next priority takes over when a level has none, and the
//! state survives a reload.

use levee_admin::{ReloadOutcome, ReloadSource};
use levee_testkit::{Backend, Behaviour, Client, eventually_async};

use crate::support::*;

/// Fast checks so tests settle in a fraction of a second, and no retries:
/// a retry would hide from the client which endpoint is in rotation.
const FAST_CHECKS: &str = "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n[route.retry]\nattempts = 1\n";

async fn backends_seen(c: &Client, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let r = c.get("/").await.expect("reply");
        seen.push(format!("{}:{}", r.status, r.header("x-backend").unwrap_or("-")));
    }
    seen
}

#[tokio::test]
async fn a_failing_endpoint_leaves_rotation_and_comes_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let h = Harness::start(&(simple(&[a.addr(), b.addr()]) + FAST_CHECKS)).await;
    let c = h.client();
    a.set_behaviour(Behaviour::Status(503));
    eventually_async(SETTLE, "a is out of rotation", || {
        let c = c.clone();
        async move { backends_seen(&c, 6).await.iter().all(|s| s == "200:b") }
    })
    .await;
    let series = format!(
        "levee_upstream_endpoint_healthy{{upstream=\"app\",region=\"local\",endpoint=\"{}\"}}",
        a.addr()
    );
    assert_eq!(h.metric(&series).await, 0.0);
    a.set_behaviour(Behaviour::Normal);
    eventually_async(SETTLE, "a is back in rotation", || {
        let c = c.clone();
        async move { backends_seen(&c, 6).await.contains(&"200:a".to_string()) }
    })
    .await;
    assert_eq!(h.metric(&series).await, 1.0);
}

#[tokio::test]
async fn a_killed_endpoint_is_avoided_and_rejoins_after_restart() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let h = Harness::start(&(simple(&[a.addr(), b.addr()]) + FAST_CHECKS)).await;
    let c = h.client();
    a.kill().await;
    eventually_async(SETTLE, "only b answers, without errors", || {
        let c = c.clone();
        async move { backends_seen(&c, 6).await.iter().all(|s| s == "200:b") }
    })
    .await;
    a.restart().await.expect("restart");
    eventually_async(SETTLE, "a rejoins", || {
        let c = c.clone();
        async move { backends_seen(&c, 6).await.contains(&"200:a".to_string()) }
    })
    .await;
}

#[tokio::test]
async fn the_next_priority_takes_over_and_gives_back() {
    let p = Backend::start("p").await;
    let s = Backend::start("s").await;
    let toml = config(
        &[("primary", 0, &[p.addr()]), ("secondary", 1, &[s.addr()])],
        "",
        FAST_CHECKS,
    );
    let h = Harness::start(&toml).await;
    let c = h.client();
    assert_eq!(backends_seen(&c, 3).await, vec!["200:p"; 3]);
    p.kill().await;
    eventually_async(SETTLE, "secondary serves", || {
        let c = c.clone();
        async move { backends_seen(&c, 3).await.iter().all(|x| x == "200:s") }
    })
    .await;
    s.kill().await;
    eventually_async(SETTLE, "no endpoint: fast 503", || {
        let c = c.clone();
        async move {
            let r = c.get("/").await.expect("reply");
            r.status == 503
                && r.header("proxy-status")
                    .is_some_and(|v| v.contains("error=destination_unavailable"))
        }
    })
    .await;
    p.restart().await.expect("restart");
    eventually_async(SETTLE, "primary serves again", || {
        let c = c.clone();
        async move { backends_seen(&c, 3).await.iter().all(|x| x == "200:p") }
    })
    .await;
}

/// Takes endpoint `a` out of rotation, reloads with `change` applied to the
/// config, and checks that `a` stayed out. The reloaded checks are slow: a
/// recovered `a` could not be seen again within the test's window, so only
/// the carried-over state keeps it out.
async fn health_state_survives(change: fn(&str) -> String) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let toml = simple(&[a.addr(), b.addr()]) + FAST_CHECKS;
    let h = Harness::start_file(&toml, false).await;
    let c = h.client();
    a.set_behaviour(Behaviour::Status(503));
    eventually_async(SETTLE, "a is out of rotation", || {
        let c = c.clone();
        async move { backends_seen(&c, 6).await.iter().all(|s| s == "200:b") }
    })
    .await;
    let next = change(&toml).replace("interval = \"100ms\"", "interval = \"1h\"");
    std::fs::write(h.config_path(), next).expect("write");
    assert!(matches!(
        h.app.reload(ReloadSource::Api).await,
        ReloadOutcome::Applied { .. }
    ));
    assert!(
        backends_seen(&c, 10).await.iter().all(|s| s == "200:b"),
        "a stayed out after the reload"
    );
    let series = format!(
        "levee_upstream_endpoint_healthy{{upstream=\"app\",region=\"local\",endpoint=\"{}\"}}",
        a.addr()
    );
    assert_eq!(h.metric(&series).await, 0.0);
}

#[tokio::test]
async fn health_state_survives_a_reload() {
    health_state_survives(str::to_string).await;
}

#[tokio::test]
async fn health_state_survives_a_reload_that_changes_the_pool() {
    // Same endpoints, new pool settings.
    health_state_survives(|toml| {
        toml.replace(
            "[upstream.app]\n",
            "[upstream.app]\nmax_idle_per_endpoint = 3\nidle_timeout = \"5s\"\n",
        )
    })
    .await;
}

#[tokio::test]
async fn tcp_checks_need_only_a_connection() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let checks = "[upstream.app.health]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n[route.retry]\nattempts = 1\n";
    let h = Harness::start(&(simple(&[a.addr(), b.addr()]) + checks)).await;
    let c = h.client();
    // A 503 from the application does not fail a TCP check...
    a.set_behaviour(Behaviour::Status(503));
    let checks_ok = format!(
        "levee_upstream_health_checks_total{{upstream=\"app\",region=\"local\",endpoint=\"{}\",result=\"success\"}}",
        a.addr()
    );
    let start = h.metric(&checks_ok).await;
    eventually_async(SETTLE, "three more passing probes", || {
        let h = &h;
        let checks_ok = &checks_ok;
        async move { h.metric(checks_ok).await >= start + 3.0 }
    })
    .await;
    assert!(backends_seen(&c, 6).await.contains(&"503:a".to_string()));
    // ...a refused connection does.
    a.kill().await;
    eventually_async(SETTLE, "a is out of rotation", || {
        let c = c.clone();
        async move { backends_seen(&c, 6).await.iter().all(|s| s == "200:b") }
    })
    .await;
}
