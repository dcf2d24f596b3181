//! An axum app served to Meshara peers: caller identity, allow-list, streaming bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::BodyExt;
use meshara_axum::{AllowListLayer, MesharaClient, VerifiedPeer};
use meshara_core::{Identity, Node, NodeBuilder};

async fn node() -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

const BIG: usize = 50 << 20;

async fn whoami(VerifiedPeer(peer): VerifiedPeer) -> String {
    peer.to_string()
}

/// 50 MiB produced chunk by chunk as the client reads: never held whole in memory.
async fn big() -> Body {
    let chunks =
        futures_util::stream::iter((0..BIG / (64 << 10)).map(|i| {
            Ok::<_, std::convert::Infallible>(Bytes::from(vec![(i % 251) as u8; 64 << 10]))
        }));
    Body::from_stream(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_served_over_meshara() {
    let server = node().await;
    let friend = node().await;
    let stranger = node().await;
    for n in [&friend, &stranger] {
        n.connect(&server.quic_addr().unwrap()).await.unwrap();
    }
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/big", get(big))
        .layer(AllowListLayer::new([friend.node_id()]));
    tokio::spawn(meshara_axum::serve(server.clone(), app));

    let client = MesharaClient::new(friend.clone());
    let res = client
        .request(
            server.node_id(),
            Request::get("/whoami").body(Body::empty()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, friend.node_id().to_string().as_bytes());

    // 50 MiB streamed: read frame by frame, checking every byte, never collected.
    let res = client
        .request(
            server.node_id(),
            Request::get("/big").body(Body::empty()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            for (i, b) in data.iter().enumerate() {
                assert_eq!(*b, (((total + i) / (64 << 10)) % 251) as u8);
            }
            total += data.len();
        }
    }
    assert_eq!(total, BIG);

    // Not on the allow-list: 403 with a reason.
    let res = MesharaClient::new(stranger.clone())
        .request(
            server.node_id(),
            Request::get("/whoami").body(Body::empty()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "not_allowed");

    // VerifiedPeer rejects requests that did not come over Meshara.
    let plain = Router::new().route("/whoami", get(whoami));
    let res =
        tower::ServiceExt::oneshot(plain, Request::get("/whoami").body(Body::empty()).unwrap())
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    for n in [server, friend, stranger] {
        n.stop().await;
    }
}

/// Any tower service can be served, not just a `Router`; request bodies stream to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_tower_service_with_a_streamed_request_body() {
    const UPLOAD: usize = 20 << 20;
    let server = node().await;
    let client = node().await;
    client.connect(&server.quic_addr().unwrap()).await.unwrap();
    // A bare service_fn: counts the request body frame by frame and answers who sent it.
    let service = tower::service_fn(|req: axum::extract::Request| async move {
        let peer = req.extensions().get::<VerifiedPeer>().map(|p| p.0);
        let mut body = req.into_body();
        let (mut total, mut frames) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                total += data.len();
                frames += 1;
            }
        }
        let peer = peer.map_or_else(|| "nobody".to_owned(), |p| p.to_string());
        Ok::<_, axum::Error>(axum::http::Response::new(Body::from(format!(
            "{peer} {total} {frames}"
        ))))
    });
    tokio::spawn(meshara_axum::serve(server.clone(), service));
    let chunks = futures_util::stream::iter(
        (0..UPLOAD / (256 << 10))
            .map(|_| Ok::<_, std::convert::Infallible>(Bytes::from(vec![7u8; 256 << 10]))),
    );
    let res = MesharaClient::new(client.clone())
        .request(
            server.node_id(),
            Request::post("/upload")
                .body(Body::from_stream(chunks))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts[0], client.node_id().to_string());
    assert_eq!(parts[1], UPLOAD.to_string());
    // Arrived in many pieces, as it was sent: the body was streamed, not delivered whole.
    assert!(parts[2].parse::<usize>().unwrap() > 1, "{text}");
    client.stop().await;
    server.stop().await;
}

/// `serve` listens from the moment it is called: a request that reaches the node before the
/// serving future first runs waits for it instead of being turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_serving_future_not_yet_polled() {
    let server = node().await;
    let client = node().await;
    client.connect(&server.quic_addr().unwrap()).await.unwrap();
    let app = Router::new().route("/whoami", get(whoami));
    let serving = meshara_axum::serve(server.clone(), app);

    let caller = MesharaClient::new(client.clone());
    let to = server.node_id();
    let request = tokio::spawn(async move {
        caller
            .request(to, Request::get("/whoami").body(Body::empty()).unwrap())
            .await
    });
    // Let the request's stream reach the server while nothing serves it yet.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!request.is_finished());
    tokio::spawn(serving);

    let res = request.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, client.node_id().to_string().as_bytes());
    client.stop().await;
    server.stop().await;
}
