//! Bridge circuits: an end-to-end connection to a peer this node cannot dial, spliced by a
//! bridge that can (docs/protocol.md §15.15).
//!
//! A clearnet node cannot dial an onion service or an I2P destination, and a Tor-only node
//! cannot dial QUIC. A bridge is a node that can reach both sides (it has a Tor or I2P dialer
//! and serves QUIC) and sets [`Bridge::enabled`](super::config::Bridge). Through it:
//!
//! 1. the initiator opens a stream of kind `STREAM_CIRCUIT` on its connection to the bridge and
//!    asks `CONNECT <target>`;
//! 2. the bridge checks its policy, reaches the target over any connection that is not itself
//!    a circuit, opens a stream there and announces `INCOMING <initiator>`;
//! 3. once the target accepted, the bridge answers the initiator and copies bytes between the
//!    two streams, within per-peer bandwidth limits;
//! 4. initiator and target run the stream transport (TLS 1.3, raw-key identities, yamux) over
//!    the spliced bytes: the result is an ordinary [`Connection`] of kind
//!    [`TransportKind::Relayed`] carrying messages, queries and streams end to end.
//!
//! The bridge sees TLS ciphertext only. It learns the two NodeIds, when the circuit was open
//! and how many bytes crossed it; the target learns which bridge the initiator used.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::PeerAddr;
use super::core::Inner;
use super::error::{SendError, TransportError};
use super::events::PeerStream;
use super::metrics::DropReason;
use super::transport::{Connection, RecvHalf, SendHalf, StreamConnection, TransportKind};
use crate::identity::NodeId;
use crate::rate::TokenBucket;
use crate::record::{Capability, Transport};

/// Stream kind of a circuit request (after `STREAM_ENVELOPES` = 1 and `STREAM_USER` = 2).
pub(crate) const STREAM_CIRCUIT: u8 = 3;
/// Initiator → bridge: relay me to the NodeId that follows.
const OP_CONNECT: u8 = 1;
/// Bridge → target: the NodeId that follows wants a connection through me.
const OP_INCOMING: u8 = 2;
/// Bytes copied per read while splicing (smaller when the bandwidth limit's burst is).
const SPLICE_CHUNK: usize = 16 * 1024;
/// Bridges tried, best first, before a dial through bridges gives up.
const BRIDGES_TRIED: usize = 3;
/// Protocol label of the streams a circuit runs over (never sent on the wire).
const CIRCUIT_LABEL: &str = "meshara.circuit";

/// A bridge's answer to `CONNECT`, and a target's to `INCOMING`: one status byte, then a
/// reason of at most 255 bytes (length-prefixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Status {
    Ok = 0,
    NotABridge = 1,
    NotAllowed = 2,
    RateLimited = 3,
    Capacity = 4,
    Unreachable = 5,
    BadRequest = 6,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotABridge => "not_a_bridge",
            Status::NotAllowed => "not_allowed",
            Status::RateLimited => "rate_limited",
            Status::Capacity => "capacity",
            Status::Unreachable => "unreachable",
            Status::BadRequest => "bad_request",
        }
    }
}

/// A peer's byte budget, shared by all the circuits it opened.
type ByteBudget = Arc<std::sync::Mutex<TokenBucket>>;

/// What a bridge tracks per peer: open circuits, the circuit-opening budget, the byte budget.
#[derive(Debug)]
struct PeerCircuits {
    open: usize,
    opens: TokenBucket,
    bytes: ByteBudget,
}

/// The bridge's circuit bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Circuits {
    active: usize,
    peers: HashMap<NodeId, PeerCircuits>,
    /// Per source address block (IPv4 address or IPv6 /64), for circuits whose opener reached
    /// us over IP: throwaway identities from one address share these.
    blocks: HashMap<std::net::IpAddr, BlockCircuits>,
}

#[derive(Debug)]
struct BlockCircuits {
    open: usize,
    opens: TokenBucket,
}

/// Gives back what admission took when a relayed circuit ends (or fails to start).
struct Admission {
    inner: Arc<Inner>,
    from: NodeId,
    target: NodeId,
    block: Option<std::net::IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut c = self
            .inner
            .circuits
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        c.active = c.active.saturating_sub(1);
        let now = Instant::now();
        let per_minute = f64::from(self.inner.config.bridge.circuits_per_minute);
        if let Some(block) = self.block {
            let per_minute = f64::from(self.inner.config.bridge.circuits_per_minute_per_ip);
            if let Some(b) = c.blocks.get_mut(&block) {
                b.open = b.open.saturating_sub(1);
                b.opens.try_take(0.0, now);
                if b.open == 0 && b.opens.wait_for(per_minute).is_zero() {
                    c.blocks.remove(&block);
                }
            }
        }
        for peer in [self.from, self.target] {
            if let Some(p) = c.peers.get_mut(&peer) {
                p.open = p.open.saturating_sub(1);
                // Forget idle peers once their opening budget has refilled, so the map stays as
                // small as the set of recently active peers (and closing every circuit does not
                // reset a peer's budget).
                p.opens.try_take(0.0, now);
                if p.open == 0 && p.opens.wait_for(per_minute).is_zero() {
                    c.peers.remove(&peer);
                }
            }
        }
        self.inner.metrics.bridge_circuits.set(c.active as i64);
    }
}

async fn write_status(send: &mut SendHalf, status: Status, reason: &str) -> std::io::Result<()> {
    let reason = truncate(reason, 255);
    let mut out = Vec::with_capacity(2 + reason.len());
    out.push(status as u8);
    out.push(reason.len() as u8);
    out.extend_from_slice(reason.as_bytes());
    send.write_all(&out).await?;
    send.flush().await
}

/// Reads a status reply: `Ok(Ok(()))` for [`Status::Ok`], `Ok(Err(reason))` otherwise.
async fn read_status(recv: &mut RecvHalf) -> std::io::Result<Result<(), String>> {
    let status = recv.read_u8().await?;
    let len = recv.read_u8().await? as usize;
    let mut reason = vec![0u8; len];
    recv.read_exact(&mut reason).await?;
    let reason = String::from_utf8_lossy(&reason).into_owned();
    if status == Status::Ok as u8 {
        Ok(Ok(()))
    } else if reason.is_empty() {
        Ok(Err(format!("status {status}")))
    } else {
        Ok(Err(reason))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The connection kind of a Tor or I2P first hop.
pub(crate) fn route_kind(transport: Transport) -> Option<TransportKind> {
    match transport {
        Transport::Tor => Some(TransportKind::Tor),
        Transport::I2p => Some(TransportKind::I2p),
        _ => None,
    }
}

impl Inner {
    /// Whether this node can dial `transport` addresses itself (natively or through a dialer),
    /// given [`NodeConfig::route_all_via`](super::config::NodeConfig::route_all_via).
    pub(crate) fn can_dial(&self, transport: Transport) -> bool {
        match (transport, self.config.route_all_via) {
            (Transport::Quic, Some(_)) => false,
            (Transport::Quic, None) => true,
            // Tor exits carry TCP to clearnet addresses; I2P has no such exits here.
            (Transport::Tcp, Some(via)) => via == Transport::Tor && self.dialers.contains_key(&via),
            (Transport::Tcp, None) => true,
            (t, _) => self.dialers.contains_key(&t),
        }
    }

    /// Waits (up to the connect timeout) for a ready connection to `peer`, dialing it, and
    /// through bridges when its record has no address this node can dial.
    pub(crate) async fn ready_conn(
        self: &Arc<Self>,
        peer: NodeId,
    ) -> Result<Arc<dyn Connection>, SendError> {
        {
            let st = self.lock();
            self.check_peer(&st, &peer)?;
        }
        let mut topology = self.topology.subscribe();
        let deadline = tokio::time::Instant::now() + self.config.timeouts.connect;
        loop {
            let conn = {
                let st = self.lock();
                st.peers
                    .get(&peer)
                    .and_then(|p| p.conns.iter().rev().find(|c| c.ready))
                    .map(|c| c.conn.clone())
            };
            if let Some(conn) = conn {
                return Ok(conn);
            }
            let known = {
                let st = self.lock();
                st.records.get(&peer).is_some()
                    || st.dialing.contains(&peer)
                    || st.wanted.iter().any(|w| w.node == Some(peer))
            };
            if !known {
                return Err(SendError::NoRoute(peer));
            }
            self.ensure_connected(peer);
            tokio::select! {
                r = topology.changed() => if r.is_err() { return Err(SendError::Stopped) },
                () = tokio::time::sleep_until(deadline) => {
                    return Err(SendError::Transport(TransportError::Timeout(self.config.timeouts.connect)))
                }
                () = self.shutdown.cancelled() => return Err(SendError::Stopped),
            }
        }
    }

    /// The newest ready connection to `peer` that is not itself a circuit (circuits do not
    /// chain), of transport `kind` when one is named.
    fn direct_conn_over(
        &self,
        peer: &NodeId,
        kind: Option<TransportKind>,
    ) -> Option<Arc<dyn Connection>> {
        let st = self.lock();
        st.peers
            .get(peer)?
            .conns
            .iter()
            .rev()
            .find(|c| {
                c.ready
                    && c.conn.kind() != TransportKind::Relayed
                    && kind.is_none_or(|k| c.conn.kind() == k)
            })
            .map(|c| c.conn.clone())
    }

    /// The addresses of `peer`'s record this node can reach over `over`: its own addresses of
    /// that transport, and for Tor its TCP addresses (through an exit).
    /// Configured addresses of the peer (bootstrap, `add_peer`) count too.
    fn addresses_over(&self, peer: &NodeId, over: Transport) -> Vec<PeerAddr> {
        let st = self.lock();
        let mut known: Vec<crate::record::Address> = st
            .peer_record(peer)
            .map(|r| r.addresses().to_vec())
            .unwrap_or_default();
        known.extend(
            st.wanted
                .iter()
                .filter(|w| w.node == Some(*peer))
                .map(|w| w.addr.address.clone()),
        );
        let mut addrs: Vec<PeerAddr> = Vec::new();
        // Addresses of the transport itself first, then TCP through a Tor exit.
        for exit in [false, true] {
            for a in &known {
                let fits = if exit {
                    over == Transport::Tor && a.transport == Transport::Tcp
                } else {
                    a.transport == over
                };
                let addr = PeerAddr {
                    node: Some(*peer),
                    address: a.clone(),
                };
                if fits && !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        addrs
    }

    /// Connects to `peer` itself over `over` (no circuit), trying each address that fits.
    async fn dial_over(
        self: &Arc<Self>,
        peer: NodeId,
        over: Transport,
    ) -> Result<NodeId, TransportError> {
        let addrs = self.addresses_over(&peer, over);
        let mut last = TransportError::Connect(format!(
            "{peer}'s record has no address reachable over {over:?}"
        ));
        for addr in addrs {
            match self.connect_over(&addr, Some(over)).await {
                Ok(node) => {
                    // Wait for the record exchange, so that the route is ready for messages.
                    let kind = route_kind(over);
                    let mut topology = self.topology.subscribe();
                    let deadline = tokio::time::Instant::now() + self.config.timeouts.connect;
                    while !self.lock().is_ready_over(&node, kind) {
                        tokio::select! {
                            r = topology.changed() => if r.is_err() { break },
                            () = tokio::time::sleep_until(deadline) => break,
                        }
                    }
                    return Ok(node);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts making a connection to `peer` whose first hop is `over` (Tor or I2P), for the
    /// messages that may travel only that way: to the peer's own address of that transport
    /// (its TCP address through a Tor exit), else through a bridge this node reaches over it.
    /// Never falls back to another transport. Backs off after a failure.
    pub(crate) fn ensure_route(self: &Arc<Self>, peer: NodeId, over: Transport) {
        let Some(kind) = route_kind(over) else {
            return;
        };
        {
            let mut st = self.lock();
            if st.is_ready_over(&peer, Some(kind))
                || st.banned.contains(&peer)
                || st.route_dialing.contains(&(peer, over))
                || !self.dialers.contains_key(&over)
                || st
                    .route_backoff
                    .get(&(peer, over))
                    .is_some_and(|(next, _)| Instant::now() < *next)
            {
                return;
            }
            st.route_dialing.insert((peer, over));
            // Without its record, ask the DHT (other nodes, never the peer itself: dialling it
            // directly would tell it our address); configured addresses and bridges may still
            // work meanwhile, and the outbox asks again after the backoff.
            if st.peer_record(&peer).is_none() && st.looking_up.insert(peer) {
                let inner = self.clone();
                self.tasks.spawn(async move {
                    let found = inner.clone().lookup_record(peer).await;
                    inner.lock().looking_up.remove(&peer);
                    if found {
                        inner.emit(super::events::Event::PeerDiscovered { peer, via: "dht" });
                    }
                });
            }
        }
        let inner = self.clone();
        self.tasks.spawn(async move {
            let mut result = inner.dial_over(peer, over).await;
            if result.is_err() {
                for bridge in inner.bridges_over(&peer, over) {
                    result = inner.connect_via_over(bridge, peer, Some(over)).await;
                    match &result {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::debug!(%peer, %bridge, ?over, error = %e, "circuit failed")
                        }
                    }
                }
            }
            let mut st = inner.lock();
            st.route_dialing.remove(&(peer, over));
            match result {
                Ok(_) => {
                    st.route_backoff.remove(&(peer, over));
                    drop(st);
                    tracing::debug!(%peer, ?over, "route ready");
                }
                Err(e) => {
                    let t = &inner.config.timeouts;
                    let delay = st
                        .route_backoff
                        .get(&(peer, over))
                        .map_or(t.reconnect_min, |(_, d)| (*d * 2).min(t.reconnect_max));
                    st.route_backoff
                        .insert((peer, over), (Instant::now() + delay, delay));
                    drop(st);
                    tracing::debug!(%peer, ?over, error = %e, "no route over this transport");
                }
            }
        });
    }

    /// Bridges (nodes advertising a bridge capability) this node reaches over `over`, for a
    /// circuit to `target`: those connected over it first, then those whose record has an
    /// address reachable over it.
    fn bridges_over(&self, target: &NodeId, over: Transport) -> Vec<NodeId> {
        let Some(kind) = route_kind(over) else {
            return Vec::new();
        };
        let me = self.identity.node_id();
        let candidates: Vec<(NodeId, bool)> = {
            let st = self.lock();
            st.records
                .iter()
                .filter(|r| {
                    r.has_capability(Capability::BridgeTor)
                        || r.has_capability(Capability::BridgeI2p)
                })
                .map(|r| r.node_id())
                .filter(|id| id != target && *id != me && !st.banned.contains(id))
                .map(|id| {
                    let connected = st
                        .peers
                        .get(&id)
                        .is_some_and(|p| p.conns.iter().any(|c| c.ready && c.conn.kind() == kind));
                    (id, connected)
                })
                .collect()
        };
        let mut ready: Vec<NodeId> = Vec::new();
        let mut known: Vec<NodeId> = Vec::new();
        for (id, connected) in candidates {
            if connected {
                ready.push(id);
            } else if !self.addresses_over(&id, over).is_empty() {
                known.push(id);
            }
        }
        ready.extend(known);
        ready.truncate(BRIDGES_TRIED);
        ready
    }

    /// Takes a connection slot, runs `handshake` within the connect timeout and registers the
    /// connection; the slot is given back if the handshake fails, times out or is cancelled.
    /// `expect` is the NodeId the handshake must have authenticated, when known.
    pub(crate) async fn register_stream(
        self: &Arc<Self>,
        handshake: impl std::future::Future<Output = Result<StreamConnection, TransportError>>,
        inbound: bool,
        expect: Option<NodeId>,
        first_hop: Option<TransportKind>,
    ) -> Result<NodeId, TransportError> {
        let slot = self.reserve_stream_slot()?;
        let timeout = self.config.timeouts.connect;
        let conn = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| TransportError::Timeout(timeout))
            .and_then(|r| r)
            .inspect_err(|e| self.stream_handshake_failed(e))?;
        let peer = conn.peer();
        if let Some(expected) = expect.filter(|e| *e != peer) {
            conn.close(super::core::close_code::PROTOCOL, "not the announced peer");
            let e = TransportError::WrongPeer { expected };
            self.stream_handshake_failed(&e);
            return Err(e);
        }
        slot.keep();
        self.metrics.attempt("stream", "ok");
        self.establish(Arc::new(conn), inbound, None, first_hop)?;
        Ok(peer)
    }

    /// Opens a circuit to `target` through `bridge` and registers the end-to-end connection.
    pub(crate) async fn connect_via(
        self: &Arc<Self>,
        bridge: NodeId,
        target: NodeId,
    ) -> Result<NodeId, TransportError> {
        self.connect_via_over(bridge, target, None).await
    }

    /// [`Inner::connect_via`] on a connection to the bridge whose transport is `over`, when one
    /// is named (dialing the bridge over it first if needed).
    pub(crate) async fn connect_via_over(
        self: &Arc<Self>,
        bridge: NodeId,
        target: NodeId,
        over: Option<Transport>,
    ) -> Result<NodeId, TransportError> {
        if target == self.identity.node_id() || bridge == target {
            return Err(TransportError::Connect(
                "a circuit needs a bridge, a target and this node to be three nodes".into(),
            ));
        }
        let kind = over.and_then(route_kind);
        match over {
            Some(over) if self.direct_conn_over(&bridge, kind).is_none() => {
                self.dial_over(bridge, over).await?;
            }
            Some(_) => {}
            None => {
                self.ready_conn(bridge).await.map_err(|e| match e {
                    SendError::Transport(t) => t,
                    other => {
                        TransportError::Connect(format!("cannot reach bridge {bridge}: {other}"))
                    }
                })?;
            }
        }
        let conn = self.direct_conn_over(&bridge, kind).ok_or_else(|| {
            TransportError::Connect(format!(
                "bridge {bridge} is reached only through another circuit"
            ))
        })?;
        self.mark_streams(&bridge);
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut header = Vec::with_capacity(34);
        header.extend_from_slice(&[STREAM_CIRCUIT, OP_CONNECT]);
        header.extend_from_slice(target.as_bytes());
        send.write_all(&header).await?;
        send.flush().await?;
        // The bridge may take a connect timeout to reach the target and another for the
        // target's answer.
        let timeout = self.config.timeouts.connect * 3;
        match tokio::time::timeout(timeout, read_status(&mut recv)).await {
            Err(_) => return Err(TransportError::Timeout(timeout)),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Err(reason))) => return Err(TransportError::CircuitRefused { bridge, reason }),
            Ok(Ok(Ok(()))) => {}
        }
        let io = PeerStream::new(bridge, CIRCUIT_LABEL.into(), send, recv);
        let handshake = StreamConnection::connect(
            io,
            &self.identity,
            Some(target),
            TransportKind::Relayed,
            None,
        );
        let peer = self
            .register_stream(handshake, false, Some(target), Some(conn.kind()))
            .await?;
        tracing::debug!(%target, %bridge, "connected through a bridge");
        Ok(peer)
    }

    /// Bridges that can reach a peer whose record lists only `transports`, best first: ready
    /// connections, then known records.
    pub(crate) fn bridges_for(&self, target: &NodeId, transports: &[Transport]) -> Vec<NodeId> {
        let wanted: Vec<Capability> = transports
            .iter()
            .filter_map(|t| match t {
                Transport::Tor => Some(Capability::BridgeTor),
                Transport::I2p => Some(Capability::BridgeI2p),
                _ => None,
            })
            .collect();
        // A peer listing QUIC or TCP that this node cannot dial (it routes everything through
        // Tor) is reached by any bridge this node can reach.
        let any_bridge = transports
            .iter()
            .any(|t| matches!(t, Transport::Quic | Transport::Tcp));
        let me = self.identity.node_id();
        let st = self.lock();
        let mut ready = Vec::new();
        let mut known = Vec::new();
        for record in st.records.iter() {
            let id = record.node_id();
            if id == *target || id == me || st.banned.contains(&id) {
                continue;
            }
            let fits = wanted.iter().any(|c| record.has_capability(*c))
                || (any_bridge
                    && (record.has_capability(Capability::BridgeTor)
                        || record.has_capability(Capability::BridgeI2p)));
            if !fits {
                continue;
            }
            let direct = st.peers.get(&id).is_some_and(|p| {
                p.conns
                    .iter()
                    .any(|c| c.ready && c.conn.kind() != TransportKind::Relayed)
            });
            if direct {
                ready.push(id);
            } else if record
                .addresses()
                .iter()
                .any(|a| self.can_dial(a.transport))
            {
                known.push(id);
            }
        }
        ready.extend(known);
        ready.truncate(BRIDGES_TRIED);
        ready
    }

    /// Reaches `target` through the best bridges for `transports`, one after the other.
    pub(crate) async fn dial_through_bridges(
        self: &Arc<Self>,
        target: NodeId,
        transports: Vec<Transport>,
    ) -> Result<NodeId, TransportError> {
        let bridges = self.bridges_for(&target, &transports);
        if bridges.is_empty() {
            return Err(TransportError::Connect(format!(
                "its record lists only {transports:?} addresses and no bridge for them is known"
            )));
        }
        let mut last = None;
        for bridge in bridges {
            match self.connect_via(bridge, target).await {
                Ok(peer) => return Ok(peer),
                Err(e) => {
                    tracing::debug!(%target, %bridge, error = %e, "circuit failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| TransportError::Connect("no bridge answered".into())))
    }

    /// A `STREAM_CIRCUIT` stream a peer opened to us: a request to relay (we are its bridge)
    /// or an announced incoming circuit (we are the target).
    pub(crate) async fn accept_circuit(
        self: Arc<Self>,
        conn: Arc<dyn Connection>,
        mut send: SendHalf,
        mut recv: RecvHalf,
    ) {
        let peer = conn.peer();
        let mut header = [0u8; 33];
        let read =
            tokio::time::timeout(self.config.timeouts.connect, recv.read_exact(&mut header)).await;
        if !matches!(read, Ok(Ok(_))) {
            self.count_drop(DropReason::Bridge, Some(&peer), "truncated circuit request");
            return;
        }
        let Ok(other) = NodeId::from_slice(&header[1..]) else {
            let _ = write_status(&mut send, Status::BadRequest, "not a NodeId").await;
            self.count_drop(
                DropReason::Bridge,
                Some(&peer),
                "circuit request with a bad NodeId",
            );
            return;
        };
        match header[0] {
            OP_CONNECT => self.relay(conn, other, send, recv).await,
            OP_INCOMING => self.incoming(peer, conn.kind(), other, send, recv).await,
            _ => {
                let _ =
                    write_status(&mut send, Status::BadRequest, "unknown circuit operation").await;
                self.count_drop(DropReason::Bridge, Some(&peer), "unknown circuit operation");
            }
        }
    }

    /// We are the target: `bridge` relays a circuit from `source`.
    async fn incoming(
        self: &Arc<Self>,
        bridge: NodeId,
        first_hop: TransportKind,
        source: NodeId,
        mut send: SendHalf,
        recv: RecvHalf,
    ) {
        if source == self.identity.node_id() || source == bridge {
            let _ = write_status(&mut send, Status::BadRequest, "bad circuit source").await;
            self.count_drop(DropReason::Bridge, Some(&bridge), "bad circuit source");
            return;
        }
        if self.lock().banned.contains(&source) {
            let _ = write_status(&mut send, Status::NotAllowed, "source is banned here").await;
            self.count_drop(
                DropReason::Banned,
                Some(&source),
                "circuit from a banned peer",
            );
            return;
        }
        // Refuse plainly while full, rather than accepting and then dropping the stream
        // (`register_stream` checks again, atomically).
        if self.lock().total_conns >= self.config.limits.max_connections {
            let _ = write_status(
                &mut send,
                Status::Capacity,
                "target at its connection limit",
            )
            .await;
            self.count_drop(
                DropReason::MaxConnections,
                Some(&source),
                "incoming circuit",
            );
            return;
        }
        if write_status(&mut send, Status::Ok, "").await.is_err() {
            return;
        }
        let io = PeerStream::new(bridge, CIRCUIT_LABEL.into(), send, recv);
        let handshake =
            StreamConnection::accept(io, self.stream_tls.clone(), TransportKind::Relayed, None);
        match self
            .register_stream(handshake, true, Some(source), Some(first_hop))
            .await
        {
            Ok(_) => tracing::debug!(%source, %bridge, "accepted a circuit"),
            Err(e) => tracing::debug!(%source, %bridge, error = %e, "incoming circuit failed"),
        }
    }

    /// Admission for a circuit from `from` to `target`: policy, then limits.
    /// `block` is the opener's address block when it reached us over IP.
    fn admit_circuit(
        self: &Arc<Self>,
        from: NodeId,
        block: Option<std::net::IpAddr>,
        target: NodeId,
    ) -> Result<(Admission, ByteBudget), (Status, &'static str)> {
        let policy = &self.config.bridge;
        if !policy.enabled {
            return Err((Status::NotABridge, "this node is not a bridge"));
        }
        if !policy.allow.is_empty() && !policy.allow.contains(&from) {
            return Err((Status::NotAllowed, "not on this bridge's allow list"));
        }
        if target == from || target == self.identity.node_id() {
            return Err((Status::BadRequest, "bad circuit target"));
        }
        let now = Instant::now();
        let mut c = self.circuits.lock().unwrap_or_else(|p| p.into_inner());
        if c.active >= policy.max_circuits {
            return Err((Status::Capacity, "bridge at its circuit limit"));
        }
        let per_minute = f64::from(policy.circuits_per_minute);
        let burst = policy.bytes_per_sec as f64;
        let new_peer = || PeerCircuits {
            open: 0,
            opens: TokenBucket::new(per_minute / 60.0, per_minute, now),
            bytes: Arc::new(std::sync::Mutex::new(TokenBucket::new(burst, burst, now))),
        };
        let busy = |c: &Circuits, id: &NodeId| {
            c.peers
                .get(id)
                .is_some_and(|p| p.open >= policy.max_circuits_per_peer)
        };
        if busy(&c, &from) || busy(&c, &target) {
            return Err((Status::Capacity, "too many circuits for this peer"));
        }
        if let Some(block) = block {
            let per_minute = f64::from(policy.circuits_per_minute_per_ip);
            let b = c.blocks.entry(block).or_insert_with(|| BlockCircuits {
                open: 0,
                opens: TokenBucket::new(per_minute / 60.0, per_minute, now),
            });
            if b.open >= policy.max_circuits_per_ip {
                return Err((Status::Capacity, "too many circuits from this address"));
            }
            if !b.opens.try_take(1.0, now) {
                return Err((
                    Status::RateLimited,
                    "too many new circuits from this address; try again later",
                ));
            }
            b.open += 1;
        }
        let entry = c.peers.entry(from).or_insert_with(new_peer);
        if !entry.opens.try_take(1.0, now) {
            if let Some(b) = block.and_then(|block| c.blocks.get_mut(&block)) {
                b.open = b.open.saturating_sub(1);
            }
            return Err((
                Status::RateLimited,
                "too many new circuits; try again later",
            ));
        }
        entry.open += 1;
        let bytes = entry.bytes.clone();
        c.peers.entry(target).or_insert_with(new_peer).open += 1;
        c.active += 1;
        self.metrics.bridge_circuits.set(c.active as i64);
        Ok((
            Admission {
                inner: self.clone(),
                from,
                target,
                block,
            },
            bytes,
        ))
    }

    fn refuse_circuit(&self, from: &NodeId, status: Status, reason: &str) {
        self.metrics
            .bridge_results
            .get_or_create(&super::metrics::ResultLabels {
                result: status.label(),
            })
            .inc();
        self.count_drop(DropReason::Bridge, Some(from), reason);
    }

    /// We are the bridge: relay `conn.peer()`'s circuit to `target`.
    async fn relay(
        self: &Arc<Self>,
        conn: Arc<dyn Connection>,
        target: NodeId,
        mut send: SendHalf,
        recv: RecvHalf,
    ) {
        let from = conn.peer();
        let admitted = if conn.kind() == TransportKind::Relayed {
            Err((Status::BadRequest, "circuits do not chain"))
        } else {
            let block = conn
                .remote_addr()
                .map(|a| super::core::address_block(a.ip()));
            self.admit_circuit(from, block, target)
        };
        let (admission, bytes) = match admitted {
            Ok(a) => a,
            Err((status, reason)) => {
                let _ = write_status(&mut send, status, reason).await;
                self.refuse_circuit(&from, status, reason);
                return;
            }
        };
        let onward = match self.open_onward(from, target).await {
            Ok(halves) => halves,
            Err(reason) => {
                let _ = write_status(&mut send, Status::Unreachable, &reason).await;
                self.refuse_circuit(&from, Status::Unreachable, &reason);
                return;
            }
        };
        if write_status(&mut send, Status::Ok, "").await.is_err() {
            return;
        }
        self.metrics
            .bridge_results
            .get_or_create(&super::metrics::ResultLabels { result: "ok" })
            .inc();
        tracing::debug!(%from, %target, "relaying a circuit");
        let (target_send, target_recv) = onward;
        let activity = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let idle = self.config.timeouts.idle;
        let chunk = SPLICE_CHUNK
            .min(self.config.bridge.bytes_per_sec as usize)
            .max(1);
        let there = self.clone().pump(
            recv,
            target_send,
            bytes.clone(),
            activity.clone(),
            started,
            idle,
            chunk,
        );
        let back = self
            .clone()
            .pump(target_recv, send, bytes, activity, started, idle, chunk);
        let outcome = tokio::select! {
            r = async { tokio::try_join!(there, back) } => r.map(|_| ()),
            () = self.shutdown.cancelled() => Ok(()),
        };
        if let Err(e) = outcome {
            self.count_drop(
                DropReason::Bridge,
                Some(&from),
                &format!("circuit to {target} cut: {e}"),
            );
        }
        drop(admission);
    }

    /// Opens the target's half of a circuit: a stream announced as `INCOMING from`, accepted.
    async fn open_onward(
        self: &Arc<Self>,
        from: NodeId,
        target: NodeId,
    ) -> Result<(SendHalf, RecvHalf), String> {
        self.ready_conn(target)
            .await
            .map_err(|e| format!("cannot reach {target}: {e}"))?;
        let conn = self
            .direct_conn_over(&target, None)
            .ok_or_else(|| format!("{target} is reachable only through another bridge"))?;
        self.mark_streams(&target);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut header = Vec::with_capacity(34);
        header.extend_from_slice(&[STREAM_CIRCUIT, OP_INCOMING]);
        header.extend_from_slice(from.as_bytes());
        send.write_all(&header).await.map_err(|e| e.to_string())?;
        send.flush().await.map_err(|e| e.to_string())?;
        let timeout = self.config.timeouts.connect;
        match tokio::time::timeout(timeout, read_status(&mut recv)).await {
            Err(_) => Err(format!("{target} did not answer within {timeout:?}")),
            Ok(Err(e)) => Err(format!("{target}: {e}")),
            Ok(Ok(Err(reason))) => Err(format!("{target} refused: {reason}")),
            Ok(Ok(Ok(()))) => Ok((send, recv)),
        }
    }

    /// Copies one direction of a circuit within the initiator's byte budget. Ends when the
    /// reader finishes, on an error, or when neither direction moved for `idle`.
    #[allow(clippy::too_many_arguments)]
    async fn pump(
        self: Arc<Self>,
        mut from: RecvHalf,
        mut to: SendHalf,
        budget: ByteBudget,
        activity: Arc<AtomicU64>,
        started: Instant,
        idle: Duration,
        chunk: usize,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; chunk];
        loop {
            let n = match tokio::time::timeout(idle, from.read(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => {
                    let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                    if started.elapsed().saturating_sub(last) >= idle {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("idle for {idle:?}"),
                        ));
                    }
                    continue;
                }
            };
            if n == 0 {
                let _ = to.shutdown().await;
                return Ok(());
            }
            loop {
                let wait = {
                    let mut b = budget.lock().unwrap_or_else(|p| p.into_inner());
                    if b.try_take(n as f64, Instant::now()) {
                        break;
                    }
                    b.wait_for(n as f64)
                };
                tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
            }
            to.write_all(&buf[..n]).await?;
            to.flush().await?;
            activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.metrics.bridge_bytes.inc_by(n as u64);
        }
    }
}
