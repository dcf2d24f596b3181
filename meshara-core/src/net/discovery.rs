//! Local-network discovery with mDNS (DNS-SD service `_meshara._udp.local.`).
//!
//! Each node announces one service instance named by its NodeId, with TXT properties `id`
//! (the NodeId) and `tcp` (the TCP port, if any); the service port is the QUIC port. A node
//! that resolves another instance dials it *with the announced NodeId as the expected
//! identity*, so a spoofed announcement can only cause a failed handshake, never a
//! connection to an impostor.
//!
//! Peer exchange (signed node records swapped on connect and periodically) lives in the
//! runtime; see `core.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use super::config::PeerAddr;
use super::core::Inner;
use super::events::Event;
use crate::identity::NodeId;
use crate::record::{Address, Transport};

/// The DNS-SD service type.
pub const MDNS_SERVICE: &str = "_meshara._udp.local.";

pub(crate) fn start_mdns(inner: &Arc<Inner>) -> Result<(), String> {
    let daemon = mdns_sd::ServiceDaemon::new().map_err(|e| format!("mdns: cannot start: {e}"))?;
    let id = inner.identity.node_id().to_string();
    let port = inner
        .local_quic
        .map(|a| a.port())
        .or(inner.local_tcp.map(|a| a.port()))
        .ok_or("mdns needs a listening socket")?;
    let mut props: Vec<(&str, String)> = vec![("id", id.clone())];
    if let Some(tcp) = inner.local_tcp {
        props.push(("tcp", tcp.port().to_string()));
    }
    if inner.local_quic.is_none() {
        props.push(("quic", "0".into()));
    }
    let host = format!("{}.local.", &id[..16]);
    let info = mdns_sd::ServiceInfo::new(MDNS_SERVICE, &id, &host, (), port, &props[..])
        .map_err(|e| format!("mdns: bad service info: {e}"))?
        .enable_addr_auto();
    daemon
        .register(info)
        .map_err(|e| format!("mdns: cannot announce: {e}"))?;
    let browse = daemon
        .browse(MDNS_SERVICE)
        .map_err(|e| format!("mdns: cannot browse: {e}"))?;
    *inner.mdns.lock().unwrap_or_else(|p| p.into_inner()) = Some(daemon);
    let node = inner.clone();
    inner.tasks.spawn(async move {
        loop {
            let event = tokio::select! {
                e = browse.recv_async() => match e { Ok(e) => e, Err(_) => return },
                () = node.shutdown.cancelled() => return,
            };
            if let mdns_sd::ServiceEvent::ServiceResolved(info) = event {
                handle_resolved(&node, &info);
            }
        }
    });
    tracing::info!(service = MDNS_SERVICE, "mDNS discovery started");
    Ok(())
}

fn handle_resolved(inner: &Arc<Inner>, info: &mdns_sd::ServiceInfo) {
    let Some(peer) = info
        .get_property_val_str("id")
        .and_then(|id| id.parse::<NodeId>().ok())
    else {
        return;
    };
    if peer == inner.identity.node_id() {
        return;
    }
    {
        let st = inner.lock();
        if st.peers.contains_key(&peer) || st.dialing.contains(&peer) || st.banned.contains(&peer) {
            return;
        }
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
            addrs.push(PeerAddr {
                node: Some(peer),
                address: Address {
                    transport: Transport::Quic,
                    host: ip.to_string(),
                    port: quic_port,
                },
            });
        }
        if let Some(port) = tcp_port {
            addrs.push(PeerAddr {
                node: Some(peer),
                address: Address {
                    transport: Transport::Tcp,
                    host: ip.to_string(),
                    port,
                },
            });
        }
    }
    if addrs.is_empty() {
        return;
    }
    tracing::info!(%peer, "discovered via mDNS");
    inner.emit(Event::PeerDiscovered { peer, via: "mdns" });
    inner.lock().dialing.insert(peer);
    let node = inner.clone();
    inner.tasks.spawn(async move {
        for addr in addrs {
            match node.connect(&addr).await {
                Ok(_) => break,
                Err(e) => tracing::debug!(%addr, error = %e, "mDNS peer not reachable there"),
            }
        }
        node.lock().dialing.remove(&peer);
    });
}

pub(crate) fn stop_mdns(inner: &Arc<Inner>) {
    if let Some(daemon) = inner.mdns.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = daemon.unregister(&format!("{}.{}", inner.identity.node_id(), MDNS_SERVICE));
        let _ = daemon.shutdown();
    }
}
