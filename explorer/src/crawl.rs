//! The crawler: walks a Meshara network's DHT the way Nebula walks IPFS's, over the protocol
//! itself, with an ordinary node.
//!
//! A crawl starts from the bootstrap addresses and from every node already listed (so a node
//! that left everyone's routing table is still checked and shown down). Each node is
//! *visited*: every advertised address the explorer can dial is probed with a full
//! authenticated handshake (the NodeId is proven, not claimed), the node is asked for its
//! `NodeStatus`, and its routing table is enumerated with `FindNode` requests whose targets
//! share 0, 1, 2, … leading bits with the node's id, one request per k-bucket, until the
//! answers stop bringing new entries. Every record in an answer has been verified by the
//! node library; the ids it names are queued for their own visit.
//!
//! Everything a hostile node can make the crawler do is bounded: requests per node
//! ([`CrawlSection::max_requests_per_node`]), new ids a node may introduce
//! ([`CrawlSection::max_new_per_source`]), nodes per crawl ([`CrawlSection::max_nodes`]),
//! time per visit and per handshake, answer sizes (the wire limits). Nothing it invents is
//! listed: a node is listed only once the explorer completed a handshake with it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshara_core::{Node, NodeId, NodeRecord, PeerAddr, Transport, proto, wire};
use prost::Message;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::CrawlSection;

/// Largest `meshara.status` answer read (a valid one is a few hundred bytes).
pub const MAX_STATUS_BYTES: usize = 64 * 1024;
/// Records in a full `FindNode` answer.
const FULL_ANSWER: usize = wire::MAX_FOUND_RECORDS;
/// Answers in a row that bring nothing new before a routing table counts as enumerated.
const STALE_ANSWERS: usize = 4;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One advertised address tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// `quic`, `tcp`, `tor` or `i2p`.
    pub transport: String,
    /// The address as advertised (`quic://host:port`).
    pub address: String,
    /// Whether the authenticated handshake completed.
    pub ok: bool,
    /// Milliseconds for the whole handshake (TLS 1.3 with identity proof), when it completed.
    pub rtt_ms: Option<f64>,
    /// Why it failed, or why it was not tried.
    pub error: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// What a node said about itself (`NodeStatus`), minus what the explorer does not keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Connected peers (a count; who they are is not published).
    pub peer_count: u32,
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// The outcome of one node's visit.
#[derive(Debug, Clone)]
pub struct Visit {
    /// The newest verified record seen for the node.
    pub record: NodeRecord,
    /// Whether a handshake with it completed (the only way a node gets listed).
    pub reached: bool,
    /// One per advertised address.
    pub probes: Vec<Probe>,
    /// Its status, when it answered.
    pub status: Option<Status>,
    /// Topics it carries (from its status).
    pub topics: Vec<String>,
    /// Round trip of the status request, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Its routing table as enumerated (verified records only, unlisted nodes left out).
    pub neighbours: Vec<NodeId>,
    /// Unix seconds when the visit ended.
    pub at: u64,
}

/// What one crawl did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Distinct verified records considered.
    pub discovered: usize,
    /// Nodes a handshake completed with.
    pub reached: usize,
    /// Nodes that could not be reached.
    pub failed: usize,
    /// Routing-table entries found (directed).
    pub edges: usize,
    /// Nodes that asked not to be listed (walked through, not recorded).
    pub unlisted: usize,
    /// Ids not visited because a bound was hit (max_nodes or a source's max_new_per_source).
    pub refused: usize,
    /// FindNode requests sent.
    pub requests: usize,
}

/// The crawler: a node and its bounds.
#[derive(Debug, Clone)]
pub struct Crawler {
    node: Node,
    config: CrawlSection,
}

impl Crawler {
    /// A crawler that visits through `node`.
    pub fn new(node: Node, config: CrawlSection) -> Self {
        Self { node, config }
    }

    /// Runs one crawl: from `seeds` (addresses, with or without NodeId) and `known` (records of
    /// nodes listed before), visits every node reachable through routing tables, within the
    /// bounds. Each visit is sent to `out` as soon as it ends. Returns when every queued node
    /// was visited.
    pub async fn crawl(
        &self,
        seeds: &[PeerAddr],
        known: Vec<NodeRecord>,
        out: mpsc::Sender<Visit>,
    ) -> Summary {
        let mut summary = Summary::default();
        let mut records: HashMap<NodeId, NodeRecord> = HashMap::new();
        let mut queue: VecDeque<NodeId> = VecDeque::new();
        let mut queued: HashSet<NodeId> = HashSet::new();
        let me = self.node.node_id();

        // Seeds: connect to learn who answers at each address.
        for seed in seeds {
            let timeout = Duration::from_secs(self.config.connect_timeout_secs);
            match tokio::time::timeout(timeout, self.node.connect(seed)).await {
                Ok(Ok(id)) if id != me => {
                    if let Some(r) = self.node.record_of(&id) {
                        records.insert(id, r);
                        if queued.insert(id) {
                            queue.push_back(id);
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(seed = %seed, error = %e, "seed unreachable"),
                Err(_) => tracing::debug!(seed = %seed, "seed timed out"),
            }
        }
        let now = unix_now();
        for r in known {
            let id = r.node_id();
            if id == me || r.is_expired(now) || queued.len() >= self.config.max_nodes {
                continue;
            }
            keep_newest(&mut records, r);
            if queued.insert(id) {
                queue.push_back(id);
            }
        }

        let mut introduced: HashMap<NodeId, usize> = HashMap::new();
        let mut running: JoinSet<(NodeId, Option<Outcome>)> = JoinSet::new();
        loop {
            while running.len() < self.config.concurrency {
                let Some(id) = queue.pop_front() else { break };
                let Some(record) = records.get(&id).cloned() else {
                    continue;
                };
                let node = self.node.clone();
                let config = self.config.clone();
                running.spawn(async move {
                    let limit = Duration::from_secs(config.visit_timeout_secs);
                    let outcome = tokio::time::timeout(limit, visit(&node, &config, record)).await;
                    // Connections are closed after a visit: the crawler holds none of a
                    // node's connection slots between visits.
                    node.remove_peer(id);
                    (id, outcome.ok())
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let Ok((id, outcome)) = done else { continue };
            let Some(mut outcome) = outcome else {
                // Over its time budget: shown as not answering.
                summary.failed += 1;
                if let Some(record) = records.get(&id) {
                    let _ = out
                        .send(Visit::unreached(record.clone(), "visit timed out"))
                        .await;
                }
                continue;
            };
            summary.requests += outcome.requests;
            if let Some(newer) = outcome.newer_record.take() {
                keep_newest(&mut records, newer);
            }
            let Some(record) = records.get(&id).cloned() else {
                continue;
            };
            // Ids this node told us about: queued within its budget and the crawl's.
            let budget = introduced.entry(id).or_default();
            let mut neighbours = Vec::with_capacity(outcome.found.len());
            for r in outcome.found {
                let nid = r.node_id();
                if nid == me {
                    continue;
                }
                if !r.is_unlisted() {
                    neighbours.push(nid);
                }
                let new = !queued.contains(&nid);
                keep_newest(&mut records, r);
                if new {
                    if *budget >= self.config.max_new_per_source
                        || queued.len() >= self.config.max_nodes
                    {
                        summary.refused += 1;
                        continue;
                    }
                    *budget += 1;
                    queued.insert(nid);
                    queue.push_back(nid);
                }
            }
            summary.edges += neighbours.len();
            if outcome.reached {
                summary.reached += 1;
            } else {
                summary.failed += 1;
            }
            if record.is_unlisted() {
                summary.unlisted += 1;
            }
            let visit = Visit {
                record,
                reached: outcome.reached,
                probes: outcome.probes,
                status: outcome.status,
                topics: outcome.topics,
                rtt_ms: outcome.rtt_ms,
                neighbours,
                at: unix_now(),
            };
            if out.send(visit).await.is_err() {
                running.abort_all();
                break;
            }
        }
        summary.discovered = queued.len();
        summary
    }
}

impl Visit {
    fn unreached(record: NodeRecord, why: &str) -> Self {
        Visit {
            record,
            reached: false,
            probes: Vec::new(),
            status: None,
            topics: Vec::new(),
            rtt_ms: None,
            neighbours: Vec::new(),
            at: unix_now(),
        }
        .with_error(why)
    }

    fn with_error(mut self, why: &str) -> Self {
        let at = self.at;
        self.probes = self
            .record
            .addresses()
            .iter()
            .map(|a| Probe {
                transport: transport_name(a.transport).to_owned(),
                address: a.to_string(),
                ok: false,
                rtt_ms: None,
                error: Some(why.to_owned()),
                at,
            })
            .collect();
        self
    }
}

fn keep_newest(records: &mut HashMap<NodeId, NodeRecord>, record: NodeRecord) {
    match records.get(&record.node_id()) {
        Some(old) if old.sequence() >= record.sequence() => {}
        _ => {
            records.insert(record.node_id(), record);
        }
    }
}

/// What one visit learned, before the crawl applies its bounds.
struct Outcome {
    reached: bool,
    probes: Vec<Probe>,
    status: Option<Status>,
    topics: Vec<String>,
    rtt_ms: Option<f64>,
    newer_record: Option<NodeRecord>,
    found: Vec<NodeRecord>,
    requests: usize,
}

/// The API's name of a transport.
pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Quic => "quic",
        Transport::Tcp => "tcp",
        Transport::Tor => "tor",
        Transport::I2p => "i2p",
        _ => "other",
    }
}

/// The API's name of a capability.
pub fn capability_name(c: meshara_core::Capability) -> &'static str {
    use meshara_core::Capability as C;
    match c {
        C::Relay => "relay",
        C::BridgeTor => "bridge_tor",
        C::BridgeI2p => "bridge_i2p",
        C::Authority => "authority",
        C::StoreForward => "store_forward",
        C::UpdateMirror => "update_mirror",
        _ => "other",
    }
}

/// Transports the explorer's node can dial itself.
fn dialable(t: Transport) -> bool {
    matches!(t, Transport::Quic | Transport::Tcp)
}

async fn visit(node: &Node, config: &CrawlSection, record: NodeRecord) -> Outcome {
    let id = record.node_id();
    let connect_timeout = Duration::from_secs(config.connect_timeout_secs);
    let mut outcome = Outcome {
        reached: false,
        probes: Vec::new(),
        status: None,
        topics: Vec::new(),
        rtt_ms: None,
        newer_record: None,
        found: Vec::new(),
        requests: 0,
    };
    for address in record.addresses() {
        let mut probe = Probe {
            transport: transport_name(address.transport).to_owned(),
            address: address.to_string(),
            ok: false,
            rtt_ms: None,
            error: None,
            at: unix_now(),
        };
        if !dialable(address.transport) {
            probe.error = Some(format!(
                "not probed: the explorer does not dial {}",
                transport_name(address.transport)
            ));
            outcome.probes.push(probe);
            continue;
        }
        // A record can name any address; the explorer must not be pointed at hosts on its
        // operator's internal network (the node's own dial policy, `[node] dial_private`).
        if !node.may_dial_learned(address) {
            probe.error = Some(
                "not probed: a non-public address, and the explorer is not on that network".into(),
            );
            outcome.probes.push(probe);
            continue;
        }
        let addr = PeerAddr {
            node: Some(id),
            address: address.clone(),
        };
        let started = Instant::now();
        match tokio::time::timeout(connect_timeout, node.connect(&addr)).await {
            Ok(Ok(_)) => {
                probe.ok = true;
                probe.rtt_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                outcome.reached = true;
            }
            // The node refused one more connection from us (its per-NodeId cap: we already
            // hold connections to it, e.g. the release follower's). It can only count us
            // after the handshake, in which it proved its key: it is up.
            Ok(Err(meshara_core::TransportError::Closed(reason)))
                if reason.contains("too many connections from this NodeId") =>
            {
                probe.ok = true;
                probe.rtt_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                probe.error = Some(format!("handshake completed, then: {reason}"));
                outcome.reached = true;
            }
            Ok(Err(e)) => probe.error = Some(e.to_string()),
            Err(_) => probe.error = Some(format!("no handshake within {connect_timeout:?}")),
        }
        outcome.probes.push(probe);
    }
    if !outcome.reached {
        return outcome;
    }
    // The record the node sent on the connection may be newer than the one we crawled from.
    if let Some(current) = node.record_of(&id) {
        if current.sequence() > record.sequence() {
            outcome.newer_record = Some(current);
        }
    }
    let unlisted = outcome
        .newer_record
        .as_ref()
        .unwrap_or(&record)
        .is_unlisted();
    if !unlisted {
        match status(node, id, connect_timeout).await {
            Ok((status, topics, rtt, newer)) => {
                outcome.status = Some(status);
                outcome.topics = topics;
                outcome.rtt_ms = Some(rtt);
                if let Some(newer) = newer {
                    let current = outcome.newer_record.as_ref().unwrap_or(&record).sequence();
                    if newer.sequence() > current {
                        outcome.newer_record = Some(newer);
                    }
                }
            }
            Err(e) => tracing::debug!(node = %id, error = %e, "no status"),
        }
    }
    let (found, requests) = routing_table(node, id, config.max_requests_per_node).await;
    outcome.found = found;
    outcome.requests = requests;
    outcome
}

/// Why a status answer was not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The query failed.
    #[error(transparent)]
    Query(#[from] meshara_core::QueryError),
    /// The answer is larger than [`MAX_STATUS_BYTES`].
    #[error("status answer of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The answer is not a valid `NodeStatus`.
    #[error("malformed status: {0}")]
    Malformed(String),
}

type StatusAnswer = (Status, Vec<String>, f64, Option<NodeRecord>);

/// Asks `id` for its status; checks the answer's size and fields and the record in it.
async fn status(node: &Node, id: NodeId, timeout: Duration) -> Result<StatusAnswer, StatusError> {
    let started = Instant::now();
    let body = node
        .query(id, "meshara.status", Bytes::new(), timeout)
        .await?;
    let rtt = started.elapsed().as_secs_f64() * 1e3;
    decode_status(&body, id, unix_now()).map(|(s, t, r)| (s, t, rtt, r))
}

/// Decodes and checks a `meshara.status` answer from `id`: size, wire limits, and the record
/// it carries (verified, and `id`'s own).
pub fn decode_status(
    body: &[u8],
    id: NodeId,
    now: u64,
) -> Result<(Status, Vec<String>, Option<NodeRecord>), StatusError> {
    if body.len() > MAX_STATUS_BYTES {
        return Err(StatusError::TooLarge(body.len()));
    }
    let s = proto::NodeStatus::decode(body).map_err(|e| StatusError::Malformed(e.to_string()))?;
    wire::validate_status(&s).map_err(|e| StatusError::Malformed(e.to_string()))?;
    let record = match &s.record {
        Some(signed) => {
            let r = NodeRecord::verify(signed, now)
                .map_err(|e| StatusError::Malformed(format!("record: {e}")))?;
            if r.node_id() != id {
                return Err(StatusError::Malformed(format!(
                    "record of {} in the status of {id}",
                    r.node_id()
                )));
            }
            Some(r)
        }
        None => None,
    };
    let status = Status {
        uptime_s: s.uptime_s,
        peer_count: s.peer_count,
        messages_in: s.messages_in,
        messages_out: s.messages_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
    };
    Ok((status, s.topics, record))
}

/// Enumerates `id`'s routing table: one `FindNode` per k-bucket, for a target that shares
/// exactly `cpl` leading bits with `id` (the answer is that bucket, when it holds up to k
/// entries, topped up from deeper ones), until an answer is not full (the whole table fitted)
/// or [`STALE_ANSWERS`] answers in a row brought nothing new, within `max_requests`.
async fn routing_table(node: &Node, id: NodeId, max_requests: usize) -> (Vec<NodeRecord>, usize) {
    let mut found: HashMap<NodeId, NodeRecord> = HashMap::new();
    let mut stale = 0;
    let mut failures = 0;
    let mut requests = 0;
    for cpl in 0..max_requests.min(256) {
        requests += 1;
        let Some(records) = node.find_node(id, target_in_bucket(&id, cpl)).await else {
            failures += 1;
            if failures >= 2 {
                break;
            }
            continue;
        };
        let full = records.len() >= FULL_ANSWER;
        let mut new = 0;
        for r in records {
            if r.node_id() == id {
                continue;
            }
            match found.get(&r.node_id()) {
                Some(old) if old.sequence() >= r.sequence() => {}
                Some(_) => {
                    found.insert(r.node_id(), r);
                }
                None => {
                    new += 1;
                    found.insert(r.node_id(), r);
                }
            }
        }
        if !full {
            break;
        }
        if new == 0 {
            stale += 1;
            if stale >= STALE_ANSWERS {
                break;
            }
        } else {
            stale = 0;
        }
    }
    (found.into_values().collect(), requests)
}

/// A random id sharing exactly `cpl` leading bits with `id` (bit `cpl` flipped, the rest
/// random): its closest entries in `id`'s table are those of k-bucket `cpl`.
pub fn target_in_bucket(id: &NodeId, cpl: usize) -> [u8; 32] {
    let mut bytes = *id.as_bytes();
    let mut random = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut random);
    let cpl = cpl.min(255);
    let byte = cpl / 8;
    let bit = 7 - (cpl % 8);
    // Keep bits before `cpl`, flip `cpl`, randomise after.
    let keep_mask: u8 = if bit == 7 {
        0
    } else {
        !((1u8 << (bit + 1)) - 1)
    };
    let flipped = (bytes[byte] & (1 << bit)) ^ (1 << bit);
    let low_mask: u8 = (1u8 << bit).wrapping_sub(1);
    bytes[byte] = (bytes[byte] & keep_mask) | flipped | (random[byte] & low_mask);
    bytes[byte + 1..].copy_from_slice(&random[byte + 1..]);
    bytes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshara_core::{Identity, NodeRecordBuilder};

    fn cpl(a: &[u8; 32], b: &[u8; 32]) -> usize {
        for i in 0..32 {
            let x = a[i] ^ b[i];
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        256
    }

    #[test]
    fn targets_fall_in_the_asked_bucket() {
        let id = Identity::generate().node_id();
        for bucket in 0..256 {
            for _ in 0..4 {
                let t = target_in_bucket(&id, bucket);
                assert_eq!(cpl(id.as_bytes(), &t), bucket, "bucket {bucket}");
            }
        }
    }

    #[test]
    fn hostile_status_answers_are_refused() {
        let now = 1_800_000_000;
        let alice = Identity::generate();
        let mallory = Identity::generate();
        let mallory_record = NodeRecordBuilder::new(&mallory, 1).sign(now).unwrap();
        // Garbage.
        assert!(matches!(
            decode_status(&[0xff; 40], alice.node_id(), now),
            Err(StatusError::Malformed(_))
        ));
        // Oversized.
        assert!(matches!(
            decode_status(&vec![0; MAX_STATUS_BYTES + 1], alice.node_id(), now),
            Err(StatusError::TooLarge(_))
        ));
        // Someone else's record.
        let s = proto::NodeStatus {
            record: Some(mallory_record.signed().clone()),
            ..Default::default()
        };
        let e = decode_status(&s.encode_to_vec(), alice.node_id(), now).unwrap_err();
        assert!(e.to_string().contains("in the status of"), "{e}");
        // A forged signature.
        let mut signed = mallory_record.signed().clone();
        let mut sig = signed.signature.to_vec();
        sig[3] ^= 1;
        signed.signature = sig.into();
        let s = proto::NodeStatus {
            record: Some(signed),
            ..Default::default()
        };
        assert!(decode_status(&s.encode_to_vec(), mallory.node_id(), now).is_err());
        // Too many topics.
        let s = proto::NodeStatus {
            topics: (0..65).map(|i| format!("t{i}")).collect(),
            ..Default::default()
        };
        assert!(decode_status(&s.encode_to_vec(), alice.node_id(), now).is_err());
        // A good one.
        let s = proto::NodeStatus {
            record: Some(mallory_record.signed().clone()),
            uptime_s: 5,
            topics: vec!["chat".into()],
            ..Default::default()
        };
        let (status, topics, record) =
            decode_status(&s.encode_to_vec(), mallory.node_id(), now).unwrap();
        assert_eq!(status.uptime_s, 5);
        assert_eq!(topics, vec!["chat".to_owned()]);
        assert_eq!(record.unwrap().node_id(), mallory.node_id());
    }
}
