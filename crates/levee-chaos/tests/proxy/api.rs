//! Toxiproxy's API contract: paths, statuses, bodies and error messages as
//! Toxiproxy 2.x gives them (api.go, proxy_collection.go,
//! toxic_collection.go).

use serde_json::json;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn version_is_a_toxiproxy_2() {
    let s = server().await;
    let r = get(s.api, "/version").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json;charset=utf-8")
    );
    assert!(r.json()["version"].as_str().unwrap().starts_with("2."), "{r:?}");
}

#[tokio::test]
async fn a_proxy_is_created_shown_listed_and_deleted() {
    let s = server().await;
    let echo = levee_testkit::Echo::start().await.unwrap();
    let body = json!({"name": "echo", "listen": "127.0.0.1:0", "upstream": echo.addr().to_string()});
    let r = post(s.api, "/proxies", &body.to_string()).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let made = r.json();
    let listen = made["listen"].as_str().unwrap().to_string();
    assert!(
        listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
        "the real port: {listen}"
    );
    assert_eq!(
        made,
        json!({"name": "echo", "listen": listen, "upstream": echo.addr().to_string(), "enabled": true, "toxics": []})
    );
    // The body keeps Toxiproxy's field order too.
    assert!(r.body.starts_with(r#"{"name":"echo","listen":"#), "{}", r.body);

    let shown = get(s.api, "/proxies/echo").await;
    assert_eq!((shown.status, shown.json()), (200, made.clone()));
    let all = get(s.api, "/proxies").await;
    assert_eq!((all.status, all.json()), (200, json!({"echo": made})));

    let again = post(s.api, "/proxies", &body.to_string()).await;
    assert_eq!(
        (again.status, again.json()),
        (409, json!({"error": "proxy already exists", "status": 409}))
    );

    let gone = call(s.api, "DELETE", "/proxies/echo", None).await;
    assert_eq!((gone.status, gone.body.as_str()), (204, ""));
    let r = get(s.api, "/proxies/echo").await;
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "proxy not found", "status": 404}))
    );
    assert!(
        TcpStream::connect(&listen).await.is_err(),
        "a deleted proxy refuses connections"
    );
    let r = call(s.api, "DELETE", "/proxies/echo", None).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn bad_input_is_a_400_that_says_why() {
    let s = server().await;
    let cases = [
        ("{", "bad request body: "),
        ("[1,2]", "bad request body: "),
        ("", "bad request body: "),
        (r#"{"name": 5}"#, "bad request body: "),
        (r#"{"upstream": "127.0.0.1:1"}"#, "missing required field: name"),
        (r#"{"name": "x"}"#, "missing required field: upstream"),
        (
            r#"{"name": "x", "upstream": "127.0.0.1:1", "listen": "nowhere"}"#,
            "bad request body: listen",
        ),
    ];
    for (body, error) in cases {
        let r = post(s.api, "/proxies", body).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        let j = r.json();
        assert_eq!(j["status"], 400);
        assert!(j["error"].as_str().unwrap().starts_with(error), "{body}: {j}");
    }
    assert_eq!(get(s.api, "/proxies").await.json(), json!({}), "nothing was made");
}

#[tokio::test]
async fn a_port_in_use_is_toxiproxys_500() {
    let s = server().await;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = taken.local_addr().unwrap();
    let body = json!({"name": "x", "listen": at.to_string(), "upstream": "127.0.0.1:1"});
    let r = post(s.api, "/proxies", &body.to_string()).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("listen tcp {at}: bind: "))
    );
    assert_eq!(get(s.api, "/proxies/x").await.status, 404);
}

#[tokio::test]
async fn disabling_closes_the_listener_and_enabling_reopens_it() {
    let s = server().await;
    let echo = levee_testkit::Echo::start().await.unwrap();
    let addr = proxy(s.api, "echo", echo.addr()).await;
    let r = post(s.api, "/proxies/echo", r#"{"enabled": false}"#).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["enabled"], false);
    assert_eq!(r.json()["listen"], addr.to_string(), "the address stays");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a disabled proxy refuses"
    );
    // PATCH is the same call (Toxiproxy 2.6 and later).
    let r = call(s.api, "PATCH", "/proxies/echo", Some(r#"{"enabled": true}"#)).await;
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(true)));
    let mut c = connect(addr).await;
    round_trip(&mut c, b"back").await;
}

#[tokio::test]
async fn a_new_upstream_restarts_the_proxy_and_cuts_its_connections() {
    let s = server().await;
    let (a, b) = (
        levee_testkit::Echo::start().await.unwrap(),
        levee_testkit::Echo::start().await.unwrap(),
    );
    let addr = proxy(s.api, "p", a.addr()).await;
    let mut old = connect(addr).await;
    round_trip(&mut old, b"a").await;
    let r = post(
        s.api,
        "/proxies/p",
        &json!({"upstream": b.addr().to_string()}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["upstream"], b.addr().to_string());
    let (_, _) = read_to_end(&mut old).await;
    let mut new = connect(addr).await;
    round_trip(&mut new, b"b").await;
    assert_eq!(b.accepted(), 1);
    let r = post(s.api, "/proxies/nope", "{}").await;
    assert_eq!(r.status, 404);
    let r = post(s.api, "/proxies/p", "{").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn toxics_have_toxiproxys_defaults_shapes_and_errors() {
    let s = server().await;
    let echo = levee_testkit::Echo::start().await.unwrap();
    proxy(s.api, "p", echo.addr()).await;
    let r = post(
        s.api,
        "/proxies/p/toxics",
        r#"{"type": "latency", "attributes": {"latency": 300}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "Toxiproxy answers a new toxic with 200: {r:?}");
    let latency = json!({
        "attributes": {"latency": 300, "jitter": 0},
        "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 1.0
    });
    assert_eq!(r.json(), latency);
    assert!(
        r.body
            .starts_with(r#"{"attributes":{"latency":300,"jitter":0},"name":"#),
        "{}",
        r.body
    );

    let body = json!({"name": "cut", "type": "limit_data", "stream": "upstream", "toxicity": 0.5, "attributes": {"bytes": 9}});
    let r = post(s.api, "/proxies/p/toxics", &body.to_string()).await;
    assert_eq!(r.json(), body);
    // Upstream first, as Toxiproxy lists them.
    let all = get(s.api, "/proxies/p/toxics").await;
    assert_eq!((all.status, all.json()), (200, json!([body, latency])));
    assert_eq!(
        get(s.api, "/proxies/p").await.json()["toxics"],
        json!([body, latency])
    );
    assert_eq!(get(s.api, "/proxies/p/toxics/cut").await.json(), body);

    let errors = [
        (r#"{"type": "latency"}"#, 409, "toxic already exists"),
        (r#"{"type": "nope"}"#, 400, "invalid toxic type"),
        (r#"{}"#, 400, "invalid toxic type"),
        (
            r#"{"type": "latency", "stream": "sideways"}"#,
            400,
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            r#"{"type": "slicer", "attributes": {"delay": "soon"}}"#,
            400,
            "bad request body: ",
        ),
        (
            r#"{"type": "slicer", "attributes": [1]}"#,
            400,
            "bad request body: ",
        ),
        (
            r#"{"type": "slicer", "toxicity": "high"}"#,
            400,
            "bad request body: ",
        ),
        ("not json", 400, "bad request body: "),
    ];
    for (body, status, error) in errors {
        let r = post(s.api, "/proxies/p/toxics", body).await;
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert_eq!(r.json()["status"], status);
        assert!(
            r.json()["error"].as_str().unwrap().starts_with(error),
            "{body}: {r:?}"
        );
    }
    let r = post(s.api, "/proxies/nope/toxics", r#"{"type": "latency"}"#).await;
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "proxy not found", "status": 404}))
    );
    let r = get(s.api, "/proxies/p/toxics/nope").await;
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "toxic not found", "status": 404}))
    );
}

#[tokio::test]
async fn a_toxic_update_changes_only_what_it_names() {
    let s = server().await;
    let echo = levee_testkit::Echo::start().await.unwrap();
    proxy(s.api, "p", echo.addr()).await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "latency", "attributes": {"latency": 300, "jitter": 10}}),
    )
    .await;
    let r = post(
        s.api,
        "/proxies/p/toxics/latency_downstream",
        r#"{"attributes": {"jitter": 50}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["attributes"], json!({"latency": 300, "jitter": 50}));
    assert_eq!(r.json()["toxicity"], 1.0);
    let r = call(
        s.api,
        "PATCH",
        "/proxies/p/toxics/latency_downstream",
        Some(r#"{"toxicity": 0.25}"#),
    )
    .await;
    assert_eq!(
        (
            r.json()["toxicity"].clone(),
            r.json()["attributes"]["jitter"].clone()
        ),
        (json!(0.25), json!(50))
    );
    let r = post(
        s.api,
        "/proxies/p/toxics/latency_downstream",
        r#"{"attributes": {"latency": "x"}}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = post(s.api, "/proxies/p/toxics/nope", "{}").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("toxic not found"))
    );
    remove_toxic(s.api, "p", "latency_downstream").await;
    let r = call(s.api, "DELETE", "/proxies/p/toxics/latency_downstream", None).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("toxic not found"))
    );
    assert_eq!(get(s.api, "/proxies/p/toxics").await.json(), json!([]));
}

#[tokio::test]
async fn populate_makes_keeps_or_replaces() {
    let s = server().await;
    let (a, b) = (
        levee_testkit::Echo::start().await.unwrap(),
        levee_testkit::Echo::start().await.unwrap(),
    );
    let list = json!([
        {"name": "one", "listen": "127.0.0.1:0", "upstream": a.addr().to_string()},
        {"name": "two", "listen": "127.0.0.1:0", "upstream": a.addr().to_string(), "enabled": false},
    ]);
    let r = post(s.api, "/populate", &list.to_string()).await;
    assert_eq!(r.status, 201, "{r:?}");
    let proxies = r.json()["proxies"].as_array().unwrap().clone();
    assert_eq!(r.json().as_object().unwrap().len(), 1, "no error field: {r:?}");
    assert_eq!(proxies.len(), 2);
    assert_eq!(
        (proxies[0]["enabled"].clone(), proxies[1]["enabled"].clone()),
        (json!(true), json!(false))
    );
    let one = proxies[0]["listen"].as_str().unwrap().to_string();
    add_toxic(s.api, "one", json!({"type": "latency"})).await;

    // The same again keeps "one" as it is, toxics and all.
    let same = json!([{"name": "one", "listen": one, "upstream": a.addr().to_string()}]);
    let r = post(s.api, "/populate", &same.to_string()).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["proxies"][0]["toxics"].as_array().unwrap().len(), 1);
    // Another upstream replaces it: no toxics.
    let other = json!([{"name": "one", "listen": one, "upstream": b.addr().to_string()}]);
    let r = post(s.api, "/populate", &other.to_string()).await;
    assert_eq!(r.json()["proxies"][0]["toxics"], json!([]));
    assert_eq!(r.json()["proxies"][0]["listen"], one.as_str());
    let mut c = connect(one.parse().unwrap()).await;
    round_trip(&mut c, b"to b").await;
    assert_eq!(b.accepted(), 1);
    assert_eq!(
        get(s.api, "/proxies").await.json().as_object().unwrap().len(),
        2,
        "\"two\" stays"
    );

    let bad = json!([{"name": "three", "upstream": "127.0.0.1:1"}, {"upstream": "127.0.0.1:1"}]);
    let r = post(s.api, "/populate", &bad.to_string()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "missing required field: name at proxy 2", "status": 400, "proxies": []})
    );
    assert_eq!(
        get(s.api, "/proxies/three").await.status,
        404,
        "checked before anything is made"
    );
    let r = post(s.api, "/populate", r#"{"name": "x"}"#).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request body: ")
    );
}

#[tokio::test]
async fn reset_enables_every_proxy_and_removes_every_toxic() {
    let s = server().await;
    let echo = levee_testkit::Echo::start().await.unwrap();
    let addr = proxy(s.api, "p", echo.addr()).await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "timeout", "attributes": {"timeout": 0}}),
    )
    .await;
    assert_eq!(
        post(s.api, "/proxies/p", r#"{"enabled": false}"#).await.status,
        200
    );
    let r = post(s.api, "/reset", "").await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let p = get(s.api, "/proxies/p").await.json();
    assert_eq!(
        (p["enabled"].clone(), p["toxics"].clone()),
        (json!(true), json!([]))
    );
    let mut c = connect(addr).await;
    round_trip(&mut c, b"clean").await;
}

#[tokio::test]
async fn browsers_and_wrong_methods_are_refused() {
    let s = server().await;
    let r = call_as(s.api, "GET", "/proxies", None, "Mozilla/5.0 (X11; Linux x86_64)").await;
    assert_eq!(r.status, 403, "a web page must not drive the API: {r:?}");
    assert_eq!(call(s.api, "PUT", "/proxies", Some("{}")).await.status, 405);
    assert_eq!(call(s.api, "DELETE", "/reset", None).await.status, 405);
    assert_eq!(get(s.api, "/nope").await.status, 404);
}
