//! Hostile nodes with valid identities, reached by the crawl, written against the transport
//! directly: one answers every FindNode with 20 freshly invented (validly signed) nodes, one
//! with forged records (broken signatures, honest records with our address), one with
//! unsolicited answers and then an oversized frame, one never answers at all. The crawl ends
//! within its bounds, lists nothing they invented or forged, and every honest node is listed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use common::{Backend, Network, explorer, get};
use meshara_core::net::TransportKind;
use meshara_core::net::transport::{Connection, StreamConnection, stream_server_config};
use meshara_core::proto::{self, envelope::Body, routing_message::Body as R};
use meshara_core::{Identity, NodeRecord, NodeRecordBuilder, Transport, wire};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Every answer: 20 new identities at dead loopback addresses.
    Sybil,
    /// Records with broken signatures, and honest records altered under their old signature.
    Forged(usize),
    /// Answers to requests never made, then a 64 MiB frame header.
    Garbage,
    /// Completes the handshake and sends its record, then nothing.
    Silent,
}

struct Hostile {
    identity: Arc<Identity>,
    addr: SocketAddr,
    finds: Arc<AtomicUsize>,
    invented: Arc<std::sync::Mutex<HashSet<String>>>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn frame(body: Body) -> BytesMut {
    let mut out = BytesMut::new();
    wire::encode_envelope_frame(
        &proto::Envelope {
            version: wire::PROTOCOL_VERSION,
            body: Some(body),
        },
        wire::MAX_FRAME_LEN_LIMIT,
        &mut out,
    )
    .unwrap();
    out
}

async fn hostile(mode: Mode, host: &str, honest: Vec<NodeRecord>) -> Hostile {
    let identity = Arc::new(Identity::generate());
    let listener = tokio::net::TcpListener::bind(format!("{host}:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let record = NodeRecordBuilder::new(&identity, 1)
        .address(Transport::Tcp, host, addr.port())
        .sign(now())
        .unwrap();
    let finds = Arc::new(AtomicUsize::new(0));
    let invented = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let h = Hostile {
        identity: identity.clone(),
        addr,
        finds: finds.clone(),
        invented: invented.clone(),
    };
    let config = stream_server_config(&identity).unwrap();
    tokio::spawn(async move {
        let mut counter = 0u32;
        loop {
            let Ok((io, remote)) = listener.accept().await else {
                return;
            };
            let Ok(conn) =
                StreamConnection::accept(io, config.clone(), TransportKind::Tcp, Some(remote))
                    .await
            else {
                continue;
            };
            let conn = Arc::new(conn);
            let record = record.clone();
            let finds = finds.clone();
            let invented = invented.clone();
            let honest = honest.clone();
            counter += 1;
            let base = counter * 1000;
            tokio::spawn(async move {
                let Ok((mut send, _)) = conn.open_bi().await else {
                    return;
                };
                let mut hello = BytesMut::from(&[1u8][..]);
                hello.extend_from_slice(&frame(Body::NodeRecord(record.signed().clone())));
                if send.write_all(&hello).await.is_err() {
                    return;
                }
                let Ok((_, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                let mut kind = [0u8; 1];
                if recv.read_exact(&mut kind).await.is_err() {
                    return;
                }
                let mut n = 0u32;
                loop {
                    let mut len = [0u8; 4];
                    if recv.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes(len) as usize;
                    if len > wire::DEFAULT_MAX_FRAME_LEN {
                        return;
                    }
                    let mut body = vec![0u8; len];
                    if recv.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let Ok(env) =
                        wire::decode_envelope(Bytes::from(body), wire::DEFAULT_MAX_FRAME_LEN)
                    else {
                        continue;
                    };
                    let Some(Body::Routing(proto::RoutingMessage {
                        body: Some(R::FindNode(find)),
                    })) = env.body
                    else {
                        continue;
                    };
                    // The crawler's requests; a node looking itself up (DHT maintenance, the
                    // explorer's own node included) is not crawling.
                    if find.target.as_ref() != conn.peer().as_bytes() {
                        finds.fetch_add(1, Ordering::Relaxed);
                    }
                    let records: Vec<proto::SignedNodeRecord> = match mode {
                        Mode::Silent => continue,
                        Mode::Sybil => (0..20)
                            .map(|_| {
                                n += 1;
                                let k = base + n;
                                let fake = Identity::generate();
                                invented.lock().unwrap().insert(fake.node_id().to_string());
                                // Port 9 on a loopback address nobody listens on: refused.
                                let host =
                                    format!("127.0.{}.{}", 30 + (k / 250) % 200, 1 + k % 250);
                                NodeRecordBuilder::new(&fake, 1)
                                    .address(Transport::Tcp, host, 9)
                                    .sign(now())
                                    .unwrap()
                                    .signed()
                                    .clone()
                            })
                            .collect(),
                        Mode::Forged(_) => {
                            let mut out = Vec::new();
                            for r in honest.iter().take(10) {
                                // An honest record with one signature bit flipped.
                                let mut s = r.signed().clone();
                                let mut sig = s.signature.to_vec();
                                sig[7] ^= 0x40;
                                s.signature = sig.into();
                                out.push(s);
                                // The honest id with an address of ours and a higher
                                // sequence, under the honest node's old signature.
                                let mut raw =
                                    proto::NodeRecord::decode(r.signed().record.clone()).unwrap();
                                raw.sequence += 1_000_000;
                                raw.addresses = vec![proto::Address {
                                    transport: proto::Transport::Tcp as i32,
                                    host: "127.0.29.1".into(),
                                    port: 9,
                                }];
                                out.push(proto::SignedNodeRecord {
                                    record: Bytes::from(raw.encode_to_vec()),
                                    signature: r.signed().signature.clone(),
                                });
                            }
                            out
                        }
                        Mode::Garbage => Vec::new(),
                    };
                    let answer = if mode == Mode::Garbage {
                        let mut out = frame(Body::Routing(proto::RoutingMessage {
                            body: Some(R::FoundNodes(proto::FoundNodes {
                                request_id: find.request_id ^ 0xdead_beef,
                                records: vec![record.signed().clone()],
                            })),
                        }));
                        // Then a frame header announcing 64 MiB.
                        out.extend_from_slice(&(64u32 << 20).to_be_bytes());
                        out.extend_from_slice(&[0xAB; 1024]);
                        out
                    } else {
                        frame(Body::Routing(proto::RoutingMessage {
                            body: Some(R::FoundNodes(proto::FoundNodes {
                                request_id: find.request_id,
                                records,
                            })),
                        }))
                    };
                    if send.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_nodes_cost_a_bounded_amount_and_list_nothing_they_invent() {
    const HONEST: usize = 12;
    const MAX_NEW: usize = 30;
    const MAX_REQUESTS: usize = 8;
    let net = Network::start(HONEST, &[]).await;
    let honest_records: Vec<NodeRecord> = net.live().map(|n| n.record()).collect();
    let sybil = hostile(Mode::Sybil, "127.0.20.1", Vec::new()).await;
    let forged = hostile(Mode::Forged(0), "127.0.20.2", honest_records.clone()).await;
    let garbage = hostile(Mode::Garbage, "127.0.20.3", Vec::new()).await;
    let silent = hostile(Mode::Silent, "127.0.20.4", Vec::new()).await;
    let hostiles = [&sybil, &forged, &garbage, &silent];
    let mut seeds: Vec<String> = hostiles
        .iter()
        .map(|h| format!("{}@tcp://{}", h.identity.node_id(), h.addr))
        .collect();
    seeds.push(net.bootstrap().to_string());
    let Some(h) = explorer(Backend::Sqlite, &seeds, |c| {
        c.crawl.max_new_per_source = MAX_NEW;
        c.crawl.max_requests_per_node = MAX_REQUESTS;
        c.crawl.visit_timeout_secs = 20;
    })
    .await
    else {
        return;
    };
    let crawl = h.explorer.crawl_now().await.unwrap();

    let listed: HashSet<String> = h
        .explorer
        .db()
        .all_nodes()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.up)
        .map(|r| r.id)
        .collect();
    // Every honest node, found through the honest bootstrap.
    for n in net.live() {
        assert!(
            listed.contains(&n.node_id().to_string()),
            "honest node missing: {crawl:?}"
        );
    }
    // Nothing invented or forged.
    let invented = sybil.invented.lock().unwrap().clone();
    assert!(invented.len() >= 20, "the Sybil node was asked");
    assert!(listed.is_disjoint(&invented), "an invented node was listed");
    let allowed: HashSet<String> = net
        .live()
        .map(|n| n.node_id().to_string())
        .chain(hostiles.iter().map(|h| h.identity.node_id().to_string()))
        .collect();
    assert!(listed.is_subset(&allowed), "{listed:?}");
    // Honest nodes keep their own addresses (the forged re-signed records were refused).
    for r in &honest_records {
        let row = h
            .explorer
            .db()
            .node(&r.node_id().to_string())
            .await
            .unwrap()
            .unwrap();
        assert!(!row.addresses.contains("127.0.29.1"), "{}", row.addresses);
        assert_eq!(row.sequence as u64, r.sequence());
    }
    // Bounded: requests per node, ids per source.
    assert!(
        sybil.finds.load(Ordering::Relaxed) <= MAX_REQUESTS * 2,
        "two crawls at most"
    );
    assert!(
        crawl.discovered as usize <= HONEST + hostiles.len() + MAX_NEW,
        "{crawl:?}"
    );
    let metrics = get(h.addr, "/metrics").await;
    let text = metrics.as_str().unwrap();
    let refused = text
        .lines()
        .find(|l| l.starts_with("meshara_explorer_ids_refused_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(refused > 0.0, "{text}");
    // Forged records were dropped by signature checks in the node.
    assert!(
        text.contains("meshara_drops_total{reason=\"crypto\"}"),
        "{text}"
    );
    // And the explorer keeps serving.
    let overview = get(h.addr, "/api/v1/overview").await;
    assert!(overview["network"]["up"].as_u64().unwrap() >= HONEST as u64);
    h.explorer.stop().await;
}

/// Slowloris against the explorer's web server: one address opens far more connections than
/// it may and sends half a request head on each. The connections beyond the per-address cap
/// are closed at once, the rest when the header timeout runs out, and a browser elsewhere is
/// served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_heads_do_not_starve_the_web_server() {
    let Some(h) = explorer(Backend::Sqlite, &[], |_| {}).await else {
        return;
    };
    let per_caller = meshara_axum::ServeOptions::default().max_connections_per_caller;
    let mut held = Vec::new();
    for _ in 0..per_caller + 16 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(h.addr).await.unwrap();
        s.write_all(b"GET /api/v1/overview HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        held.push(s);
    }
    // The honest client, from another address, during the attack.
    assert_eq!(get(h.addr, "/healthz").await, "ok");
    // The connections over the cap were closed without an answer.
    let mut closed = 0;
    for s in &mut held {
        let mut buf = [0u8; 64];
        // Closed: end of stream, or a reset.
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 16,
        "only {closed} connections over the cap were closed"
    );
    h.explorer.stop().await;
}

/// A node advertises, in its signed record, the address of a host on the operator's internal
/// network (here a canary UDP socket on loopback). An explorer told not to probe non-public
/// addresses (`[node] dial_private = false`) sends it nothing; one on a loopback network
/// (its default, `dial_private` unset) does, which is what a devnet needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_naming_internal_hosts_are_not_probed_unless_allowed() {
    use meshara_core::{Address, Node, NodeConfig};

    let canary = std::net::UdpSocket::bind("127.0.0.24:0").unwrap();
    canary
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let internal = canary.local_addr().unwrap();
    let hostile = Node::builder()
        .identity(Identity::generate())
        .config(NodeConfig {
            listen_quic: Some("127.0.10.250:0".parse().unwrap()),
            mdns: false,
            advertise: vec![Address {
                transport: Transport::Quic,
                host: internal.ip().to_string(),
                port: internal.port(),
            }],
            ..NodeConfig::default()
        })
        .start()
        .await
        .unwrap();
    let seed = format!(
        "{}@quic://127.0.10.250:{}",
        hostile.node_id(),
        hostile.quic_addr().unwrap().address.port
    );
    let canary_heard = |canary: &std::net::UdpSocket| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            if canary.recv_from(&mut buf).is_ok() {
                return true;
            }
        }
        false
    };

    for (dial_private, expect_probe) in [(Some(false), false), (None, true)] {
        let Some(h) = explorer(Backend::Sqlite, std::slice::from_ref(&seed), |c| {
            c.node.dial_private = dial_private;
        })
        .await
        else {
            return;
        };
        h.explorer.crawl_now().await.unwrap();
        let canary = canary.try_clone().unwrap();
        let heard = tokio::task::spawn_blocking(move || canary_heard(&canary))
            .await
            .unwrap();
        assert_eq!(
            heard, expect_probe,
            "dial_private = {dial_private:?}: canary heard = {heard}"
        );
        h.explorer.stop().await;
    }
    hostile.stop().await;
}
