//! The JSON API against a crawled network of real nodes: every documented route answers with
//! what its OpenAPI schema requires, bad input gets a clear 4xx with the shared error body,
//! live events announce a node that joins, a lookup trace has rounds, the mounted node API
//! needs its token, and every response carries the security headers.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{Backend, Network, call, explorer, get, start_node};
use meshara_core::Identity;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn assert_error(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{what}: not the shared error body: {body}"
    );
}

/// Checks `value` has every property the schema marks required (following `$ref` and `allOf`).
fn check_required(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return check_required(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check_required(doc, s, value, at);
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required {
            let key = key.as_str().unwrap();
            assert!(value.get(key).is_some(), "{at}: missing {key:?} in {value}");
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (k, s) in props {
            if let Some(v) = obj.get(k) {
                check_required(doc, s, v, &format!("{at}.{k}"));
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().take(20).enumerate() {
            check_required(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_documented_and_refuses_bad_input() {
    let net = Network::start(8, &[]).await;
    let Some(h) = explorer(Backend::Sqlite, &[net.bootstrap().to_string()], |c| {
        c.node.api_hosts = vec!["explorer.test".into()];
    })
    .await
    else {
        return;
    };
    h.explorer.crawl_now().await.unwrap();
    let some = net.nodes[3].as_ref().unwrap().node_id().to_string();

    // Every documented GET route answers 200 with what its schema requires.
    let doc = get(h.addr, "/api/v1/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9);
    for (path, ops) in paths {
        let Some(op) = ops.get("get") else { continue };
        if path == "/api/v1/events" {
            continue; // a stream; checked below
        }
        let concrete = path.replace("{id}", &some);
        let value = get(h.addr, &concrete).await;
        let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        check_required(&doc, schema, &value, path);
    }
    // The other way round: every route of the API is documented.
    for path in [
        "/api/v1/overview",
        "/api/v1/history",
        "/api/v1/graph",
        "/api/v1/nodes",
        "/api/v1/nodes/{id}",
        "/api/v1/lookups",
        "/api/v1/events",
        "/api/v1/snapshot",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }

    // Bad input: a clear 4xx, the shared error body.
    for (path, expected) in [
        ("/api/v1/nodes?per_page=0", 400),
        ("/api/v1/nodes?per_page=201", 400),
        ("/api/v1/nodes?page=abc", 400),
        ("/api/v1/nodes?state=sideways", 400),
        ("/api/v1/nodes?sort=colour", 400),
        ("/api/v1/nodes?order=up", 400),
        ("/api/v1/nodes?capability=teleport", 400),
        ("/api/v1/nodes?transport=pigeon", 400),
        ("/api/v1/history?since=-5", 400),
        ("/api/v1/nodes/not-a-node-id", 400),
        (
            "/api/v1/nodes/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            404,
        ),
        ("/api/v1/nope", 404),
        ("/no-such-file.js", 404),
    ] {
        let (status, body) = call(h.addr, "GET", path, None).await;
        assert_error(status, &body, expected, path);
    }
    // Limits are counted in characters, as the OpenAPI document's maxLength is.
    for (long, expected) in [
        (format!("/api/v1/nodes?q={}", "a".repeat(200)), 400),
        (format!("/api/v1/nodes?q={}", "%C3%A9".repeat(128)), 200),
        (format!("/api/v1/nodes?q={}", "%C3%A9".repeat(129)), 400),
        (format!("/api/v1/nodes?version={}", "v".repeat(65)), 400),
    ] {
        let (status, body) = call(h.addr, "GET", &long, None).await;
        if expected == 200 {
            assert_eq!(status, 200, "{long}: {body}");
        } else {
            assert_error(status, &body, expected, &long);
        }
    }
    // Search text is data, never SQL or a pattern.
    for q in ["%25", "_", "%27%20OR%201%3D1%20--", "%5C"] {
        let v = get(h.addr, &format!("/api/v1/nodes?q={q}")).await;
        assert_eq!(v["total"], 0, "q={q}: {v}");
    }
    for (ct, body, expected) in [
        ("text/plain", b"{\"target\":\"x\"}".to_vec(), 415),
        ("application/json", b"{not json".to_vec(), 400),
        ("application/json", b"{\"target\": 5}".to_vec(), 400),
        ("application/json", b"{\"target\": \"abc\"}".to_vec(), 400),
        // The text form is lowercase; an uppercase key is refused, not silently folded.
        (
            "application/json",
            format!("{{\"target\": \"{}\"}}", "A".repeat(52)).into_bytes(),
            400,
        ),
        ("application/json", vec![b' '; 5000], 413),
    ] {
        let (status, v) = call(h.addr, "POST", "/api/v1/lookups", Some((ct, body))).await;
        assert_error(status, &v, expected, ct);
    }

    // A lookup trace of a real node: rounds, and the node found.
    let target = net.nodes[5].as_ref().unwrap().node_id().to_string();
    let body = serde_json::to_vec(&serde_json::json!({ "target": target })).unwrap();
    let (status, trace) = call(
        h.addr,
        "POST",
        "/api/v1/lookups",
        Some(("application/json", body)),
    )
    .await;
    assert_eq!(status, 200, "{trace}");
    assert_eq!(trace["found"], true, "{trace}");
    let rounds = trace["rounds"].as_array().unwrap();
    assert!(
        !rounds.is_empty() && !rounds[0]["queried"].as_array().unwrap().is_empty(),
        "{trace}"
    );
    check_required(
        &doc,
        &doc["components"]["schemas"]["Lookup"],
        &trace,
        "lookup",
    );

    // Security headers on the page and the API.
    for path in ["/", "/api/v1/overview"] {
        let stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let mut stream = BufReader::new(stream);
        stream
            .get_mut()
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        assert!(
            head.contains("content-security-policy: default-src 'self'"),
            "{head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("x-frame-options: deny"), "{head}");
    }

    // The node API needs its token.
    // (The mounted node API answers with meshara-axum's own error body.)
    let (status, v) = call(h.addr, "GET", "/meshara/status", None).await;
    assert_eq!(status, 401, "node API without token: {v}");
    assert_eq!(v["error"], "unauthorized", "{v}");
    let token = h.explorer.node_api_token().unwrap().to_owned();
    let node_api = |host: &'static str, origin: Option<&'static str>| {
        let token = token.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = hyper::Request::get("/meshara/status")
                .header("host", host)
                .header("authorization", format!("Bearer {token}"));
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            sender
                .send_request(
                    req.body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap(),
                )
                .await
                .unwrap()
                .status()
        }
    };
    // With the token, under the configured name and on loopback: served.
    assert_eq!(node_api("explorer.test", None).await, 200);
    assert_eq!(node_api("127.0.0.1", None).await, 200);
    // A rebound name (DNS rebinding) or a page of another site: refused even with the token.
    assert_eq!(node_api("attacker.example", None).await, 403);
    assert_eq!(
        node_api("explorer.test", Some("https://attacker.example")).await,
        403
    );

    // Health, readiness, metrics.
    assert_eq!(get(h.addr, "/healthz").await, "ok");
    assert_eq!(get(h.addr, "/readyz").await, "ready");
    let metrics = get(h.addr, "/metrics").await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains("meshara_explorer_crawls_total"), "{text}");
    assert!(
        text.contains("meshara_explorer_crawl_duration_seconds_bucket"),
        "{text}"
    );
    // No Accept header: the classic text format (OpenMetrics is for scrapers that ask for it),
    // the node's series and the explorer's in one exposition.
    assert!(
        text.contains("# TYPE meshara_explorer_crawls_total counter")
            && text.contains("# TYPE meshara_messages_total counter")
            && !text.contains("# EOF"),
        "{text}"
    );

    // Live: a node that joins is announced over SSE once a crawl finds it.
    let stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"GET /api/v1/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let joiner = start_node(40, Identity::generate(), Some(net.bootstrap()), false, 0).await;
    let joiner_id = joiner.node_id().to_string();
    // Let the newcomer enter the bootstrap's table, then crawl.
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.explorer.request_crawl();
    let announced = tokio::time::timeout(Duration::from_secs(60), async {
        let mut event = String::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap() == 0 {
                return false;
            }
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event == "node" && data.contains(&joiner_id) {
                    return true;
                }
            }
        }
    })
    .await;
    assert_eq!(announced, Ok(true), "the new node was not announced live");

    // The snapshot has every node and edge.
    let snap = get(h.addr, "/api/v1/snapshot").await;
    assert!(snap["nodes"].as_array().unwrap().len() >= 9, "{snap}");
    assert!(!snap["edges"].as_array().unwrap().is_empty());

    joiner.stop().await;
    h.explorer.stop().await;
}
