//! Round trip and goodput over each path a message can take, in one run:
//!
//! - direct QUIC between two nodes (the baseline every other row is compared with);
//! - a bridge circuit over QUIC (initiator → bridge → target, TLS end to end through the
//!   splice);
//! - I2P between two nodes on one real i2pd router (zero-hop tunnels: this measures SAM, the
//!   router's streaming library and Meshara over it, not the I2P network's latency);
//! - the raw primitive under it: a bare SAM stream between the same two sessions, echoing;
//! - Tor between two arti-hosted onion services on a private Tor network on loopback (C tor
//!   relays; each onion connection is a rendezvous circuit of six hops on loopback);
//! - the raw primitive under it: a bare arti onion stream between two of the same clients.
//!
//! `cargo bench -p meshara-bridge --bench paths` (needs i2pd and tor; `PATHS_BENCH_QUICK=1` for
//! a short run). Prints markdown; docs/benchmarks.md records the results.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

use meshara_core::net::{Bridge, PeerAddr, Timeouts};
use meshara_core::{Capability, Identity, Node, NodeBuilder, NodeConfig, Transport};
use meshara_i2p::I2pTransport;
use meshara_i2p::testing::I2pd;
use meshara_tor::TorTransport;
use meshara_tor::testing::TorNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn quick() -> bool {
    std::env::var_os("PATHS_BENCH_QUICK").is_some()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(60),
        ..Timeouts::default()
    }
}

fn quic_builder() -> NodeBuilder {
    NodeBuilder::new()
        .config(NodeConfig {
            target_peers: 0,
            timeouts: timeouts(),
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
}

/// Answers every query with its body, on `node`, until the node stops.
fn echo(node: &Node) {
    let mut events = node.events();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(e) = events.next().await {
            if let meshara_core::Event::Query(q) = e {
                let body = q.body.clone();
                let _ = q.respond(body);
            }
        }
    });
}

/// Sinks every stream opened for "bench" on `node`, answering with one byte at the end.
fn sink(node: &Node) {
    let mut listener = node.listen_streams("bench");
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            tokio::spawn(async move {
                let (mut send, mut recv) = stream.into_split();
                let mut buf = vec![0u8; 64 * 1024];
                while recv.read(&mut buf).await.unwrap_or(0) > 0 {}
                let _ = send.write_all(&[1]).await;
                let _ = send.shutdown().await;
            });
        }
    });
}

/// Query round trips (64-byte body) and one-way stream goodput from `a` to `b`.
async fn measure(a: &Node, b: &Node, rounds: usize, bytes: usize) -> (Duration, Duration, f64) {
    let peer = b.node_id();
    // Warm up: connection, session, first stream.
    for _ in 0..5 {
        a.query(peer, "echo", vec![7u8; 64], Duration::from_secs(60))
            .await
            .unwrap();
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        a.query(peer, "echo", vec![7u8; 64], Duration::from_secs(60))
            .await
            .unwrap();
        samples.push(t.elapsed());
    }
    let p50 = percentile(&mut samples, 0.5);
    let p99 = percentile(&mut samples, 0.99);
    let stream = a.open_stream(peer, "bench").await.unwrap();
    let (mut send, mut recv) = stream.into_split();
    let chunk = vec![0x5au8; 64 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        send.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    send.shutdown().await.unwrap();
    let mut done = [0u8; 1];
    recv.read_exact(&mut done).await.unwrap();
    let mib_s = bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    (p50, p99, mib_s)
}

/// The raw primitive under an overlay path: a bare stream from `connect` to the stream
/// `accept` yields, 64-byte echo round trips and a one-way transfer acknowledged by one byte.
async fn raw_echo<S, C>(
    accept: impl Future<Output = S> + Send + 'static,
    connect: impl Future<Output = C>,
    rounds: usize,
    bytes: usize,
) -> (Duration, Duration, f64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let echo = tokio::spawn(async move {
        let mut s = accept.await;
        let mut buf = [0u8; 64];
        for _ in 0..rounds + 5 {
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            // arti buffers a stream's writes until a cell is full or the stream is flushed.
            s.flush().await.unwrap();
        }
        let mut left = bytes;
        let mut big = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = s.read(&mut big).await.unwrap();
            assert!(n > 0);
            left -= n;
        }
        s.write_all(&[1]).await.unwrap();
        s.flush().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut s = connect.await;
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        s.write_all(&msg).await.unwrap();
        s.flush().await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.flush().await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        samples.push(t.elapsed());
    }
    let chunk = vec![0x5au8; 64 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        s.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    s.flush().await.unwrap();
    let mut done = [0u8; 1];
    s.read_exact(&mut done).await.unwrap();
    let mib_s = bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    echo.await.unwrap();
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
        mib_s,
    )
}

fn row(path: &str, (p50, p99, mib_s): (Duration, Duration, f64)) {
    println!("| {path} | {} | {} | {mib_s:.1} MiB/s |", ms(p50), ms(p99));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (rounds, bytes) = if quick() {
        (50, 4 << 20)
    } else {
        (500, 32 << 20)
    };
    let router = I2pd::start().await.expect("the benchmark needs i2pd");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ta, tb) = tokio::join!(
        I2pTransport::start(router.config(da.path())),
        I2pTransport::start(router.config(db.path())),
    );
    let (ta, tb) = (ta.unwrap(), tb.unwrap());

    println!("| path | query RTT p50 | p99 | stream goodput (one way) |");
    println!("|---|---|---|---|");
    // Direct QUIC.
    let a = quic_builder().start().await.unwrap();
    let b = quic_builder().start().await.unwrap();
    echo(&b);
    sink(&b);
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    row(
        "direct QUIC (baseline)",
        measure(&a, &b, rounds, bytes).await,
    );

    // A bridge circuit over QUIC.
    let bridge = NodeBuilder::new()
        .config(NodeConfig {
            target_peers: 0,
            timeouts: timeouts(),
            bridge: Bridge {
                enabled: true,
                bytes_per_sec: 1 << 40,
                ..Bridge::default()
            },
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .capability(Capability::BridgeI2p)
        .start()
        .await
        .unwrap();
    let c = quic_builder().start().await.unwrap();
    echo(&c);
    sink(&c);
    c.connect(&bridge.quic_addr().unwrap()).await.unwrap();
    let d = quic_builder().start().await.unwrap();
    d.connect(&bridge.quic_addr().unwrap()).await.unwrap();
    d.connect_via(bridge.node_id(), c.node_id()).await.unwrap();
    row(
        "bridge circuit over QUIC",
        measure(&d, &c, rounds, bytes).await,
    );

    // Meshara over I2P.
    let i2p_node = |t: &I2pTransport, boot: Option<PeerAddr>| {
        NodeBuilder::new()
            .config(NodeConfig {
                listen_quic: None,
                advertise: vec![t.address()],
                bootstrap: boot.into_iter().collect(),
                target_peers: 0,
                timeouts: timeouts(),
                ..NodeConfig::default()
            })
            .identity(Identity::generate())
            .dialer(Transport::I2p, t.dialer())
            .start()
    };
    let nb = i2p_node(&tb, None).await.unwrap();
    echo(&nb);
    sink(&nb);
    let _serving = tb.serve(nb.clone());
    let na = i2p_node(&ta, None).await.unwrap();
    na.connect(&PeerAddr {
        node: Some(nb.node_id()),
        address: tb.address(),
    })
    .await
    .unwrap();
    row(
        "Meshara over I2P (one i2pd, 0-hop tunnels)",
        measure(&na, &nb, rounds, bytes).await,
    );
    drop(_serving);
    let server = tb.clone();
    let b32 = tb.b32().to_owned();
    row(
        "raw SAM stream, same sessions (primitive)",
        raw_echo(
            async move { server.accept().await.unwrap().1 },
            async { ta.connect(&b32).await.unwrap() },
            rounds,
            bytes,
        )
        .await,
    );
    for n in [na, nb] {
        n.stop().await;
    }
    router.stop().await;

    // Meshara over Tor: onion service to onion service on a private network.
    let net = TorNet::start().await.expect("the benchmark needs tor");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (t1, t2, t3, t4) = tokio::join!(
        TorTransport::start(net.config(dirs[0].path())),
        TorTransport::start(net.config(dirs[1].path())),
        TorTransport::start(net.config(dirs[2].path())),
        TorTransport::start(net.config(dirs[3].path())),
    );
    let (t1, t2, t3, t4) = (t1.unwrap(), t2.unwrap(), t3.unwrap(), t4.unwrap());
    let onion_node = |t: &TorTransport| {
        NodeBuilder::new()
            .config(NodeConfig {
                listen_quic: None,
                advertise: vec![t.address().unwrap()],
                route_all_via: Some(Transport::Tor),
                target_peers: 0,
                timeouts: timeouts(),
                ..NodeConfig::default()
            })
            .identity(Identity::generate())
            .dialer(Transport::Tor, t.dialer())
            .start()
    };
    let o2 = onion_node(&t2).await.unwrap();
    echo(&o2);
    sink(&o2);
    let _serving = t2.serve(o2.clone()).unwrap();
    let o1 = onion_node(&t1).await.unwrap();
    // The first connect may race the descriptor's upload to the HSDirs: retry.
    let target = PeerAddr {
        node: Some(o2.node_id()),
        address: t2.address().unwrap(),
    };
    let mut connected = false;
    for _ in 0..10 {
        if o1.connect(&target).await.is_ok() {
            connected = true;
            break;
        }
    }
    assert!(connected, "no onion connection to the benchmark's target");
    row(
        "Meshara over Tor (onion to onion, private network on loopback)",
        measure(&o1, &o2, rounds, bytes).await,
    );
    let server = t4.clone();
    let onion = t4.onion().unwrap().to_owned();
    let port = t4.address().unwrap().port;
    row(
        "raw arti onion stream, same network (primitive)",
        raw_echo(
            async move { server.accept().await.unwrap() },
            async {
                let mut last = None;
                for _ in 0..10 {
                    match t3.connect(&onion, port).await {
                        Ok(s) => return s,
                        Err(e) => last = Some(e),
                    }
                }
                panic!("no raw onion stream: {last:?}")
            },
            rounds,
            bytes,
        )
        .await,
    );

    for n in [a, b, bridge, c, d, o1, o2] {
        n.stop().await;
    }
}
