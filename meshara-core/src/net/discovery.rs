//! Local-network discovery with mDNS (DNS-SD service `_meshara._udp.local.`).
//!
//! Each node announces one service instance under a random name drawn at every start, with
//! the QUIC port as the service port and TXT properties `tcp` (the TCP port, if any) and
//! `quic=0` (no QUIC listener). Nothing in an announcement names the node: no NodeId, no
//! fingerprint, nothing that stays the same across restarts. A node that resolves another
//! instance dials it without an expected identity, learns the peer's NodeId from the TLS
//! handshake (which proves the key) and then gets its signed record as from any peer. A
//! forged announcement can at most make the node dial an address; how many it dials is
//! bounded ([`MAX_INSTANCES`], [`MAX_DIALS`]).
//!
//! Announcements of older nodes carry the NodeId in TXT `id`; such an instance is dialled
//! with that NodeId as the expected identity, as before.
//!
//! Peer exchange (signed node records swapped on connect and periodically) lives in the
//! runtime; see `core.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use super::config::PeerAddr;
use super::core::Inner;
use super::events::Event;
use crate::identity::NodeId;
use crate::record::{Address, Transport};

/// The DNS-SD service type.
pub const MDNS_SERVICE: &str = "_meshara._udp.local.";

/// Instances the browser remembers (resolved, not yet removed); announcements beyond this
/// are ignored until some are removed or forgotten.
pub(crate) const MAX_INSTANCES: usize = 256;

/// Dials of discovered instances in flight at once.
pub(crate) const MAX_DIALS: usize = 8;

/// How long a dial of a discovered instance may take (a handshake on the local network takes
/// milliseconds; `timeouts.connect` applies when it is shorter).
pub(crate) const MDNS_DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The running mDNS responder and browser.
pub(crate) struct Mdns {
    daemon: mdns_sd::ServiceDaemon,
    /// This node's instance, `<random label>._meshara._udp.local.`.
    fullname: String,
}

/// What the browser remembers of an instance it resolved.
#[derive(Default)]
struct Seen {
    /// The node behind it, once a dial succeeded (or as announced by an older node).
    node: Option<NodeId>,
    dialing: bool,
}

type SeenMap = Arc<Mutex<HashMap<String, Seen>>>;

/// A label that names this run of the node and nothing else: 16 lowercase hex digits from the
/// OS's RNG.
fn random_label() -> String {
    let mut bytes = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn start_mdns(inner: &Arc<Inner>) -> Result<(), String> {
    let daemon = mdns_sd::ServiceDaemon::new().map_err(|e| format!("mdns: cannot start: {e}"))?;
    let port = inner
        .local_quic
        .map(|a| a.port())
        .or(inner.local_tcp.map(|a| a.port()))
        .ok_or("mdns needs a listening socket")?;
    let mut props: Vec<(&str, String)> = Vec::new();
    if let Some(tcp) = inner.local_tcp {
        props.push(("tcp", tcp.port().to_string()));
    }
    if inner.local_quic.is_none() {
        props.push(("quic", "0".into()));
    }
    let label = random_label();
    let host = format!("{label}.local.");
    let info = mdns_sd::ServiceInfo::new(MDNS_SERVICE, &label, &host, (), port, &props[..])
        .map_err(|e| format!("mdns: bad service info: {e}"))?
        .enable_addr_auto();
    let fullname = info.get_fullname().to_owned();
    daemon
        .register(info)
        .map_err(|e| format!("mdns: cannot announce: {e}"))?;
    let browse = daemon
        .browse(MDNS_SERVICE)
        .map_err(|e| format!("mdns: cannot browse: {e}"))?;
    *inner.mdns.lock().unwrap_or_else(|p| p.into_inner()) = Some(Mdns {
        daemon,
        fullname: fullname.clone(),
    });
    let node = inner.clone();
    let seen: SeenMap = Arc::default();
    let dials = Arc::new(tokio::sync::Semaphore::new(MAX_DIALS));
    tracing::info!(service = MDNS_SERVICE, instance = %fullname, "mDNS discovery started");
    inner.tasks.spawn(async move {
        loop {
            let event = tokio::select! {
                e = browse.recv_async() => match e { Ok(e) => e, Err(_) => return },
                () = node.shutdown.cancelled() => return,
            };
            match event {
                mdns_sd::ServiceEvent::ServiceResolved(info) if info.get_fullname() != fullname => {
                    handle_resolved(&node, &info, &seen, &dials);
                }
                mdns_sd::ServiceEvent::ServiceRemoved(_, name) => {
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    if seen.get(&name).is_some_and(|s| !s.dialing) {
                        seen.remove(&name);
                    }
                }
                _ => {}
            }
        }
    });
    Ok(())
}

fn handle_resolved(
    inner: &Arc<Inner>,
    info: &mdns_sd::ServiceInfo,
    seen: &SeenMap,
    dials: &Arc<tokio::sync::Semaphore>,
) {
    let name = info.get_fullname().to_owned();
    // Older nodes announce their NodeId; it is then the identity every dial expects.
    let announced = info
        .get_property_val_str("id")
        .and_then(|id| id.parse::<NodeId>().ok());
    if announced == Some(inner.identity.node_id()) {
        return;
    }
    let quic_port = info.get_port();
    let tcp_port = info
        .get_property_val_str("tcp")
        .and_then(|p| p.parse::<u16>().ok());
    let no_quic = info.get_property_val_str("quic") == Some("0");
    // Prefer IPv4 and non-link-local addresses (link-local IPv6 needs a scope id).
    let mut ips: Vec<IpAddr> = info
        .get_addresses()
        .iter()
        .copied()
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_unspecified(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    let mut addrs = Vec::new();
    for ip in ips {
        if !no_quic {
            addrs.push(Address {
                transport: Transport::Quic,
                host: ip.to_string(),
                port: quic_port,
            });
        }
        if let Some(port) = tcp_port {
            addrs.push(Address {
                transport: Transport::Tcp,
                host: ip.to_string(),
                port,
            });
        }
    }
    if addrs.is_empty() {
        return;
    }
    {
        let st = inner.lock();
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let known = |n: &NodeId| {
            st.peers.contains_key(n) || st.dialing.contains(n) || st.banned.contains(n)
        };
        if announced.as_ref().is_some_and(known) {
            return;
        }
        if let Some(s) = seen.get(&name) {
            if s.dialing || s.node.as_ref().is_some_and(known) {
                return;
            }
        }
        // An instance at an address of a connected peer is that peer (a QUIC connection's
        // remote address is the peer's listening socket; records list what it advertises).
        let at_peer = st.peers.values().any(|p| {
            p.conns.iter().any(|c| {
                c.conn
                    .remote_addr()
                    .is_some_and(|r| addrs.iter().any(|a| same_socket(a, r)))
            }) || p
                .record
                .as_ref()
                .is_some_and(|r| r.addresses().iter().any(|a| addrs.contains(a)))
        });
        if at_peer {
            return;
        }
        if !seen.contains_key(&name) && seen.len() >= MAX_INSTANCES {
            // Forget instances that are neither being dialled nor behind a connected peer.
            seen.retain(|_, s| {
                s.dialing || s.node.as_ref().is_some_and(|n| st.peers.contains_key(n))
            });
            if seen.len() >= MAX_INSTANCES {
                tracing::debug!(instance = %name, "mDNS: too many instances, ignored");
                return;
            }
        }
        seen.entry(name.clone()).or_default().dialing = true;
    }
    if let Some(peer) = announced {
        inner.lock().dialing.insert(peer);
    }
    let shutdown = inner.shutdown.clone();
    let dial = dial_instance(
        inner.clone(),
        name,
        announced,
        addrs,
        seen.clone(),
        dials.clone(),
    );
    inner.tasks.spawn(async move {
        tokio::select! {
            () = dial => {}
            () = shutdown.cancelled() => {}
        }
    });
}

/// Dials a resolved instance at each of its addresses in turn, once one of the
/// [`MAX_DIALS`] slots is free.
async fn dial_instance(
    node: Arc<Inner>,
    name: String,
    announced: Option<NodeId>,
    addrs: Vec<Address>,
    seen: SeenMap,
    dials: Arc<tokio::sync::Semaphore>,
) {
    let Ok(_permit) = dials.acquire_owned().await else {
        return;
    };
    let mut found = None;
    for address in addrs {
        let addr = PeerAddr {
            node: announced,
            address,
        };
        let limit = MDNS_DIAL_TIMEOUT.min(node.config.timeouts.connect);
        match tokio::time::timeout(limit, node.connect(&addr)).await {
            Ok(Ok(peer)) => {
                found = Some(peer);
                break;
            }
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "mDNS instance not reachable there"),
            Err(_) => tracing::debug!(%addr, "mDNS instance did not answer in time"),
        }
    }
    if let Some(peer) = announced {
        node.lock().dialing.remove(&peer);
    }
    if let Some(s) = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&name)
    {
        s.dialing = false;
        s.node = found.or(s.node);
    }
    if let Some(peer) = found {
        tracing::info!(%peer, instance = %name, "discovered via mDNS");
        node.emit(Event::PeerDiscovered { peer, via: "mdns" });
    }
}

/// Whether an announced address is the socket `remote`.
fn same_socket(a: &Address, remote: SocketAddr) -> bool {
    a.port == remote.port()
        && a.host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical() == remote.ip().to_canonical())
}

pub(crate) fn stop_mdns(inner: &Arc<Inner>) {
    if let Some(mdns) = inner.mdns.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = mdns.daemon.unregister(&mdns.fullname);
        let _ = mdns.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::Identity;
    use crate::net::{Node, NodeBuilder};

    async fn node() -> Node {
        NodeBuilder::new()
            .identity(Identity::generate())
            .listen_quic("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap()
    }

    fn instance(name: &str, port: u16) -> mdns_sd::ServiceInfo {
        let none: &[(&str, &str)] = &[];
        mdns_sd::ServiceInfo::new(MDNS_SERVICE, name, "h.local.", "127.0.0.1", port, none).unwrap()
    }

    /// The distinct QUIC connections that reached `socket` before `until` (told apart by the
    /// destination connection ID of their Initial packets), with when each was first seen.
    async fn initials(socket: tokio::net::UdpSocket, until: Instant) -> Vec<(Vec<u8>, Instant)> {
        let mut seen: Vec<(Vec<u8>, Instant)> = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(Ok(n)) = tokio::time::timeout(left, socket.recv(&mut buf)).await else {
                return seen;
            };
            // Long header: flags, 4-byte version, DCID length, DCID.
            if n < 6 || buf[0] & 0x80 == 0 || n < 6 + usize::from(buf[5]) {
                continue;
            }
            let dcid = buf[6..6 + usize::from(buf[5])].to_vec();
            if !seen.iter().any(|(d, _)| *d == dcid) {
                seen.push((dcid, Instant::now()));
            }
        }
    }

    #[test]
    fn labels_are_fresh_at_every_start_and_say_nothing_else() {
        let labels: std::collections::HashSet<String> =
            (0..1_000).map(|_| random_label()).collect();
        assert_eq!(labels.len(), 1_000);
        for l in &labels {
            assert_eq!(l.len(), 16);
            assert!(
                l.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{l}"
            );
        }
    }

    #[tokio::test]
    async fn a_nameless_instance_is_dialed_and_the_handshake_names_it() {
        let a = node().await;
        let b = node().await;
        let mut events = a.events();
        let seen: SeenMap = Arc::default();
        let dials = Arc::new(tokio::sync::Semaphore::new(MAX_DIALS));
        let port = b.inner().local_quic.unwrap().port();
        handle_resolved(
            a.inner(),
            &instance("0011223344556677", port),
            &seen,
            &dials,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, futures_util::StreamExt::next(&mut events)).await {
                Ok(Some(Event::PeerDiscovered { peer, via: "mdns" })) => break peer,
                Ok(Some(_)) => {}
                other => panic!("no discovery: {other:?}"),
            }
        };
        assert_eq!(found, b.node_id());
        while !a.peers().iter().any(|p| p.node_id == b.node_id()) {
            assert!(Instant::now() < deadline, "b never became a's peer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            seen.lock().unwrap()["0011223344556677._meshara._udp.local."].node,
            Some(b.node_id())
        );
        // Another instance at the same address is that peer: not dialed again.
        handle_resolved(
            a.inner(),
            &instance("8899aabbccddeeff", port),
            &seen,
            &dials,
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
        b.stop().await;
        a.stop().await;
    }

    #[tokio::test]
    async fn forged_announcements_cost_a_bounded_number_of_dials() {
        let node = node().await;
        // Every forged instance points at a socket that never answers.
        let hole = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = hole.local_addr().unwrap().port();
        let seen: SeenMap = Arc::default();
        let dials = Arc::new(tokio::sync::Semaphore::new(MAX_DIALS));
        for i in 0..1_000 {
            handle_resolved(
                node.inner(),
                &instance(&format!("forged{i}"), port),
                &seen,
                &dials,
            );
        }
        assert_eq!(seen.lock().unwrap().len(), MAX_INSTANCES);
        // No dial frees its slot before MDNS_DIAL_TIMEOUT, so in a shorter window at most
        // MAX_DIALS connections can start.
        let window = MDNS_DIAL_TIMEOUT - Duration::from_millis(500);
        let got = initials(hole, Instant::now() + window).await;
        assert!(
            (1..=MAX_DIALS).contains(&got.len()),
            "{} dials in flight at once",
            got.len()
        );
        // Meanwhile the node serves an honest peer.
        let honest = node_dialing(&node).await;
        assert!(node.peers().iter().any(|p| p.node_id == honest.node_id()));
        honest.stop().await;
        node.stop().await;
    }

    async fn node_dialing(target: &Node) -> Node {
        let n = node().await;
        let addr = target.quic_addr().unwrap();
        assert_eq!(n.connect(&addr).await.unwrap(), target.node_id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !target.peers().iter().any(|p| p.node_id == n.node_id()) {
            assert!(
                Instant::now() < deadline,
                "the target never listed the peer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    }
}
