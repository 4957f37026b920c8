//! The dashboard: served from the binary with its types and security
//! headers, and, in a real headless Chromium, live: a region of the demo
//! fails and the page shows it within seconds, then shows it recover.
//!
//! The browser test needs Debian's `chromium` (`.ci/run` installs it); it
//! fails, not skips, without it. It saves a screenshot of the failed-over
//! page (and of the page when a check fails) in the target's test temp
//! dir. `LEVEE_SCREENSHOT=1` also lets traffic build up for a minute first
//! and copies the screenshot to docs/images/dashboard.png, the one the
//! docs show.

use std::path::PathBuf;
use std::time::Duration;

use levee::demo::{Demo, Options, Ports};
use levee_admin::dashboard::CONTENT_SECURITY_POLICY;
use levee_testkit::{Backend, Browser, Client, Reply};
use serde_json::Value;

use crate::support::*;

/// A bound on how long the page may take to show a change. The page
/// itself reacts within a second of an event; health checks (every
/// second, two failures) and failback (5 s dwell, 10 s ramp) set the pace.
const SHOWN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_with_its_types_and_policy() {
    let backend = Backend::start("a").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let admin = Client::http1(h.admin);

    let page = admin.get("/").await.expect("page");
    assert_eq!(page.status, 200);
    assert_static(&page, "text/html; charset=utf-8");
    let html = page.text();
    assert!(html.contains("src=\"assets/app.js\""), "{html}");
    assert!(html.contains("href=\"assets/app.css\""), "{html}");

    for (path, content_type, marker) in [
        ("/assets/app.js", "text/javascript; charset=utf-8", "EventSource"),
        ("/assets/app.css", "text/css; charset=utf-8", "--ok:"),
        ("/assets/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let r = admin.get(path).await.expect(path);
        assert_eq!(r.status, 200, "{path}");
        assert_static(&r, content_type);
        assert!(r.text().contains(marker), "{path} is the real file");
    }
    for missing in ["/assets/nope.js", "/assets/", "/assets/..%2Fsrc%2Flib.rs"] {
        assert_eq!(admin.get(missing).await.expect(missing).status, 404, "{missing}");
    }
}

fn assert_static(r: &Reply, content_type: &str) {
    assert_eq!(r.header("content-type"), Some(content_type));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let csp = r.header("content-security-policy").expect("a CSP");
    assert_eq!(csp, CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_region_fail_and_recover() {
    let browser = Browser::launch(1440, 1000)
        .await
        .expect("headless Chromium starts");
    let demo = Demo::start_with(Options {
        ports: Ports::Ephemeral,
        traffic: Some(20),
        front: None,
    })
    .await
    .expect("demo starts");
    let admin = demo.app.admin_addr();
    let control = Client::http1(admin);
    let primary: Vec<String> = demo
        .backends
        .iter()
        .filter(|b| b.region == "primary")
        .map(|b| b.address.to_string())
        .collect();
    let tiles_in = |state: &str| {
        let list = serde_json::to_string(&primary).expect("json");
        format!(
            "{list}.every(a => document.querySelector(`#upstreams [data-endpoint=\"${{a}}\"]`)?.dataset.state === '{state}')"
        )
    };
    let share = |region: &str| {
        format!(
            "Number(document.querySelector('[data-upstream=\"app\"] [data-region=\"{region}\"]')?.dataset.share)"
        )
    };

    browser
        .navigate(&format!("http://{admin}/"))
        .await
        .expect("page loads");
    shown(
        &browser,
        "document.getElementById('live').dataset.state === 'live'",
        SHOWN,
        "the event stream connects",
    )
    .await;
    shown(
        &browser,
        &tiles_in("healthy"),
        SHOWN,
        "the primary endpoints are shown healthy",
    )
    .await;
    shown(
        &browser,
        &format!("{} === 1", share("primary")),
        SHOWN,
        "primary takes all the traffic",
    )
    .await;
    let tiles = browser
        .evaluate("document.querySelectorAll('#upstreams [data-endpoint]').length")
        .await
        .expect("count");
    assert_eq!(tiles, 5, "one tile per demo endpoint");
    assert_eq!(
        browser
            .evaluate("document.querySelector('[data-upstream=\"app\"]').dataset.failover")
            .await
            .expect("flag"),
        "false"
    );
    if std::env::var_os("LEVEE_SCREENSHOT").is_some() {
        // For the docs' picture: let the charts gather a few minutes of
        // traffic.
        tokio::time::sleep(Duration::from_secs(150)).await;
    }

    post(&control, "/demo/regions/primary/fail").await;
    shown(
        &browser,
        &tiles_in("unhealthy"),
        SHOWN,
        "the primary endpoints are shown unhealthy",
    )
    .await;
    shown(
        &browser,
        &format!("{} === 1", share("secondary")),
        SHOWN,
        "secondary's share rises to all the traffic",
    )
    .await;
    shown(
        &browser,
        "document.querySelector('[data-upstream=\"app\"]').dataset.failover === 'true'",
        SHOWN,
        "the failover badge",
    )
    .await;
    let went_down = format!(
        "[...document.querySelectorAll('#events .event')].some(e => e.textContent.includes('primary {} went down'))",
        primary[0]
    );
    shown(
        &browser,
        &went_down,
        SHOWN,
        "the event list says the endpoint went down",
    )
    .await;
    shown(
        &browser,
        "document.querySelector('#alerts [data-kind=\"failover_active\"][data-state=\"firing\"]') !== null",
        SHOWN,
        "the failover alert fires on the page",
    )
    .await;
    // Let the charts draw a while on secondary before the picture: a few
    // seconds, or for the docs' picture long enough to read the change.
    let settle = if std::env::var_os("LEVEE_SCREENSHOT").is_some() {
        25
    } else {
        3
    };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.save_screenshot(&shot).await.expect("screenshot");
    let png = std::fs::read(&shot).expect("read screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real picture"
    );
    if std::env::var_os("LEVEE_SCREENSHOT").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/images/dashboard.png");
        std::fs::create_dir_all(docs.parent().expect("parent")).expect("docs/images");
        std::fs::copy(&shot, &docs).expect("copy the screenshot to the docs");
        eprintln!("screenshot saved to {}", docs.display());
    }

    post(&control, "/demo/regions/primary/restore").await;
    shown(
        &browser,
        &tiles_in("healthy"),
        SHOWN,
        "the primary endpoints are shown healthy again",
    )
    .await;
    // Failback waits 5 s, then ramps over 10 s.
    shown(
        &browser,
        &format!("{} === 1", share("primary")),
        SHOWN * 3,
        "the traffic is shown back on primary",
    )
    .await;
    shown(
        &browser,
        "document.querySelector('#alerts [data-kind=\"failover_active\"]') === null",
        SHOWN * 2,
        "the failover alert resolves on the page",
    )
    .await;

    let problems = browser.problems();
    assert!(
        problems.is_empty(),
        "the page ran without errors or policy violations: {problems:#?}"
    );
    drop(browser);
    assert!(demo.shutdown().await);
}

/// Waits until `expression` holds in the page; if it never does, saves
/// what the page looked like beside the test's other files and fails.
async fn shown(browser: &Browser, expression: &str, deadline: Duration, what: &str) {
    if let Err(e) = browser.wait_for(expression, deadline).await {
        let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-failure.png");
        let saved = match browser.save_screenshot(&shot).await {
            Ok(()) => format!("the page is in {}", shot.display()),
            Err(e) => format!("no screenshot: {e:#}"),
        };
        panic!("{what}: {e:#}\n{saved}");
    }
}

/// With `[admin] token`, the API answers 401 until the page has the
/// token: the page asks for it, says when one is refused, keeps the good
/// one for the tab, and sends it on every call and on the event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_admin_token() {
    const TOKEN: &str = "dashboard-test-token-0123456789";
    let browser = Browser::launch(1200, 800)
        .await
        .expect("headless Chromium starts");
    let backend = Backend::start("a").await;
    let toml = simple(&[backend.addr()]).replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        1,
    );
    let h = Harness::start(&toml).await;
    browser
        .navigate(&format!("http://{}/", h.admin))
        .await
        .expect("page loads");

    let form_shown = "!document.getElementById('token').hidden";
    let refused = "!document.getElementById('token-error').hidden";
    let submit = |token: &str| {
        format!(
            "document.getElementById('token-input').value = {token:?}; \
             document.getElementById('token').requestSubmit(); true"
        )
    };
    shown(&browser, form_shown, SHOWN, "the page asks for the token").await;
    assert_eq!(
        browser.evaluate(refused).await.expect("eval"),
        false,
        "nothing refused yet"
    );
    browser
        .evaluate(&submit("not-the-token-at-all"))
        .await
        .expect("submit");
    shown(
        &browser,
        &format!("{form_shown} && {refused}"),
        SHOWN,
        "a wrong token is refused",
    )
    .await;

    browser.evaluate(&submit(TOKEN)).await.expect("submit");
    let endpoint = format!(
        "document.querySelector('[data-endpoint=\"{}\"]') !== null",
        backend.addr()
    );
    shown(
        &browser,
        &endpoint,
        SHOWN,
        "with the token, the page shows the upstream",
    )
    .await;
    shown(
        &browser,
        "document.getElementById('live').dataset.state === 'live'",
        SHOWN,
        "the event stream takes the token too",
    )
    .await;
    assert_eq!(browser.evaluate(form_shown).await.expect("eval"), false);
    assert_eq!(
        browser
            .evaluate("sessionStorage.getItem('levee.admin.token')")
            .await
            .expect("eval"),
        TOKEN,
        "kept for the tab"
    );
    // Only the refusals before the token were errors.
    let problems: Vec<String> = browser
        .problems()
        .into_iter()
        .filter(|p| !p.contains("401"))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

async fn post(client: &Client, path: &str) {
    let req = http::Request::post(path)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let r = client.send(req).await.expect(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let _: Value = serde_json::from_str(&r.text()).expect("json");
}

/// A notifier whose receiver refuses every notification shows as failing,
/// with the receiver's answer, beside the alert it could not deliver.
#[tokio::test]
async fn the_dashboard_shows_a_notifier_that_cannot_deliver() {
    let browser = Browser::launch(1200, 800)
        .await
        .expect("headless Chromium starts");
    let receiver = levee_testkit::Receiver::start().await.expect("receiver");
    receiver.always(503);
    let up = Backend::start("a").await;
    let down = Backend::start("b").await;
    let dead = down.addr();
    down.kill().await;
    // The default rules (no [[alert]] here) include endpoint_down.
    let toml = simple(&[up.addr(), dead])
        + "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nfall = 1\n"
        + &format!(
            "[alerting.notifier.pager]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\n\
             max_retries = 1\nbackoff_base = \"10ms\"\nbackoff_max = \"10ms\"\n",
            receiver.url("/")
        );
    let h = Harness::start(&toml).await;
    browser
        .navigate(&format!("http://{}/", h.admin))
        .await
        .expect("page loads");
    shown(
        &browser,
        "(() => { const n = document.querySelector('[data-notifier=\"pager\"]'); \
         return n !== null && n.dataset.state === 'failing' && n.textContent.includes('503'); })()",
        SHOWN,
        "the notifier shows as failing with the receiver's answer",
    )
    .await;
    shown(
        &browser,
        "document.querySelector('#alerts [data-kind=\"endpoint_down\"][data-state=\"firing\"]') !== null",
        SHOWN,
        "the undelivered alert is on the page",
    )
    .await;
    assert!(!receiver.received().is_empty(), "levee tried to deliver");
}

/// WCAG 2 contrast of every piece of text on the page against the
/// background it is drawn on (the nearest ancestor with one), as
/// `[{text, ratio, color, background}]` for those below `min`.
const LOW_CONTRAST: &str = r#"(min) => {
  const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      const v = rgb(c);
      if (v.length >= 3 && (v.length < 4 || v[3] > 0.5)) return c;
    }
    return getComputedStyle(document.documentElement).backgroundColor;
  };
  const low = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!n.textContent.trim() || !el || el.closest('[hidden]') || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || Number(style.opacity) === 0) continue;
    // Translucent text (its colour's alpha, its and its ancestors'
    // opacity) is blended over the background before it is measured.
    let alpha = rgb(style.color)[3] ?? 1;
    for (let e = el; e; e = e.parentElement) alpha *= Number(getComputedStyle(e).opacity);
    const fg = style.color, bg = background(el);
    const [fr, fgg, fb] = rgb(fg), [br, bgg, bb] = rgb(bg);
    const seen = [fr * alpha + br * (1 - alpha), fgg * alpha + bgg * (1 - alpha), fb * alpha + bb * (1 - alpha)];
    const [a, b] = [lum(seen), lum(rgb(bg))].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    if (ratio < min) low.push({ text: n.textContent.trim().slice(0, 40), ratio: Math.round(ratio * 100) / 100, color: fg, background: bg });
  }
  return low;
}"#;

/// Both colour schemes are legible: every text on the page, with a
/// healthy, an unhealthy and a drained endpoint and an alert firing, has
/// at least WCAG AA's 4.5:1 contrast with its background. `LEVEE_SCREENSHOT=1` saves the dark
/// page to docs/images/dashboard-dark.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_colour_schemes_are_legible() {
    let browser = Browser::launch(1400, 1000)
        .await
        .expect("headless Chromium starts");
    let (up, down, drained) = (
        Backend::start("up").await,
        Backend::start("down").await,
        Backend::start("drained").await,
    );
    let checks = "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";
    let toml = config(
        &[("local", 0, &[up.addr(), down.addr(), drained.addr()])],
        checks,
        "",
    );
    let h = Harness::start(&toml).await;
    // An endpoint in each state, and the endpoint-down alert firing.
    drop(down);
    let client = Client::http1(h.admin);
    post(
        &client,
        &format!("/api/v1/upstreams/app/endpoints/{}/drain", drained.addr()),
    )
    .await;

    for scheme in ["light", "dark"] {
        browser
            .call(
                "Emulation.setEmulatedMedia",
                serde_json::json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
            )
            .await
            .expect("emulate the colour scheme");
        browser
            .navigate(&format!("http://{}/", h.admin))
            .await
            .expect("page loads");
        shown(
            &browser,
            "document.querySelectorAll('#upstreams [data-endpoint]').length === 3 \
             && document.querySelector('#alerts .alert-firing') !== null",
            SHOWN,
            "the endpoints and the alert are shown",
        )
        .await;
        let page_dark = browser
            .evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
            .await
            .expect("eval");
        assert_eq!(page_dark, scheme == "dark", "the page sees the {scheme} scheme");
        if scheme == "dark" && std::env::var_os("LEVEE_SCREENSHOT").is_some() {
            // Twenty seconds of traffic, so the charts have something to show.
            let gateway = h.client();
            for _ in 0..400 {
                let _ = gateway.get("/").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/images/dashboard-dark.png");
            browser.save_screenshot(&docs).await.expect("screenshot");
        }
        // The share bar shows the levels that take traffic; a probe
        // segment for each of the five level colours covers the rest.
        let probe = "const bar = document.querySelector('.seg').parentElement; \
             for (let i = 0; i < 5; i++) { const s = bar.querySelector('.seg').cloneNode(); \
             s.className = `seg level-${i}`; s.textContent = `level ${i} 20%`; s.style.width = '20%'; bar.append(s); }";
        let low = browser
            .evaluate(&format!("{probe}; ({LOW_CONTRAST})(4.5)"))
            .await
            .expect("eval");
        assert_eq!(low, Value::Array(Vec::new()), "{scheme}: text below 4.5:1");
    }
    assert!(browser.problems().is_empty(), "{:#?}", browser.problems());
}
