//! Who may call `routes()`: attacks a browser can make on an app that mounts them on
//! localhost (cross-site WebSocket hijacking, cross-site SSE, DNS rebinding), unauthenticated
//! and wrongly authenticated callers — each refused through a real server with a real node,
//! while honest clients are served.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::FromRef;
use axum::http::{HeaderMap, Request, StatusCode, header};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use meshara_axum::{Access, sign_request};
use meshara_core::{Identity, Node, NodeBuilder};
use serde_json::Value;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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

const TOKEN: &str = "access-test-token-5d41402abc4b2a76b9719d911017c592";

/// Serves `routes(access)` under `/meshara` on 127.0.0.1:0.
async fn serve(node: &Node, access: Access) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .nest("/meshara", meshara_axum::routes(access))
        .with_state(AppState { node: node.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// A GET with exactly these headers (`Host` defaults to the server's address), over a fresh
/// connection. For `/events` only the head is read.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    req.headers_mut()
        .insert(header::HOST, addr.to_string().parse().unwrap());
    for (name, value) in headers {
        req.headers_mut().insert(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let streaming = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let body = if streaming {
        Value::Null
    } else {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Opens a WebSocket to `/meshara/events/ws` with these extra headers; the refusal's status
/// and body on failure.
async fn websocket(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (StatusCode, Value),
> {
    let mut req = format!("ws://{addr}/meshara/events/ws")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((res.status(), body))
        }
        Err(e) => panic!("websocket: {e}"),
    }
}

/// Waits for the next `message` event on a WebSocket and returns its content.
async fn next_message(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tungstenite::Message::Text(text) = msg {
            let json: Value = serde_json::from_str(&text).unwrap();
            if json["kind"] == "message" {
                return json["data"]["content"].as_str().unwrap().to_owned();
            }
        }
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A web page on another site opens a WebSocket to the app on localhost (browsers send its
/// `Origin` and no credentials the page does not have). Refused, token or not; the app's own
/// page, an allowed origin and a non-browser client with the token get the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_websocket_hijacking_is_refused() {
    let a = node().await;
    let b = node().await;
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    let access = Access::bearer(TOKEN).allow_origin("https://notes.example");
    let (addr, server) = serve(&a, access).await;
    let auth = bearer();

    // The hostile page: its origin, no token.
    let (status, body) = websocket(addr, &[("origin", "https://evil.example")])
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "forbidden_origin");
    // Even a page that somehow holds the token is not another origin's to use.
    let (status, body) = websocket(
        addr,
        &[("origin", "http://evil.example"), ("authorization", &auth)],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "forbidden_origin");
    // Sandboxed pages and file:// send `Origin: null`.
    let (status, _) = websocket(addr, &[("origin", "null"), ("authorization", &auth)])
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Same origin but no token (e.g. another app on the same port's origin): 401.
    let same_origin = format!("http://{addr}");
    let (status, body) = websocket(addr, &[("origin", &same_origin)])
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = websocket(
        addr,
        &[("authorization", "Bearer not-the-token-at-all-123456")],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Honest clients: the app's page (same origin), an allowed origin, and a program.
    let mut honest = vec![
        websocket(addr, &[("origin", &same_origin), ("authorization", &auth)])
            .await
            .unwrap(),
        websocket(
            addr,
            &[
                ("origin", "https://notes.example"),
                ("authorization", &auth),
            ],
        )
        .await
        .unwrap(),
        websocket(addr, &[("authorization", &auth)]).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.send_private(a.node_id(), "text/plain", "for honest eyes")
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    for ws in &mut honest {
        assert_eq!(next_message(ws).await, "for honest eyes");
    }
    server.abort();
    a.stop().await;
    b.stop().await;
}

/// DNS rebinding: the attacker's domain now resolves to 127.0.0.1, so its page is
/// "same-origin" with the API — but the `Host` it sends is its own name. Refused on every
/// route, including the event streams; loopback names and IP literals are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_is_refused_by_host() {
    let a = node().await;
    let (addr, server) = serve(&a, Access::bearer(TOKEN).allow_host("notes.example")).await;
    let auth = bearer();
    let port = addr.port();
    let evil_host = format!("rebind.evil.example:{port}");
    let evil_origin = format!("http://rebind.evil.example:{port}");
    for path in ["/meshara/events", "/meshara/status", "/meshara/peers"] {
        let res = get(
            addr,
            path,
            &[
                ("host", &evil_host),
                ("origin", &evil_origin),
                ("authorization", &auth),
            ],
        )
        .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}: {}", res.body);
        assert_eq!(res.body["error"], "forbidden_host", "{path}");
        // Without Origin too (a rebinding page's same-origin GET may omit it).
        let res = get(
            addr,
            path,
            &[("host", &evil_host), ("authorization", &auth)],
        )
        .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, body) = websocket(
        addr,
        &[
            ("host", &evil_host),
            ("origin", &evil_origin),
            ("authorization", &auth),
        ],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden_host");

    // Honest hosts: the IP literal, localhost, and the configured name.
    let localhost = format!("localhost:{port}");
    let configured = format!("notes.example:{port}");
    for host in [addr.to_string(), localhost, configured] {
        let res = get(
            addr,
            "/meshara/events",
            &[("host", &host), ("authorization", &auth)],
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{host}: {}", res.body);
        let res = get(
            addr,
            "/meshara/status",
            &[("host", &host), ("authorization", &auth)],
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{host}");
        assert_eq!(res.body["node_id"], a.node_id().to_string());
    }
    server.abort();
    a.stop().await;
}

/// Server-Sent Events from another site (`EventSource` sends `Origin` cross-site) and
/// requests without or with a wrong token: refused with their reasons; the honest client
/// reads the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_needs_the_token_and_the_origin() {
    let a = node().await;
    let (addr, server) = serve(&a, Access::bearer(TOKEN)).await;
    let auth = bearer();
    let res = get(
        addr,
        "/meshara/events",
        &[("origin", "https://evil.example"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.body["error"], "forbidden_origin");
    let res = get(addr, "/meshara/events", &[]).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.body["error"], "unauthorized");
    assert_eq!(res.headers[header::WWW_AUTHENTICATE], "Bearer");
    let res = get(
        addr,
        "/meshara/events",
        &[("authorization", "Bearer access-test-token-wrong")],
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.body["message"].as_str().unwrap().contains("not valid"));
    let res = get(addr, "/meshara/events", &[("authorization", &auth)]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        res.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    server.abort();
    a.stop().await;
}

/// `Access::peers`: only listed Meshara identities, proven by an RFC 9421 signature over
/// plain HTTP. Unsigned, forged and unlisted callers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_access_needs_a_listed_signed_identity() {
    let a = node().await;
    let operator = Identity::generate();
    let (addr, server) = serve(&a, Access::peers([operator.node_id()])).await;

    let signed = |id: &Identity, path: &str| {
        let mut req = Request::get(format!("http://{addr}{path}"))
            .body(Body::empty())
            .unwrap();
        sign_request(id, &mut req, b"").unwrap();
        req.headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect::<Vec<_>>()
    };
    async fn send(addr: SocketAddr, path: &str, headers: Vec<(String, String)>) -> Answer {
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        get(addr, path, &refs).await
    }

    let res = get(addr, "/meshara/status", &[]).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.body["error"], "missing_signature");
    let stranger = Identity::generate();
    let res = send(
        addr,
        "/meshara/status",
        signed(&stranger, "/meshara/status"),
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.body);
    assert_eq!(res.body["error"], "not_allowed");
    // A stranger's signature relabelled with the operator's keyid does not verify.
    let forged: Vec<(String, String)> = signed(&stranger, "/meshara/status")
        .into_iter()
        .map(|(k, v)| {
            let v = v.replace(
                &stranger.node_id().to_string(),
                &operator.node_id().to_string(),
            );
            (k, v)
        })
        .collect();
    let res = send(addr, "/meshara/status", forged).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.body["error"], "invalid_signature");
    // The operator, and the replay of its request refused.
    let honest = signed(&operator, "/meshara/status");
    let res = send(addr, "/meshara/status", honest.clone()).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["node_id"], a.node_id().to_string());
    let res = send(addr, "/meshara/status", honest).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.body["error"], "replayed_signature");
    server.abort();
    a.stop().await;
}

/// `Access::open_i_understand_the_risk` drops authentication only: hostile origins and hosts
/// are still refused. `Access::custom` runs the app's check. Every answer, refusals included,
/// carries `nosniff` and `no-referrer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_custom_access_keep_the_browser_defences() {
    let a = node().await;
    let (addr, server) = serve(&a, Access::open_i_understand_the_risk()).await;
    let res = get(addr, "/meshara/status", &[]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(res.headers[header::REFERRER_POLICY], "no-referrer");
    let res = get(
        addr,
        "/meshara/status",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let res = get(addr, "/meshara/status", &[("host", "evil.example")]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let (status, _) = websocket(addr, &[("origin", "https://evil.example")])
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.abort();

    let custom = Access::custom(|parts| {
        parts
            .headers
            .get(header::COOKIE)
            .is_some_and(|c| c.as_bytes() == b"session=valid")
    });
    let (addr, server) = serve(&a, custom).await;
    let res = get(addr, "/meshara/status", &[("cookie", "session=stolen")]).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.body["error"], "unauthorized");
    // A cross-site page riding the user's cookie is refused by its Origin.
    let res = get(
        addr,
        "/meshara/status",
        &[
            ("cookie", "session=valid"),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = get(addr, "/meshara/status", &[("cookie", "session=valid")]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    server.abort();
    a.stop().await;
}

/// An app's HTML page behind `security_headers` gets a CSP that stops injected markup from
/// rebasing URLs or posting forms elsewhere, and leaks no referrer; a page's own CSP is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_pages_get_csp_and_no_referrer() {
    let app: Router = Router::new()
        .route(
            "/",
            axum::routing::get(|| async { axum::response::Html("<p>notes</p>") }),
        )
        .route(
            "/own",
            axum::routing::get(|| async {
                (
                    [(header::CONTENT_SECURITY_POLICY, "default-src 'none'")],
                    axum::response::Html("<p>own</p>"),
                )
            }),
        )
        .layer(axum::middleware::from_fn(meshara_axum::security_headers));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(meshara_axum::serve_tcp(
        listener,
        app,
        meshara_axum::ServeOptions::default(),
    ));
    let res = get(addr, "/", &[]).await;
    assert_eq!(res.status, StatusCode::OK);
    let csp = res.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    for directive in [
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(res.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(res.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let res = get(addr, "/own", &[]).await;
    assert_eq!(
        res.headers[header::CONTENT_SECURITY_POLICY],
        "default-src 'none'"
    );
    assert_eq!(res.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    server.abort();
}
