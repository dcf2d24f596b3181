//! End-to-end node benchmarks beside raw quinn doing the same work, in one run.
//!
//! `cargo bench -p meshara-core --bench node` (`NODE_BENCH_QUICK=1` for a short run).
//! The raw baseline is quinn with the same TLS 1.3 raw-key handshake and plain length-prefixed
//! frames on a stream: no Meshara envelope, session encryption, acknowledgement or padding.
//! Prints markdown; docs/benchmarks.md records the results.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stdout
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshara_core::net::transport::{self, Connection};
use meshara_core::net::{Limits, Timeouts};
use meshara_core::{Identity, Node, NodeBuilder, Padding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn quick() -> bool {
    std::env::var_os("NODE_BENCH_QUICK").is_some()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn bench_limits() -> Limits {
    Limits {
        max_connections: 4096,
        max_connections_per_ip: 4096,
        max_pending_handshakes: 4096,
        max_outbox: 1 << 20,
        ..Limits::default()
    }
}

async fn node(padding: Padding) -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .limits(bench_limits())
        .timeouts(Timeouts {
            ack: Duration::from_secs(30),
            delivery: Duration::from_secs(600),
            max_attempts: 20,
            ..Timeouts::default()
        })
        .padding(padding)
        .start()
        .await
        .unwrap()
}

async fn node_pair(padding: Padding) -> (Node, Node) {
    let a = node(padding).await;
    let b = node(padding).await;
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    // Warm up: the session handshake happens on the first message.
    a.send_private(b.node_id(), "", "warm")
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    (a, b)
}

// ---------------------------------------------------------------------------------------------
// Raw quinn: same TLS configuration, no Meshara layer.

struct Raw {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    addr: SocketAddr,
    server_id: Arc<Identity>,
    transport: Arc<quinn::TransportConfig>,
}

fn raw() -> Raw {
    let server_id = Arc::new(Identity::generate());
    let transport = Arc::new(quinn::TransportConfig::default());
    let config = transport::quic_server_config(&server_id, transport.clone()).unwrap();
    let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    Raw {
        server,
        client,
        addr,
        server_id,
        transport,
    }
}

impl Raw {
    async fn connect(&self, identity: &Arc<Identity>) -> quinn::Connection {
        let conn = transport::connect_quic(
            &self.client,
            identity,
            self.addr,
            Some(self.server_id.node_id()),
            self.transport.clone(),
        )
        .await
        .unwrap();
        conn.quinn().clone()
    }

    /// Server side: accepts connections; on each bi stream reads `u32 len || body` frames and
    /// answers each with a 32-byte ack when `ack`, else just counts them.
    fn serve(&self, ack: bool) {
        let server = self.server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 1 << 20];
                            let mut count: u64 = 0;
                            loop {
                                let mut len = [0u8; 4];
                                if recv.read_exact(&mut len).await.is_err() {
                                    break;
                                }
                                let n = u32::from_be_bytes(len) as usize;
                                if n == u32::MAX as usize {
                                    // Bulk mode: drain to the end, then report the byte count.
                                    let mut total: u64 = 0;
                                    while let Ok(Some(k)) = recv.read(&mut buf).await {
                                        total += k as u64;
                                    }
                                    let _ = send.write_all(&total.to_be_bytes()).await;
                                    let _ = send.finish();
                                    return;
                                }
                                if recv.read_exact(&mut buf[..n]).await.is_err() {
                                    break;
                                }
                                count += 1;
                                if ack && send.write_all(&[0u8; 32]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = send.write_all(&count.to_be_bytes()).await;
                            let _ = send.finish();
                        });
                    }
                });
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------

async fn latency(size: usize, samples: usize) -> (Duration, Duration, Duration, Duration) {
    let (a, b) = node_pair(Padding::Buckets).await;
    let payload = vec![0x42u8; size];
    let mut mesh = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        a.send_private(b.node_id(), "", payload.clone())
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
        mesh.push(t.elapsed());
    }
    a.stop().await;
    b.stop().await;

    let r = raw();
    r.serve(true);
    let conn = r.connect(&Arc::new(Identity::generate())).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut frame = (size as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let mut ack = [0u8; 32];
    let mut raw_samples = Vec::with_capacity(samples);
    for i in 0..samples + 100 {
        let t = Instant::now();
        send.write_all(&frame).await.unwrap();
        recv.read_exact(&mut ack).await.unwrap();
        if i >= 100 {
            raw_samples.push(t.elapsed());
        }
    }
    (
        percentile(&mut mesh, 0.5),
        percentile(&mut mesh, 0.99),
        percentile(&mut raw_samples, 0.5),
        percentile(&mut raw_samples, 0.99),
    )
}

async fn throughput(count: usize, padding: Padding) -> f64 {
    let (a, b) = node_pair(padding).await;
    let payload = bytes::Bytes::from(vec![0x17u8; 1024]);
    let started = Instant::now();
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        pending.push(
            a.send_private(b.node_id(), "", payload.clone())
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.confirmed().await.unwrap();
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    a.stop().await;
    b.stop().await;
    rate
}

async fn raw_throughput(count: usize) -> f64 {
    let r = raw();
    r.serve(false);
    let conn = r.connect(&Arc::new(Identity::generate())).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut frame = 1024u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0x17u8; 1024]);
    let batch: Vec<u8> = frame.repeat(64);
    let started = Instant::now();
    for _ in 0..count / 64 {
        send.write_all(&batch).await.unwrap();
    }
    send.finish().unwrap();
    let mut n = [0u8; 8];
    recv.read_exact(&mut n).await.unwrap();
    assert_eq!(u64::from_be_bytes(n) as usize, count / 64 * 64);
    (count / 64 * 64) as f64 / started.elapsed().as_secs_f64()
}

async fn goodput(bytes: usize) -> (f64, f64) {
    let (a, b) = node_pair(Padding::Buckets).await;
    let mut listener = b.listen_streams("bulk");
    let sink = tokio::spawn(async move {
        let mut s = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        s.write_all(&(total as u64).to_be_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let chunk = vec![0x99u8; 1 << 20];
    let started = Instant::now();
    let mut s = a.open_stream(b.node_id(), "bulk").await.unwrap();
    for _ in 0..bytes >> 20 {
        s.write_all(&chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await.unwrap();
    let mesh = bytes as f64 / started.elapsed().as_secs_f64();
    sink.await.unwrap();
    a.stop().await;
    b.stop().await;

    let r = raw();
    r.serve(false);
    let conn = r.connect(&Arc::new(Identity::generate())).await;
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    for _ in 0..bytes >> 20 {
        send.write_all(&chunk).await.unwrap();
    }
    send.finish().unwrap();
    recv.read_exact(&mut n).await.unwrap();
    let raw = bytes as f64 / started.elapsed().as_secs_f64();
    (mesh, raw)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Starts `meshara run` (release build) and connects `conns` nodes to it.
async fn connections(conns: usize) -> (u64, u64, Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let keystore = dir.path().join("identity.key");
    let bin = env!("CARGO_BIN_EXE_meshara");
    let ok = Command::new(bin)
        .env("MESHARA_PASSPHRASE", "bench")
        .arg("--keystore")
        .arg(&keystore)
        .args([
            "keygen",
            "--kdf-memory-kib",
            "8192",
            "--kdf-iterations",
            "1",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[node]\nlisten_quic = \"127.0.0.1:0\"\nmdns = false\n\n[node.limits]\nmax_connections = 4096\nmax_connections_per_ip = 4096\nmax_pending_handshakes = 4096\n",
    )
    .unwrap();
    let mut child = Command::new(bin)
        .env("MESHARA_PASSPHRASE", "bench")
        .arg("--keystore")
        .arg(&keystore)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("quic") {
            break a.trim().parse::<meshara_core::PeerAddr>().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(child.id());

    // Clients: nodes in this process, dialing in waves.
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(
            NodeBuilder::new()
                .identity(Identity::generate())
                .no_quic_listener()
                .limits(bench_limits())
                .start()
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    for wave in clients.chunks(100) {
        let mut tasks = Vec::new();
        for c in wave {
            let c = c.clone();
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move { c.connect(&addr).await.unwrap() }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let mesh_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = rss_kib(child.id());
    for c in &clients {
        c.stop().await;
    }
    let _ = child.kill();
    let _ = child.wait();

    let r = raw();
    r.serve(false);
    let ids: Vec<Arc<Identity>> = (0..conns).map(|_| Arc::new(Identity::generate())).collect();
    let started = Instant::now();
    let mut held = Vec::new();
    for wave in ids.chunks(100) {
        let mut tasks = Vec::new();
        for id in wave {
            let id = id.clone();
            // One endpoint (UDP socket) per connection, as each Meshara client node has.
            let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = r.addr;
            let expected = r.server_id.node_id();
            let t = r.transport.clone();
            tasks.push(tokio::spawn(async move {
                transport::connect_quic(&client, &id, addr, Some(expected), t)
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            held.push(t.await.unwrap());
        }
    }
    let raw_time = started.elapsed();
    for c in &held {
        c.close(0, "done");
    }
    (idle, loaded, mesh_time, raw_time)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let samples = if quick() { 300 } else { 3000 };
    let count = if quick() { 20_000 } else { 200_000 };
    let stream = if quick() { 64 << 20 } else { 512 << 20 };
    let conns = if quick() { 200 } else { 1000 };
    // `NODE_BENCH_ONLY=throughput` runs just the padded throughput case (for profiling).
    if std::env::var("NODE_BENCH_ONLY").as_deref() == Ok("throughput") {
        println!("{:.0} msg/s", throughput(count, Padding::Buckets).await);
        return;
    }
    println!("| measurement | Meshara node | raw quinn (same TLS) | ratio |");
    println!("|---|---|---|---|");
    for size in [1024, 10 * 1024] {
        let (p50, p99, r50, r99) = latency(size, samples).await;
        println!(
            "| private message round trip (send → e2e ack), {} KiB, p50 / p99 | {} / {} | {} / {} | p99 {:.2}x |",
            size / 1024,
            us(p50),
            us(p99),
            us(r50),
            us(r99),
            p99.as_secs_f64() / r99.as_secs_f64()
        );
    }
    let mesh = throughput(count, Padding::Buckets).await;
    let mesh_unpadded = throughput(count, Padding::None).await;
    let rawt = raw_throughput(count).await;
    println!(
        "| 1 KiB private messages/s, every one acknowledged (bucket padding) | {mesh:.0} | {rawt:.0} frames/s | {:.2} |",
        mesh / rawt
    );
    println!(
        "| 1 KiB private messages/s, every one acknowledged (no padding) | {mesh_unpadded:.0} | {rawt:.0} frames/s | {:.2} |",
        mesh_unpadded / rawt
    );
    let (g, rg) = goodput(stream).await;
    println!(
        "| stream goodput, {} MiB one way | {:.0} MB/s | {:.0} MB/s | {:.2} |",
        stream >> 20,
        g / 1e6,
        rg / 1e6,
        g / rg
    );
    let (idle, loaded, mesh_time, raw_time) = connections(conns).await;
    println!(
        "| {conns} concurrent connections to one node: time to establish | {:.2} s | {:.2} s | {:.2} |",
        mesh_time.as_secs_f64(),
        raw_time.as_secs_f64(),
        mesh_time.as_secs_f64() / raw_time.as_secs_f64()
    );
    println!(
        "| `meshara run` RSS idle | {:.1} MB | | |",
        idle as f64 / 1024.0
    );
    println!(
        "| `meshara run` RSS with {conns} peers / per connection | {:.1} MB / {:.1} KiB | | |",
        loaded as f64 / 1024.0,
        (loaded.saturating_sub(idle)) as f64 / conns as f64
    );
}
