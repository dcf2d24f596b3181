//! Every route and rejection, driven as a tower service (`oneshot`) and through a real server.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::FromRef;
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use meshara_axum::proto;
use meshara_core::{Event, Identity, Node, NodeBuilder};
use prost::Message as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceExt;

#[derive(Clone)]
struct AppState {
    node: Node,
}

impl FromRef<AppState> for Node {
    fn from_ref(s: &AppState) -> Node {
        s.node.clone()
    }
}

async fn node() -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

async fn pair() -> (Node, Node) {
    let a = node().await;
    let b = node().await;
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    (a, b)
}

/// The bearer token the test apps require; the helpers below send it.
const TOKEN: &str = "test-token-b1946ac92492d2347c6235b4d2611184";
const BEARER: &str = "Bearer test-token-b1946ac92492d2347c6235b4d2611184";

fn app(node: &Node) -> Router {
    let access = meshara_axum::Access::bearer(TOKEN).allow_host("meshara.test");
    Router::new()
        .nest("/meshara", meshara_axum::routes(access))
        .with_state(AppState { node: node.clone() })
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    raw(app, req.body(body).unwrap()).await
}

async fn raw(app: &Router, mut req: Request<Body>) -> (StatusCode, Value) {
    req.headers_mut()
        .entry(header::AUTHORIZATION)
        .or_insert(BEARER.parse().unwrap());
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers() {
    let (a, b) = pair().await;
    let api = app(&a);
    // Private message, acknowledged end to end.
    let (status, body) = call(
        &api,
        "POST",
        "/meshara/messages",
        Some(json!({"to": b.node_id().to_string(), "content": "hi"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivered"], true);
    // Fire and forget, binary content.
    let (status, body) = call(
        &api,
        "POST",
        "/meshara/messages",
        Some(json!({"to": b.node_id().to_string(), "content_base64": "AAEC", "wait": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivered"], false);
    // To a NodeId nobody knows: 404 as soon as the DHT lookup (b answers, knows nothing)
    // ends, not 504 at the 60 s delivery deadline.
    let ghost = Identity::generate().node_id();
    let (status, body) = call(
        &api,
        "POST",
        "/meshara/messages",
        Some(json!({"to": ghost.to_string(), "content": "anyone?"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "recipient_not_found", "{body}");
    // Broadcast.
    let (status, body) = call(
        &api,
        "POST",
        "/meshara/broadcasts",
        Some(json!({"topic": "news", "content": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"].as_str().unwrap().len(), 64);
    // Query answered by b's application.
    let mut b_events = b.events();
    tokio::spawn(async move {
        while let Some(e) = b_events.next().await {
            if let Event::Query(q) = e {
                q.respond(format!("pong:{}", String::from_utf8_lossy(&q.body)))
                    .unwrap();
            }
        }
    });
    let (status, body) = call(
        &api,
        "POST",
        "/meshara/queries",
        Some(json!({"to": b.node_id().to_string(), "method": "ping", "body": "1"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["body"], "pong:1");
    // Peers, status, metrics.
    let (status, body) = call(&api, "GET", "/meshara/peers", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["node_id"], b.node_id().to_string());
    let (status, body) = call(&api, "GET", "/meshara/status", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["node_id"], a.node_id().to_string());
    assert_eq!(body["peers"], 1);
    let (status, body) = call(&api, "GET", "/meshara/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.as_str().unwrap().contains("meshara_messages_total"));
    a.stop().await;
    b.stop().await;
}

/// Bad requests to `a`'s routes (with `b` as a valid peer), with the status and code each
/// must get.
fn bad_requests(a: &Node, b: &Node) -> Vec<(Request<Body>, StatusCode, &'static str)> {
    let to = b.node_id().to_string();
    vec![
        (
            post_json("/meshara/messages", json!({"to": "nope", "content": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_node_id",
        ),
        (
            post_json(
                "/meshara/messages",
                json!({"to": to, "content": "x", "content_base64": "AA=="}),
            ),
            StatusCode::BAD_REQUEST,
            "ambiguous_content",
        ),
        (
            post_json(
                "/meshara/messages",
                json!({"to": to, "content_base64": "%%%"}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_base64",
        ),
        (
            post_json("/meshara/messages", json!({"to": to, "contnet": "typo"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_fields",
        ),
        (
            Request::post("/meshara/messages")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Request::post("/meshara/messages")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "wrong_content_type",
        ),
        (
            Request::post("/meshara/messages")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(vec![b' '; 3 << 20]))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            post_json(
                "/meshara/messages",
                json!({"to": to, "content": "x".repeat(600_000)}),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            post_json(
                "/meshara/messages",
                json!({"to": a.node_id().to_string(), "content": "me"}),
            ),
            StatusCode::BAD_REQUEST,
            "to_self",
        ),
        (
            post_json(
                "/meshara/messages",
                json!({"to": to, "content": "x", "privacy": "garlic"}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_privacy",
        ),
        (
            // Two nodes know no third, let alone three relays.
            post_json(
                "/meshara/messages",
                json!({"to": to, "content": "x", "privacy": "onion"}),
            ),
            StatusCode::SERVICE_UNAVAILABLE,
            "too_few_relays",
        ),
        (
            post_json(
                "/meshara/messages",
                json!({"to": to, "content": "x".repeat(9000), "privacy": "onion"}),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            // Neither node has a Tor or an I2P transport: refused, never sent over QUIC.
            post_json(
                "/meshara/messages",
                json!({"to": to, "content": "x", "privacy": "tor"}),
            ),
            StatusCode::CONFLICT,
            "no_transport",
        ),
        (
            post_json(
                "/meshara/messages",
                json!({"to": to, "content": "x", "privacy": "i2p"}),
            ),
            StatusCode::CONFLICT,
            "no_transport",
        ),
        (
            post_json("/meshara/broadcasts", json!({"topic": "", "content": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
        (
            post_json(
                "/meshara/queries",
                json!({"to": to, "method": "m", "timeout_ms": 0}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
        ),
        (
            post_json(
                "/meshara/queries",
                json!({"to": to, "method": "nobody", "timeout_ms": 5000}),
            ),
            StatusCode::BAD_GATEWAY,
            "query_rejected",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_say_what_is_wrong() {
    let (a, b) = pair().await;
    let api = app(&a);
    for (req, status, code) in bad_requests(&a, &b) {
        let uri = req.uri().clone();
        let (got, body) = raw(&api, req).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert_eq!(body["error"], code, "{uri}: {body}");
        assert!(
            !body["message"].as_str().unwrap().is_empty(),
            "{uri}: {body}"
        );
    }
    // A stopped node answers 503 instead of failing later.
    a.stop().await;
    let (status, body) = call(&api, "GET", "/meshara/status", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "node_stopped");
    b.stop().await;
}

fn post_json(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_exactly_the_routes() {
    let a = node().await;
    let api = app(&a);
    let (status, doc) = call(&api, "GET", "/meshara/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = meshara_axum::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // Every documented route exists (no 404/405) on the mounted router.
    for (method, path) in served {
        if path.ends_with("/ws") || path == "/events" {
            continue; // upgrades and streams, covered by the server test
        }
        let req = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(format!("/meshara{path}"));
        let req = if method == "post" {
            req.header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
        } else {
            req.body(Body::empty())
        };
        let (status, body) = raw(&api, req.unwrap()).await;
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{path}: {status} {body}"
        );
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_websocket_deliver_events_in_order() {
    let (a, b) = pair().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app(&a)).into_future());

    // SSE over a real HTTP connection.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let res = sender
        .send_request(
            Request::get("/meshara/events")
                .header(header::HOST, "meshara.test")
                .header(header::AUTHORIZATION, BEARER)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut sse = res.into_body();

    // WebSocket.
    let mut ws_request = format!("ws://{addr}/meshara/events/ws")
        .into_client_request()
        .unwrap();
    ws_request
        .headers_mut()
        .insert(header::AUTHORIZATION, BEARER.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request).await.unwrap();

    // Give both subscriptions a moment to attach before sending.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..5 {
        b.send_private(a.node_id(), "text/plain", format!("event {i}"))
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
    }

    let mut seen = Vec::new();
    let mut buf = String::new();
    while seen.len() < 5 {
        let frame = tokio::time::timeout(Duration::from_secs(10), sse.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(data) = frame.data_ref() {
            buf.push_str(&String::from_utf8_lossy(data));
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: message") {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                let json: Value = serde_json::from_str(data).unwrap();
                seen.push(json["data"]["content"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(
        seen,
        (0..5).map(|i| format!("event {i}")).collect::<Vec<_>>()
    );

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = msg {
            let json: Value = serde_json::from_str(&text).unwrap();
            if json["kind"] == "message" {
                seen.push(json["data"]["content"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(
        seen,
        (0..5).map(|i| format!("event {i}")).collect::<Vec<_>>()
    );
    server.abort();
    a.stop().await;
    b.stop().await;
}

fn proto_request(uri: &str, msg: &impl prost::Message) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, meshara_axum::PROTOBUF)
        .header(header::ACCEPT, meshara_axum::PROTOBUF)
        .body(Body::from(msg.encode_to_vec()))
        .unwrap()
}

/// Sends `req` and decodes a protobuf answer of type `T` (or a `meshara.api.v1.Error`).
async fn proto_call<T: prost::Message + Default>(
    app: &Router,
    mut req: Request<Body>,
) -> (StatusCode, Result<T, proto::Error>) {
    req.headers_mut()
        .insert(header::AUTHORIZATION, BEARER.parse().unwrap());
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        meshara_axum::PROTOBUF,
        "{status}"
    );
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    if status.is_success() {
        (status, Ok(T::decode(bytes).unwrap()))
    } else {
        (status, Err(proto::Error::decode(bytes).unwrap()))
    }
}

fn proto_get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header(
            header::ACCEPT,
            "application/json;q=0.5, application/x-protobuf",
        )
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_speaks_protobuf_when_asked() {
    let (a, b) = pair().await;
    let api = app(&a);
    let to = b.node_id().to_string();
    let (status, sent) = proto_call::<proto::SendResponse>(
        &api,
        proto_request(
            "/meshara/messages",
            &proto::SendRequest {
                to: to.clone(),
                content_type: "application/octet-stream".into(),
                content: vec![0, 1, 2, 255].into(),
                wait: None,
                privacy: "direct".into(),
            },
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sent = sent.unwrap();
    assert!(sent.delivered);
    assert!(sent.latency_ms.unwrap() > 0.0);
    assert_eq!(sent.id.len(), 64);

    let (status, cast) = proto_call::<proto::BroadcastResponse>(
        &api,
        proto_request(
            "/meshara/broadcasts",
            &proto::BroadcastRequest {
                topic: "news".into(),
                content_type: String::new(),
                content: "x".into(),
            },
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cast.unwrap().id.len(), 64);

    let mut b_events = b.events();
    tokio::spawn(async move {
        while let Some(e) = b_events.next().await {
            if let Event::Query(q) = e {
                let mut answer = q.body.to_vec();
                answer.reverse();
                q.respond(answer).unwrap();
            }
        }
    });
    let (status, answer) = proto_call::<proto::QueryResponse>(
        &api,
        proto_request(
            "/meshara/queries",
            &proto::QueryRequest {
                to: to.clone(),
                method: "reverse".into(),
                body: vec![1, 2, 0xff].into(),
                timeout_ms: Some(5000),
            },
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer.unwrap().body.as_ref(), &[0xff, 2, 1]);

    let (status, peers) = proto_call::<proto::PeerList>(&api, proto_get("/meshara/peers")).await;
    assert_eq!(status, StatusCode::OK);
    let peers = peers.unwrap().peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].node_id, to);
    assert_eq!(peers[0].transport, "quic");

    let (status, st) = proto_call::<proto::Status>(&api, proto_get("/meshara/status")).await;
    assert_eq!(status, StatusCode::OK);
    let st = st.unwrap();
    assert_eq!(st.node_id, a.node_id().to_string());
    assert_eq!(st.peers, 1);
    assert!(st.messages_out >= 2);

    // A JSON body with `Accept: application/x-protobuf` answers protobuf, and a protobuf
    // body with `Accept: application/json` answers JSON.
    let req = Request::post("/meshara/broadcasts")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, meshara_axum::PROTOBUF)
        .body(Body::from(
            json!({"topic": "t", "content": "c"}).to_string(),
        ))
        .unwrap();
    let (status, cast) = proto_call::<proto::BroadcastResponse>(&api, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cast.unwrap().id.len(), 64);
    let mut req = proto_request(
        "/meshara/broadcasts",
        &proto::BroadcastRequest {
            topic: "t".into(),
            content_type: String::new(),
            content: "c".into(),
        },
    );
    req.headers_mut()
        .insert(header::ACCEPT, "application/json".parse().unwrap());
    let (status, body) = raw(&api, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"].as_str().unwrap().len(), 64);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_rejections_say_what_is_wrong() {
    let (a, b) = pair().await;
    let api = app(&a);
    let to = b.node_id().to_string();
    // Undecodable bytes: 400, as a protobuf Error since the client accepts protobuf.
    let req = Request::post("/meshara/messages")
        .header(header::CONTENT_TYPE, meshara_axum::PROTOBUF)
        .body(Body::from(vec![0xff; 16]))
        .unwrap();
    let (status, err) = proto_call::<proto::SendResponse>(&api, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err = err.unwrap_err();
    assert_eq!(err.error, "invalid_protobuf");
    assert!(
        err.message.contains("not a valid protobuf"),
        "{}",
        err.message
    );
    // Over the body limit: 413.
    let req = proto_request(
        "/meshara/messages",
        &proto::SendRequest {
            to: to.clone(),
            content: vec![7; 3 << 20].into(),
            ..Default::default()
        },
    );
    let (status, err) = proto_call::<proto::SendResponse>(&api, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(err.unwrap_err().error, "body_too_large");
    // Fields that decode but do not make sense: the same codes as JSON.
    let cases = [
        (
            proto_request(
                "/meshara/messages",
                &proto::SendRequest {
                    to: "nope".into(),
                    ..Default::default()
                },
            ),
            StatusCode::BAD_REQUEST,
            "invalid_node_id",
        ),
        (
            proto_request(
                "/meshara/messages",
                &proto::SendRequest {
                    to: to.clone(),
                    content: vec![0; 600_000].into(),
                    ..Default::default()
                },
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            proto_request(
                "/meshara/queries",
                &proto::QueryRequest {
                    to: to.clone(),
                    method: "m".into(),
                    timeout_ms: Some(0),
                    ..Default::default()
                },
            ),
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
        ),
        (
            proto_request("/meshara/broadcasts", &proto::BroadcastRequest::default()),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
    ];
    for (req, want_status, code) in cases {
        let uri = req.uri().clone();
        let (status, err) = proto_call::<proto::SendResponse>(&api, req).await;
        assert_eq!(status, want_status, "{uri}");
        let err = err.unwrap_err();
        assert_eq!(err.error, code, "{uri}: {}", err.message);
        assert!(!err.message.is_empty());
    }
    // A method a route does not serve: 405 with a body, in the negotiated format too.
    let (status, body) = raw(
        &api,
        Request::delete("/meshara/status")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "method_not_allowed");
    assert!(
        body["message"].as_str().unwrap().contains("DELETE"),
        "{body}"
    );
    let (status, err) = proto_call::<proto::Status>(
        &api,
        Request::delete("/meshara/status")
            .header(header::ACCEPT, meshara_axum::PROTOBUF)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(err.unwrap_err().error, "method_not_allowed");
    // Neither JSON nor protobuf: 415 naming both.
    let (status, body) = raw(
        &api,
        Request::post("/meshara/queries")
            .header(header::CONTENT_TYPE, "application/xml")
            .body(Body::from("<q/>"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"], "wrong_content_type");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("application/x-protobuf") && message.contains("application/xml"),
        "{message}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_extractor_in_an_app_route() {
    use axum::routing::post;
    use meshara_axum::Protobuf;
    async fn upper(
        Protobuf(req): Protobuf<proto::BroadcastRequest>,
    ) -> Protobuf<proto::BroadcastResponse> {
        Protobuf(proto::BroadcastResponse {
            id: req.topic.to_uppercase(),
        })
    }
    let app: Router = Router::new()
        .route("/upper", post(upper))
        .layer(axum::extract::DefaultBodyLimit::max(1024));
    let ok = proto_request(
        "/upper",
        &proto::BroadcastRequest {
            topic: "abc".into(),
            ..Default::default()
        },
    );
    let res = app.clone().oneshot(ok).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], meshara_axum::PROTOBUF);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(proto::BroadcastResponse::decode(bytes).unwrap().id, "ABC");
    // The extractor's own rejections: JSON bodies with status and code.
    let (status, body) = raw(
        &app,
        Request::post("/upper")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"], "wrong_content_type");
    let (status, body) = raw(
        &app,
        proto_request(
            "/upper",
            &proto::BroadcastRequest {
                topic: "x".repeat(2000),
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "body_too_large");
    let (status, body) = raw(
        &app,
        Request::post("/upper")
            .header(header::CONTENT_TYPE, "application/protobuf")
            .body(Body::from(vec![0x0a, 0x05, b'a']))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_protobuf");
}

/// One request over a fresh TCP connection to a real server.
async fn http(
    addr: std::net::SocketAddr,
    req: Request<Body>,
) -> (StatusCode, String, bytes::Bytes) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    parts
        .headers
        .insert(header::HOST, "meshara.test".parse().unwrap());
    parts
        .headers
        .entry(header::AUTHORIZATION)
        .or_insert(BEARER.parse().unwrap());
    let res = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        res.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_through_a_real_server() {
    let (a, b) = pair().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app(&a)).into_future());
    let mut b_events = b.events();
    tokio::spawn(async move {
        while let Some(e) = b_events.next().await {
            if let Event::Query(q) = e {
                if q.method == "nobody" {
                    q.reject(404, "no such method").unwrap();
                } else {
                    q.respond("answer").unwrap();
                }
            }
        }
    });
    let to = b.node_id().to_string();
    let mut covered = Vec::new();

    let (s, ct, body) = http(
        addr,
        post_json(
            "/meshara/messages",
            json!({"to": to, "content": "over tcp"}),
        ),
    )
    .await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::OK, "application/json"),
        "{body:?}"
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["delivered"], true);
    covered.push(("post", "/messages"));

    let (s, _, body) = http(
        addr,
        proto_request(
            "/meshara/broadcasts",
            &proto::BroadcastRequest {
                topic: "tcp".into(),
                content_type: String::new(),
                content: "x".into(),
            },
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(proto::BroadcastResponse::decode(body).unwrap().id.len(), 64);
    covered.push(("post", "/broadcasts"));

    let (s, _, body) = http(
        addr,
        post_json(
            "/meshara/queries",
            json!({"to": to, "method": "m", "body": "q"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["body"], "answer");
    covered.push(("post", "/queries"));

    let (s, _, body) = http(addr, proto_get("/meshara/peers")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(proto::PeerList::decode(body).unwrap().peers[0].node_id, to);
    covered.push(("get", "/peers"));

    let (s, _, body) = http(
        addr,
        Request::get("/meshara/status").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["node_id"], a.node_id().to_string());
    covered.push(("get", "/status"));

    let (s, ct, body) = http(
        addr,
        Request::get("/meshara/metrics")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // No Accept header: the classic text format, counters typed by their `_total` name.
    assert_eq!(ct, meshara_core::exposition::CLASSIC_CONTENT_TYPE);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("# TYPE meshara_messages_total counter"),
        "{text}"
    );
    let (s, ct, body) = http(
        addr,
        Request::get("/meshara/metrics")
            .header(header::ACCEPT, "application/openmetrics-text;version=1.0.0")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ct, meshara_core::exposition::OPENMETRICS_CONTENT_TYPE);
    assert!(String::from_utf8_lossy(&body).ends_with("# EOF\n"));
    covered.push(("get", "/metrics"));

    let (s, _, body) = http(
        addr,
        Request::get("/meshara/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        doc["paths"]["/messages"]["post"]["requestBody"]["content"]["application/x-protobuf"]
            .is_object()
    );
    covered.push(("get", "/openapi.json"));

    // Every rejection through the real server too, each with its JSON body.
    for (req, status, code) in bad_requests(&a, &b) {
        let uri = req.uri().clone();
        let (got, ct, body) = http(addr, req).await;
        assert_eq!(got, status, "{uri}: {body:?}");
        assert_eq!(ct, "application/json", "{uri}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], code, "{uri}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty(), "{uri}: {v}");
    }

    // SSE and WebSocket run through a real server in sse_and_websocket_deliver_events_in_order.
    covered.push(("get", "/events"));
    covered.push(("get", "/events/ws"));
    covered.sort();
    let mut all = meshara_axum::ROUTES.to_vec();
    all.sort();
    assert_eq!(covered, all);
    server.abort();
    a.stop().await;
    b.stop().await;
}
