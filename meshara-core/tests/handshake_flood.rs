//! Handshake floods against a running node, as an attacker would send them: QUIC Initial
//! packets from many source addresses whose sender never answers (spoofed, or silent on
//! purpose), senders that answer the server's Retry and then go silent, and TCP connections
//! that never start TLS. Each test shows the attack refused or made free for the node while an
//! honest peer keeps connecting and getting its messages acknowledged.
//!
//! The attacker is written against `quinn-proto` directly: it builds real QUIC Initial packets
//! (Meshara's ALPN, TLS 1.3 with raw public keys, so the server takes them for real clients)
//! and decides itself which answers to read.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use meshara_core::net::transport::quic_client_config;
use meshara_core::net::{DropReason, Limits, Timeouts};
use meshara_core::{Identity, Node, NodeBuilder};

/// What an honest peer's connection and acknowledged message may take while the node is under
/// attack. Without the defences the honest peer is refused outright (every slot is held).
const HONEST_BOUND: Duration = Duration::from_secs(5);

async fn server(limits: Limits, timeouts: Timeouts) -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .limits(limits)
        .timeouts(timeouts)
        .start()
        .await
        .unwrap()
}

async fn honest_node() -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

/// The honest peer connects to `server` and gets a private message acknowledged, within
/// [`HONEST_BOUND`]. Returns how long it took.
async fn honest_round_trip(honest: &Node, server: &Node) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(HONEST_BOUND, async {
        honest.connect(&server.quic_addr().unwrap()).await.unwrap();
        honest
            .send_private(server.node_id(), "text/plain", "still served?")
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap()
    })
    .await
    .expect("the honest peer was not served within the bound during the attack");
    started.elapsed()
}

fn retries(node: &Node) -> u64 {
    node.metrics_text()
        .lines()
        .find(|l| {
            l.starts_with("meshara_connection_attempts_total")
                && l.contains("direction=\"in\"")
                && l.contains("result=\"retry\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One attacking source address.
struct Attacker {
    endpoint: quinn_proto::Endpoint,
    socket: UdpSocket,
    config: quinn::ClientConfig,
    server: SocketAddr,
    /// Connections that may still answer a Retry (validated mode only).
    waiting_retry: HashMap<quinn_proto::ConnectionHandle, quinn_proto::Connection>,
    buf: Vec<u8>,
}

impl Attacker {
    fn new(ip: Ipv4Addr, server: SocketAddr) -> Self {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket.set_nonblocking(true).unwrap();
        // A valid identity: nothing in the first flight tells it from an honest client.
        let config = quic_client_config(
            &Arc::new(Identity::generate()),
            None,
            Arc::new(quinn::TransportConfig::default()),
        )
        .unwrap();
        Self {
            endpoint: quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                false,
                None,
            ),
            socket,
            config,
            server,
            waiting_retry: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Sends the Initial of a brand-new connection. `answer_retry` keeps the connection so
    /// that a Retry can be answered; otherwise it is forgotten at once (a spoofed sender
    /// never sees the answer).
    fn initial(&mut self, answer_retry: bool) {
        let (handle, mut conn) = self
            .endpoint
            .connect(Instant::now(), self.config.clone(), self.server, "meshara")
            .unwrap();
        self.flush(&mut conn);
        if answer_retry {
            self.waiting_retry.insert(handle, conn);
        }
    }

    fn flush(&mut self, conn: &mut quinn_proto::Connection) {
        while let Some(t) = conn.poll_transmit(Instant::now(), 1, &mut self.buf) {
            let _ = self.socket.send_to(&self.buf[..t.size], t.destination);
            self.buf.clear();
        }
    }

    /// Reads what the server sent. A Retry is answered (the Initial again, with the token:
    /// the address is now validated); everything else is dropped unread, so the handshake is
    /// left half-open on the server.
    fn pump(&mut self) {
        let mut datagram = [0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut datagram) {
            // Long header, packet type 3: Retry (RFC 9000 §17.2.5).
            let is_retry = n > 0 && datagram[0] & 0x80 != 0 && (datagram[0] >> 4) & 0x3 == 3;
            if !is_retry {
                continue;
            }
            let event = self.endpoint.handle(
                Instant::now(),
                from,
                None,
                None,
                BytesMut::from(&datagram[..n]),
                &mut self.buf,
            );
            self.buf.clear();
            if let Some(quinn_proto::DatagramEvent::ConnectionEvent(handle, event)) = event {
                if let Some(mut conn) = self.waiting_retry.remove(&handle) {
                    conn.handle_event(event);
                    self.flush(&mut conn);
                }
            }
        }
    }
}

fn attacker_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 77, (i / 250) as u8, (i % 250 + 1) as u8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_initials_from_many_addresses_do_not_lock_out_honest_peers() {
    // Default limits: 128 handshake slots, Retry above 16 handshakes in progress.
    let server = server(Limits::default(), Timeouts::default()).await;
    let target: SocketAddr = format!("127.0.0.1:{}", server.quic_addr().unwrap().address.port)
        .parse()
        .unwrap();
    let honest = honest_node().await;

    // 32 addresses send fresh Initials, ~800 per second in total, for up to 8 seconds: 60
    // times the rate that used to hold all 128 slots (13 per second for a 10 s timeout). None
    // of them ever reads an answer.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut attackers: Vec<Attacker> = (0..32)
                .map(|i| Attacker::new(attacker_ip(i), target))
                .collect();
            let started = Instant::now();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(8)
            {
                for a in &mut attackers {
                    a.initial(false);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            sent
        })
    };

    // Let the flood build up past the Retry threshold, then watch the node while the honest
    // peer connects.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut peak_pending = 0;
    let took = {
        let watch = async {
            loop {
                peak_pending = peak_pending.max(server.stats().pending_handshakes);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            took = honest_round_trip(&honest, &server) => took,
            () = watch => unreachable!(),
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    peak_pending = peak_pending.max(server.stats().pending_handshakes);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    eprintln!(
        "{sent} silent Initials; honest round trip {took:?}; peak pending {peak_pending}; retries {}",
        retries(&server)
    );

    assert!(sent >= 1000, "the flood sent only {sent} Initials");
    // Spoofed senders got stateless Retries, not slots: only the first handshakes before the
    // threshold (plus any in flight at that moment) ever held one.
    assert!(
        retries(&server) >= sent / 2,
        "{} Retries for {sent} Initials",
        retries(&server)
    );
    assert!(
        peak_pending < Limits::default().max_pending_handshakes,
        "handshake slots filled up: {peak_pending}"
    );
    assert_eq!(server.drops(DropReason::MaxPendingHandshakes), 0);
    // A newcomer after the attack is served too.
    let late = honest_node().await;
    honest_round_trip(&late, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_silent_handshakes_are_capped_per_address_and_time_out() {
    // Every unvalidated address gets a Retry; silent handshakes are dropped after 1 s.
    let limits = Limits {
        handshakes_before_retry: 0,
        ..Limits::default()
    };
    let timeouts = Timeouts {
        inbound_handshake: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let per_ip = limits.max_pending_handshakes_per_ip;
    let server = server(limits, timeouts).await;
    let target: SocketAddr = format!("127.0.0.1:{}", server.quic_addr().unwrap().address.port)
        .parse()
        .unwrap();
    let honest = honest_node().await;

    // One address answers every Retry (it can receive: its address is validated) and then
    // never finishes a handshake; 64 of them, as fast as it can.
    let attacker = std::thread::spawn(move || {
        let mut a = Attacker::new(Ipv4Addr::new(127, 78, 0, 1), target);
        for _ in 0..64 {
            a.initial(true);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            a.pump();
            std::thread::sleep(Duration::from_millis(5));
        }
        a.waiting_retry.len()
    });
    let mut peak_pending = 0;
    let watch_until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < watch_until {
        peak_pending = peak_pending.max(server.stats().pending_handshakes);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unanswered = attacker.join().unwrap();
    assert!(
        unanswered < 64,
        "the attacker never got a Retry to answer ({unanswered} left)"
    );
    assert!(
        server.drops(DropReason::MaxPendingHandshakesPerIp) >= 1,
        "no handshake refused for the address block"
    );
    assert!(
        peak_pending <= per_ip,
        "one address held {peak_pending} handshake slots (cap {per_ip})"
    );

    // Silent TCP connections (TCP validates the address itself) from one address: capped too.
    let tcp: SocketAddr = format!("127.0.0.1:{}", server.tcp_addr().unwrap().address.port)
        .parse()
        .unwrap();
    let before = server.drops(DropReason::MaxPendingHandshakesPerIp);
    let mut idle = Vec::new();
    for _ in 0..(per_ip + 8) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 78, 0, 2)), 0))
            .unwrap();
        idle.push(socket.connect(tcp).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.drops(DropReason::MaxPendingHandshakesPerIp) < before + 8
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.drops(DropReason::MaxPendingHandshakesPerIp) >= before + 8);
    assert!(server.stats().pending_handshakes <= 2 * per_ip);

    // The honest peer, from another address, is served meanwhile (after its own Retry).
    honest_round_trip(&honest, &server).await;
    // The silent handshakes give their slots back after the inbound handshake timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().pending_handshakes > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.stats().pending_handshakes, 0);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_overlay_streams_cannot_block_the_accept_loop() {
    use meshara_core::net::TransportKind;

    // An overlay transport (Tor, I2P) hands the node byte streams that carry no address. The
    // attacker opens far more streams than there are handshake slots and never speaks on any.
    let server = server(Limits::default(), Timeouts::default()).await;
    let honest = honest_node().await;
    let (streams, mut accepted) = tokio::sync::mpsc::channel(16);
    // The accept loop, as the Tor and I2P transports run it.
    let accept_loop = {
        let server = server.clone();
        tokio::spawn(async move {
            while let Some(io) = accepted.recv().await {
                server.spawn_accept_stream(io, TransportKind::Tor);
            }
        })
    };
    let mut silent = Vec::new();
    let flood = Limits::default().max_pending_stream_handshakes * 3;
    for _ in 0..flood {
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        silent.push(ours);
        streams.send(theirs).await.unwrap();
    }
    // The honest client's stream arrives behind all of them and is served.
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    streams.send(server_io).await.unwrap();
    let peer = tokio::time::timeout(
        HONEST_BOUND,
        honest.connect_stream_as(client_io, Some(server.node_id()), TransportKind::Tor),
    )
    .await
    .expect("the honest stream handshake was blocked by silent streams")
    .unwrap();
    assert_eq!(peer, server.node_id());
    let delivered = tokio::time::timeout(
        HONEST_BOUND,
        honest
            .send_private(server.node_id(), "text/plain", "over the overlay")
            .await
            .unwrap()
            .confirmed(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(delivered.peer, server.node_id());
    // The oldest silent handshakes were evicted to make room.
    let evicted = server.drops(DropReason::MaxPendingHandshakes);
    assert!(
        evicted as usize >= flood - Limits::default().max_pending_stream_handshakes,
        "{evicted} evicted"
    );
    drop(streams);
    accept_loop.await.unwrap();
    drop(silent);
}
