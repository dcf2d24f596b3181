//! A deterministic network simulator for the routing state machines (feature `test-utils`).
//!
//! One thread, one seeded RNG, virtual time: the same [`Scenario`] and seed always give the
//! same [`Report`], so a failing seed is a test case. Each simulated node runs the real
//! [`kad::RoutingTable`]/[`kad::Lookup`] and [`gossip::Topic`](super::gossip::Topic); broadcasts are really signed
//! with Ed25519 and really verified (each distinct message once, then remembered, since the
//! result cannot differ between nodes).
//!
//! **Network model.** Each pair of nodes has a fixed latency, drawn uniformly from the
//! scenario's range, and every message adds a small random jitter.
//! Meshara runs over QUIC, whose streams retransmit, so `loss` is modelled as what it costs a
//! reliable stream: a lost datagram delays the message by a retransmission timeout (three
//! latencies) rather than dropping it. A message to a failed node, or across a partition, is
//! lost, and the sender's connection reports the failure after `failure_detection_ms` (QUIC's
//! idle timeout); the failed node's neighbours learn the same way. Sizes are protobuf sizes of
//! the real messages, computed from their fields (records at their measured signed size).
//!
//! Run it with `meshara sim <scenario.toml>`; the scenarios checked in under
//! `meshara-core/simulations/` run as tests.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use super::gossip::{GossipConfig, Message, MsgId, Output, Penalty, Topic};
use super::kad::{self, KadConfig, Key, Lookup, LookupStep, RoutingTable};
use crate::identity::Identity;

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario file is not valid TOML or has unknown or missing fields.
    #[error("scenario: {0}")]
    Parse(String),
    /// The scenario's values are out of range.
    #[error("scenario: {0}")]
    Invalid(String),
}

/// A simulation scenario, usually read from a TOML file ([`Scenario::from_toml`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Scenario {
    /// Name, used in reports.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// RNG seed.
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: u32,
    /// Bootstrap nodes (the first ones), which every joining node knows.
    #[serde(default = "defaults::bootstrap")]
    pub bootstrap: u32,
    /// Nodes join one after another, spread evenly over this time.
    #[serde(default = "defaults::join_over_ms")]
    pub join_over_ms: u64,
    /// Quiet time after the last join before broadcasts and lookups start.
    #[serde(default = "defaults::settle_ms")]
    pub settle_ms: u64,
    /// One-way latency.
    #[serde(default)]
    pub latency: LatencySpec,
    /// Datagram loss probability (costs a retransmission delay; see the module docs).
    #[serde(default)]
    pub loss: f64,
    /// How long until a failed connection is noticed.
    #[serde(default = "defaults::failure_detection_ms")]
    pub failure_detection_ms: u64,
    /// Probability per node and gossip shuffle period of re-joining the overlay through a
    /// random DHT entry (heals partitions; see docs/architecture/routing.md).
    #[serde(default = "defaults::rejoin_probability")]
    pub rejoin_probability: f64,
    /// Gossip shuffle period.
    #[serde(default = "defaults::shuffle_ms")]
    pub shuffle_ms: u64,
    /// Broadcast workload.
    #[serde(default)]
    pub broadcast: BroadcastSpec,
    /// DHT workload.
    #[serde(default)]
    pub dht: DhtSpec,
    /// Mass failures.
    #[serde(default)]
    pub fail: Vec<FailSpec>,
    /// Continuous churn.
    #[serde(default)]
    pub churn: Option<ChurnSpec>,
    /// Partitions that heal.
    #[serde(default)]
    pub partition: Vec<PartitionSpec>,
    /// Hostile nodes.
    #[serde(default)]
    pub hostile: HostileSpec,
    /// Targets the run must meet (checked by [`Report::check`]).
    #[serde(default)]
    pub expect: Expectations,
}

mod defaults {
    pub(super) fn bootstrap() -> u32 {
        3
    }
    pub(super) fn join_over_ms() -> u64 {
        10_000
    }
    pub(super) fn settle_ms() -> u64 {
        5_000
    }
    pub(super) fn failure_detection_ms() -> u64 {
        1_000
    }
    pub(super) fn rejoin_probability() -> f64 {
        0.02
    }
    pub(super) fn shuffle_ms() -> u64 {
        10_000
    }
    pub(super) fn min_ms() -> u64 {
        10
    }
    pub(super) fn max_ms() -> u64 {
        80
    }
    pub(super) fn jitter_ms() -> u64 {
        5
    }
    pub(super) fn count() -> u32 {
        20
    }
    pub(super) fn interval_ms() -> u64 {
        250
    }
    pub(super) fn payload_bytes() -> usize {
        256
    }
    pub(super) fn authors() -> u32 {
        1
    }
    pub(super) fn warmup() -> u32 {
        3
    }
    pub(super) fn lookups() -> u32 {
        200
    }
    pub(super) fn lookup_interval_ms() -> u64 {
        20
    }
    pub(super) fn invalid_per_sec() -> f64 {
        5.0
    }
}

/// Latency model: each pair of nodes has a fixed one-way latency, spread uniformly between
/// `min_ms` and `max_ms`, and each message adds a random jitter of up to `jitter_ms`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LatencySpec {
    /// Fastest one-way delay.
    #[serde(default = "defaults::min_ms")]
    pub min_ms: u64,
    /// Slowest one-way delay.
    #[serde(default = "defaults::max_ms")]
    pub max_ms: u64,
    /// Extra random delay per message (reorders messages on a link).
    #[serde(default = "defaults::jitter_ms")]
    pub jitter_ms: u64,
}

impl Default for LatencySpec {
    fn default() -> Self {
        Self {
            min_ms: defaults::min_ms(),
            max_ms: defaults::max_ms(),
            jitter_ms: defaults::jitter_ms(),
        }
    }
}

/// Broadcast workload.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BroadcastSpec {
    /// Broadcasts sent.
    #[serde(default = "defaults::count")]
    pub count: u32,
    /// Time between broadcasts.
    #[serde(default = "defaults::interval_ms")]
    pub interval_ms: u64,
    /// When the first is sent (default: after the joins and the settle time).
    #[serde(default)]
    pub start_ms: Option<u64>,
    /// Content size.
    #[serde(default = "defaults::payload_bytes")]
    pub payload_bytes: usize,
    /// Distinct authors, taking turns.
    #[serde(default = "defaults::authors")]
    pub authors: u32,
    /// Broadcasts left out of the steady-state RMR (the tree forms during these).
    #[serde(default = "defaults::warmup")]
    pub warmup: u32,
}

impl Default for BroadcastSpec {
    fn default() -> Self {
        Self {
            count: defaults::count(),
            interval_ms: defaults::interval_ms(),
            start_ms: None,
            payload_bytes: defaults::payload_bytes(),
            authors: defaults::authors(),
            warmup: defaults::warmup(),
        }
    }
}

/// DHT workload: lookups of random live nodes from random live nodes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DhtSpec {
    /// Lookups started.
    #[serde(default = "defaults::lookups")]
    pub lookups: u32,
    /// Time between lookups.
    #[serde(default = "defaults::lookup_interval_ms")]
    pub interval_ms: u64,
    /// When the first starts (default: with the broadcasts).
    #[serde(default)]
    pub start_ms: Option<u64>,
}

impl Default for DhtSpec {
    fn default() -> Self {
        Self {
            lookups: defaults::lookups(),
            interval_ms: defaults::lookup_interval_ms(),
            start_ms: None,
        }
    }
}

/// A mass failure: `fraction` of the live nodes stop at once.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FailSpec {
    /// When.
    pub at_ms: u64,
    /// Share of live nodes that fail.
    pub fraction: f64,
}

/// Continuous churn: a random node fails and a fresh one joins, `per_sec` times a second.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ChurnSpec {
    /// Start.
    pub from_ms: u64,
    /// End.
    pub to_ms: u64,
    /// Replacements per second.
    pub per_sec: f64,
}

/// A partition: `fraction` of the nodes are cut off from the rest until `heal_ms`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PartitionSpec {
    /// When it starts.
    pub at_ms: u64,
    /// When it heals.
    pub heal_ms: u64,
    /// Share of nodes on the far side.
    pub fraction: f64,
}

/// Hostile nodes: they join normally, forward nothing, and send forged broadcasts.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HostileSpec {
    /// Share of nodes that are hostile.
    #[serde(default)]
    pub fraction: f64,
    /// Forged broadcasts each sends per second to each neighbour.
    #[serde(default = "defaults::invalid_per_sec")]
    pub invalid_per_sec: f64,
}

/// Targets a scenario must meet.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Expectations {
    /// Minimum delivery ratio over all broadcasts.
    pub delivery_ratio_min: Option<f64>,
    /// Maximum steady-state relative message redundancy.
    pub rmr_steady_max: Option<f64>,
    /// Minimum share of DHT lookups that find their target.
    pub lookup_success_min: Option<f64>,
    /// Maximum 99th-percentile lookup hops.
    pub lookup_hops_p99_max: Option<u32>,
    /// Minimum number of bans of hostile peers.
    pub bans_min: Option<u64>,
}

impl Scenario {
    /// Parses and validates a TOML scenario.
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        let s: Scenario = toml::from_str(text).map_err(|e| SimError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// The same scenario with `nodes` nodes (bootstrap nodes capped to fit).
    pub fn with_nodes(mut self, nodes: u32) -> Result<Self, SimError> {
        self.nodes = nodes;
        self.bootstrap = self.bootstrap.min(nodes);
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Invalid(m.to_owned()));
        if self.nodes < 2 || self.nodes > 2_000_000 {
            return bad("nodes must be 2..=2000000");
        }
        if self.bootstrap == 0 || self.bootstrap > self.nodes {
            return bad("bootstrap must be 1..=nodes");
        }
        if self.latency.min_ms > self.latency.max_ms {
            return bad("latency.min_ms exceeds latency.max_ms");
        }
        if !(0.0..1.0).contains(&self.loss) {
            return bad("loss must be in 0..1");
        }
        if !(0.0..=1.0).contains(&self.rejoin_probability) {
            return bad("rejoin_probability must be in 0..=1");
        }
        if !(0.0..1.0).contains(&self.hostile.fraction) {
            return bad("hostile.fraction must be in 0..1");
        }
        if self.broadcast.authors == 0 || self.broadcast.payload_bytes > 65536 {
            return bad("broadcast.authors must be >= 1 and payload_bytes <= 65536");
        }
        if self.shuffle_ms == 0 {
            return bad("shuffle_ms must be > 0");
        }
        for f in &self.fail {
            if !(0.0..1.0).contains(&f.fraction) {
                return bad("fail.fraction must be in 0..1");
            }
        }
        for p in &self.partition {
            if !(0.0..1.0).contains(&p.fraction) || p.heal_ms < p.at_ms {
                return bad("partition: fraction in 0..1 and heal_ms >= at_ms");
            }
        }
        if let Some(c) = &self.churn {
            if c.per_sec <= 0.0 || c.per_sec > 10_000.0 || c.to_ms < c.from_ms {
                return bad("churn: per_sec in (0, 10000] and to_ms >= from_ms");
            }
        }
        Ok(())
    }

    fn workload_start(&self) -> u64 {
        self.join_over_ms + self.settle_ms
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Nodes created (initial and churn).
    pub nodes: u32,
    /// Honest nodes alive at the end.
    pub live_at_end: u32,
    /// Broadcasts sent.
    pub broadcasts: u32,
    /// Deliveries / targets over all broadcasts (targets: honest nodes alive at the end that
    /// joined at least one second before the broadcast).
    pub delivery_ratio: f64,
    /// The worst single broadcast's ratio.
    pub delivery_ratio_min: f64,
    /// Broadcasts that reached every target.
    pub complete_broadcasts: u32,
    /// Broadcasts left out because their author failed before the message could have crossed
    /// one link (within `latency.max_ms` of sending).
    pub lost_with_author: u32,
    /// Relative message redundancy over all broadcasts: full copies received per delivery, minus 1.
    pub rmr: f64,
    /// The same, after the warm-up broadcasts.
    pub rmr_steady: f64,
    /// Mean of each broadcast's last-delivery hop.
    pub last_delivery_hop_mean: f64,
    /// Largest last-delivery hop.
    pub last_delivery_hop_max: u32,
    /// Delivery time percentiles (ms from broadcast).
    pub delivery_ms_p50: f64,
    /// 99th percentile.
    pub delivery_ms_p99: f64,
    /// DHT lookups run.
    pub lookups: u32,
    /// Share that found their target.
    pub lookup_success: f64,
    /// Mean hops at which the target was found.
    pub lookup_hops_mean: f64,
    /// 99th-percentile hops.
    pub lookup_hops_p99: u32,
    /// Largest hops.
    pub lookup_hops_max: u32,
    /// Mean requests per lookup.
    pub lookup_queries_mean: f64,
    /// Mean bytes sent per node over the run.
    pub bytes_sent_per_node: f64,
    /// Mean bytes of broadcast payload messages (full copies) sent per node.
    pub gossip_bytes_per_node: f64,
    /// Resident memory per node (process RSS growth over the run / nodes), where readable.
    pub memory_per_node_bytes: Option<u64>,
    /// Hostile peers banned (counted per banning node).
    pub bans: u64,
    /// Forged broadcasts rejected.
    pub invalid_rejected: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time simulated.
    pub virtual_ms: u64,
    /// Wall-clock time of the run.
    pub wall_ms: u64,
    /// Cumulative share of all deliveries by time since broadcast: `(ms, share)` points.
    pub delivery_cdf: Vec<(u64, f64)>,
}

impl Report {
    /// The targets of `expect` that this run missed, one line each.
    pub fn check(&self, expect: &Expectations) -> Vec<String> {
        let mut missed = Vec::new();
        if let Some(min) = expect.delivery_ratio_min {
            if self.delivery_ratio < min {
                missed.push(format!("delivery ratio {:.5} < {min}", self.delivery_ratio));
            }
        }
        if let Some(max) = expect.rmr_steady_max {
            if self.rmr_steady > max {
                missed.push(format!("steady RMR {:.3} > {max}", self.rmr_steady));
            }
        }
        if let Some(min) = expect.lookup_success_min {
            if self.lookup_success < min {
                missed.push(format!("lookup success {:.4} < {min}", self.lookup_success));
            }
        }
        if let Some(max) = expect.lookup_hops_p99_max {
            if self.lookup_hops_p99 > max {
                missed.push(format!("lookup hops p99 {} > {max}", self.lookup_hops_p99));
            }
        }
        if let Some(min) = expect.bans_min {
            if self.bans < min {
                missed.push(format!("bans {} < {min}", self.bans));
            }
        }
        missed
    }

    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        let mem = self.memory_per_node_bytes.map_or("n/a".to_owned(), |m| {
            format!("{:.1} KiB", m as f64 / 1024.0)
        });
        format!(
            "scenario {} (seed {}): {} nodes, {} live at the end\n\
             broadcast: {} sent ({} left out: author failed at once), delivery {:.5} (worst {:.5}, {} complete), RMR {:.3} (steady {:.3}), \
             last hop mean {:.1} max {}, delivery p50 {:.0} ms p99 {:.0} ms\n\
             dht: {} lookups, success {:.4}, hops mean {:.2} p99 {} max {}, {:.1} requests each\n\
             cost: {:.1} KiB sent per node ({:.1} KiB broadcast payload), memory {mem} per node\n\
             hostile: {} bans, {} forged broadcasts rejected\n\
             run: {} events, {:.1} s virtual, {:.2} s wall",
            self.scenario,
            self.seed,
            self.nodes,
            self.live_at_end,
            self.broadcasts,
            self.lost_with_author,
            self.delivery_ratio,
            self.delivery_ratio_min,
            self.complete_broadcasts,
            self.rmr,
            self.rmr_steady,
            self.last_delivery_hop_mean,
            self.last_delivery_hop_max,
            self.delivery_ms_p50,
            self.delivery_ms_p99,
            self.lookups,
            self.lookup_success,
            self.lookup_hops_mean,
            self.lookup_hops_p99,
            self.lookup_hops_max,
            self.lookup_queries_mean,
            self.bytes_sent_per_node / 1024.0,
            self.gossip_bytes_per_node / 1024.0,
            self.bans,
            self.invalid_rejected,
            self.events,
            self.virtual_ms as f64 / 1000.0,
            self.wall_ms as f64 / 1000.0,
        )
    }

    /// An SVG plot of the delivery CDF (share of deliveries by time since broadcast).
    pub fn svg(&self) -> String {
        let (w, h, left, bottom, top, right) = (640.0, 360.0, 60.0, 40.0, 30.0, 20.0);
        let max_ms = self.delivery_cdf.last().map_or(1, |p| p.0).max(1) as f64;
        let x = |ms: f64| left + (ms / max_ms) * (w - left - right);
        let y = |share: f64| h - bottom - share * (h - bottom - top);
        let mut points = String::new();
        for (ms, share) in &self.delivery_cdf {
            points.push_str(&format!("{:.1},{:.1} ", x(*ms as f64), y(*share)));
        }
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"18\">{}: deliveries by time since broadcast \
             ({} nodes, delivery {:.4}, RMR {:.2})</text>\n",
            xml_escape(&self.scenario),
            self.nodes,
            self.delivery_ratio,
            self.rmr_steady
        );
        // Axes and grid.
        for i in 0..=4 {
            let share = f64::from(i) / 4.0;
            svg.push_str(&format!(
                "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>\n",
                w - right,
                y(share),
                y(share),
                left - 6.0,
                y(share) + 4.0,
                share * 100.0
            ));
            let ms = max_ms * f64::from(i) / 4.0;
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0} ms</text>\n",
                x(ms),
                h - bottom + 16.0,
                ms
            ));
        }
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{}\"/>\n</svg>\n",
            points.trim_end()
        ));
        svg
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Wire {
    Gossip(Message<u32>),
    FindNode {
        request: u64,
        target: Key,
    },
    Found {
        request: u64,
        peers: Vec<(Key, u32)>,
    },
}

#[derive(Debug)]
enum Ev {
    Deliver { to: u32, from: u32, wire: Wire },
    Wake { node: u32 },
    LookupWake { node: u32, lookup: u64 },
    Lost { node: u32, peer: u32 },
    Join { node: u32 },
    Broadcast { index: u32 },
    Lookup { index: u32 },
    Fail { fraction: f64 },
    Churn,
    Rejoin,
    PartitionStart { index: usize },
    PartitionHeal,
    Forge { node: u32 },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

enum Purpose {
    Join,
    Measure { index: u32 },
}

struct Running {
    lookup: Lookup<u32>,
    purpose: Purpose,
}

struct SimNode {
    key: Key,
    group: u64,
    topic: Topic<u32>,
    table: RoutingTable<u32>,
    alive: bool,
    hostile: bool,
    joined_at: Duration,
    failed_at: Duration,
    wake: Option<Instant>,
    lookups: HashMap<u64, Running>,
    side: bool,
}

struct BroadcastTrack {
    sent_at: Duration,
    receptions: u64,
    delivered: Vec<(u32, Duration, u32)>,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    rng: ChaCha8Rng,
    base: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    gossip: GossipConfig,
    kad: KadConfig,
    authors: HashMap<u32, (Identity, u64)>,
    broadcast_ids: HashMap<MsgId, u32>,
    tracks: Vec<BroadcastTrack>,
    valid: HashMap<MsgId, Bytes>,
    invalid: HashSet<MsgId>,
    lost_pending: HashSet<(u32, u32)>,
    next_lookup: u64,
    lookup_results: Vec<Option<kad::LookupResult<u32>>>,
    partitioned: bool,
    record_len: u64,
    bytes_sent: u64,
    gossip_bytes: u64,
    bans: u64,
    invalid_rejected: u64,
    events: u64,
    forged: u64,
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn varint_len(v: u64) -> u64 {
    u64::from((64 - v.max(1).leading_zeros()).div_ceil(7))
}

/// A length-delimited protobuf field of `len` bytes.
fn field(len: u64) -> u64 {
    1 + varint_len(len) + len
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario) -> Self {
        let gossip = GossipConfig {
            shuffle_interval: Duration::from_millis(scenario.shuffle_ms),
            ..GossipConfig::default()
        };
        // A signed record with one QUIC address, as nodes gossip them.
        let record_len = crate::record::NodeRecordBuilder::new(&Identity::generate(), 1)
            .address(crate::record::Transport::Quic, "203.0.113.10", 4433)
            .sign(1_800_000_000)
            .map(|r| r.signed().encoded_len() as u64)
            .unwrap_or(200);
        Self {
            scenario,
            rng: ChaCha8Rng::seed_from_u64(scenario.seed),
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            gossip,
            kad: KadConfig::default(),
            authors: HashMap::new(),
            broadcast_ids: HashMap::new(),
            tracks: Vec::new(),
            valid: HashMap::new(),
            invalid: HashSet::new(),
            lost_pending: HashSet::new(),
            next_lookup: 0,
            lookup_results: Vec::new(),
            partitioned: false,
            record_len,
            bytes_sent: 0,
            gossip_bytes: 0,
            bans: 0,
            invalid_rejected: 0,
            events: 0,
            forged: 0,
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn random(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn at(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn after(&mut self, delay: Duration, ev: Ev) {
        let at = self.now + delay;
        self.at(at, ev);
    }

    /// The link's latency: fixed per pair of nodes (drawn from the scenario's range by a hash
    /// of the pair), plus up to `jitter_ms`, plus a retransmission timeout per lost datagram.
    fn latency(&mut self, a: u32, b: u32) -> Duration {
        let l = &self.scenario.latency;
        let (lo, hi) = (u64::from(a.min(b)), u64::from(a.max(b)));
        let pair = splitmix64(self.scenario.seed ^ (lo << 32 | hi));
        let ms = l.min_ms + pair % (l.max_ms - l.min_ms + 1);
        let jitter = l.jitter_ms;
        let mut d = Duration::from_millis(ms + self.random(jitter + 1));
        // Each lost datagram costs a retransmission timeout on the reliable stream.
        while self.chance(self.scenario.loss) {
            d += Duration::from_millis(3 * ms.max(1));
        }
        d
    }

    fn new_node(&mut self, hostile: bool) -> u32 {
        let index = self.nodes.len() as u32;
        let mut seed = [0u8; 40];
        seed[..8].copy_from_slice(&self.scenario.seed.to_le_bytes());
        seed[8..12].copy_from_slice(&index.to_le_bytes());
        let key = *blake3::hash(&seed).as_bytes();
        // Random /24s; hostile nodes share a handful of subnets, as a Sybil operator would.
        let group = if hostile {
            self.random(4)
        } else {
            self.rng.next_u64()
        };
        let now = self.instant();
        let topic_seed = self.rng.next_u64();
        self.nodes.push(SimNode {
            key,
            group,
            topic: Topic::new(index, self.gossip.clone(), topic_seed, now),
            table: RoutingTable::new(key, self.kad.clone()),
            alive: false,
            hostile,
            joined_at: Duration::MAX,
            failed_at: Duration::MAX,
            wake: None,
            lookups: HashMap::new(),
            side: false,
        });
        index
    }

    fn wire_len(&self, wire: &Wire) -> u64 {
        let r = self.record_len;
        // Envelope framing and the topic: 4-byte frame header, kind, topic of ~16 bytes.
        let base = 4 + 2 + 18;
        base + match wire {
            Wire::Gossip(m) => match m {
                Message::Join => field(r),
                Message::ForwardJoin { .. } => field(r) + 2,
                Message::Neighbor { .. } | Message::Disconnect { .. } | Message::Prune => 2,
                Message::Shuffle { peers, .. } => 34 + 2 + peers.len() as u64 * field(r),
                Message::ShuffleReply { peers } => peers.len() as u64 * field(r),
                Message::Gossip { payload, .. } => field(payload.len() as u64),
                Message::IHave { ids } => ids.len() as u64 * field(32) + 3,
                Message::Graft { id, .. } => id.map_or(0, |_| field(32)) + 3,
            },
            Wire::FindNode { .. } => 9 + field(32),
            Wire::Found { peers, .. } => 9 + peers.len() as u64 * field(r),
        }
    }

    fn connected(&self, a: u32, b: u32) -> bool {
        let (x, y) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        x.alive && y.alive && (!self.partitioned || x.side == y.side)
    }

    fn send(&mut self, from: u32, to: u32, wire: Wire) {
        let len = self.wire_len(&wire);
        self.bytes_sent += len;
        if let Wire::Gossip(Message::Gossip { .. }) = &wire {
            self.gossip_bytes += len;
        }
        if !self.connected(from, to) {
            // Gossip runs on connections: the sender notices the failure. DHT requests just
            // time out in the lookup.
            if matches!(wire, Wire::Gossip(_))
                && self.nodes[from as usize].alive
                && self.lost_pending.insert((from, to))
            {
                let d = Duration::from_millis(self.scenario.failure_detection_ms);
                self.after(
                    d,
                    Ev::Lost {
                        node: from,
                        peer: to,
                    },
                );
            }
            return;
        }
        let delay = self.latency(from, to);
        self.after(delay, Ev::Deliver { to, from, wire });
    }

    fn exec(&mut self, node: u32, out: Vec<Output<u32>>) {
        let hostile = self.nodes[node as usize].hostile;
        for o in out {
            match o {
                Output::Send { to, message } => {
                    // Hostile nodes keep their place in the overlay but forward nothing.
                    if hostile && matches!(message, Message::Gossip { .. } | Message::IHave { .. })
                    {
                        continue;
                    }
                    self.send(node, to, Wire::Gossip(message));
                }
                Output::Deliver { id, round, .. } => {
                    if let Some(&b) = self.broadcast_ids.get(&id) {
                        let now = self.now;
                        self.tracks[b as usize].delivered.push((node, now, round));
                    }
                }
                Output::Banned { .. } => self.bans += 1,
                Output::Isolated => self.rejoin(node),
                _ => {}
            }
        }
        self.schedule_wake(node);
    }

    fn schedule_wake(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        let next = n.topic.poll_timeout();
        if let Some(at) = next {
            if n.wake.is_none_or(|w| at < w) {
                n.wake = Some(at);
                let due = at.saturating_duration_since(self.base);
                self.at(due, Ev::Wake { node });
            }
        }
    }

    fn validate(&mut self, id: &MsgId, payload: &Bytes) -> bool {
        if let Some(p) = self.valid.get(id) {
            return p == payload;
        }
        if self.invalid.contains(id) {
            return false;
        }
        let ok = crate::proto::SignedBroadcast::decode(payload.clone())
            .ok()
            .and_then(|s| crate::message::verify_broadcast(&s).ok())
            .is_some_and(|v| v.id.0 == *id);
        if ok {
            self.valid.insert(*id, payload.clone());
        } else {
            self.invalid.insert(*id);
        }
        ok
    }

    fn start_lookup(&mut self, node: u32, target: Key, purpose: Purpose) {
        let mut lookup = Lookup::new(&self.nodes[node as usize].table, target);
        if matches!(purpose, Purpose::Measure { .. }) {
            lookup = lookup.stop_when_found();
        }
        self.next_lookup += 1;
        let id = self.next_lookup;
        self.nodes[node as usize]
            .lookups
            .insert(id, Running { lookup, purpose });
        self.drive_lookup(node, id);
    }

    fn drive_lookup(&mut self, node: u32, id: u64) {
        let now = self.instant();
        loop {
            let Some(run) = self.nodes[node as usize].lookups.get_mut(&id) else {
                return;
            };
            let target = *run.lookup.target();
            match run.lookup.poll(now) {
                LookupStep::Query(peer) => self.send(
                    node,
                    peer,
                    Wire::FindNode {
                        request: id,
                        target,
                    },
                ),
                LookupStep::Wait(deadline) => {
                    let due = deadline.saturating_duration_since(self.base);
                    self.at(due, Ev::LookupWake { node, lookup: id });
                    return;
                }
                _ => {
                    if let Some(run) = self.nodes[node as usize].lookups.remove(&id) {
                        if let Purpose::Measure { index } = run.purpose {
                            self.lookup_results[index as usize] = Some(run.lookup.result());
                        }
                    }
                    return;
                }
            }
        }
    }

    fn random_live(&mut self, honest_only: bool) -> Option<u32> {
        let n = self.nodes.len() as u64;
        for _ in 0..10_000 {
            let i = self.random(n) as u32;
            let node = &self.nodes[i as usize];
            if node.alive && !(honest_only && node.hostile) {
                return Some(i);
            }
        }
        None
    }

    fn kill(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        if !n.alive {
            return;
        }
        n.alive = false;
        n.failed_at = self.now;
        n.lookups.clear();
        let neighbours: Vec<u32> = n.topic.active().to_vec();
        let d = Duration::from_millis(self.scenario.failure_detection_ms);
        for peer in neighbours {
            if self.lost_pending.insert((peer, node)) {
                self.after(
                    d,
                    Ev::Lost {
                        node: peer,
                        peer: node,
                    },
                );
            }
        }
    }

    fn join(&mut self, node: u32) {
        let now = self.instant();
        let bootstrap = self.scenario.bootstrap.min(self.nodes.len() as u32);
        let n = &mut self.nodes[node as usize];
        n.alive = true;
        n.joined_at = self.now;
        for b in 0..bootstrap {
            if b != node {
                let (key, group) = (self.nodes[b as usize].key, self.nodes[b as usize].group);
                self.nodes[node as usize].table.insert(key, b, group, now);
            }
        }
        let contact = if node < bootstrap {
            if node == 0 {
                None
            } else {
                Some(self.random(u64::from(node)) as u32)
            }
        } else {
            Some(self.random(u64::from(bootstrap)) as u32)
        };
        if let Some(contact) = contact {
            let mut out = Vec::new();
            self.nodes[node as usize].topic.join(contact, now, &mut out);
            self.exec(node, out);
        }
        let key = self.nodes[node as usize].key;
        self.start_lookup(node, key, Purpose::Join);
        if self.nodes[node as usize].hostile && self.scenario.hostile.invalid_per_sec > 0.0 {
            let d = Duration::from_secs_f64(1.0 / self.scenario.hostile.invalid_per_sec);
            self.after(d, Ev::Forge { node });
        }
    }

    /// Joins the overlay again through a random DHT entry.
    fn rejoin(&mut self, node: u32) {
        let now = self.instant();
        let entries: Vec<u32> = self.nodes[node as usize]
            .table
            .iter()
            .map(|(_, p)| p)
            .collect();
        if entries.is_empty() {
            return;
        }
        let contact = entries[self.random(entries.len() as u64) as usize];
        let mut out = Vec::new();
        self.nodes[node as usize].topic.join(contact, now, &mut out);
        self.exec(node, out);
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.instant();
        match ev {
            Ev::Deliver { to, from, wire } => {
                if !self.connected(from, to) {
                    return;
                }
                let (from_key, from_group) = (
                    self.nodes[from as usize].key,
                    self.nodes[from as usize].group,
                );
                self.nodes[to as usize]
                    .table
                    .insert(from_key, from, from_group, now);
                match wire {
                    Wire::Gossip(message) => {
                        let mut out = Vec::new();
                        if let Message::Gossip { id, payload, .. } = &message {
                            if let Some(&b) = self.broadcast_ids.get(id) {
                                self.tracks[b as usize].receptions += 1;
                            }
                            if !self.nodes[to as usize].topic.has_seen(id)
                                && !self.validate(id, payload)
                            {
                                self.invalid_rejected += 1;
                                self.nodes[to as usize].topic.penalize(
                                    from,
                                    Penalty::Invalid,
                                    now,
                                    &mut out,
                                );
                                self.exec(to, out);
                                return;
                            }
                        }
                        self.nodes[to as usize]
                            .topic
                            .handle_message(from, message, now, &mut out);
                        self.exec(to, out);
                    }
                    Wire::FindNode { request, target } => {
                        let peers = self.nodes[to as usize].table.closest(&target, self.kad.k);
                        self.send(to, from, Wire::Found { request, peers });
                    }
                    Wire::Found { request, peers } => {
                        for &(key, peer) in &peers {
                            let group = self.nodes[peer as usize].group;
                            self.nodes[to as usize].table.insert(key, peer, group, now);
                        }
                        if let Some(run) = self.nodes[to as usize].lookups.get_mut(&request) {
                            run.lookup.on_response(&from_key, peers);
                            self.drive_lookup(to, request);
                        }
                    }
                }
            }
            Ev::Wake { node } => {
                let n = &mut self.nodes[node as usize];
                if n.wake != Some(now) {
                    return;
                }
                n.wake = None;
                if !n.alive {
                    return;
                }
                let mut out = Vec::new();
                n.topic.handle_timeout(now, &mut out);
                self.exec(node, out);
            }
            Ev::LookupWake { node, lookup } => {
                let n = &mut self.nodes[node as usize];
                let Some(run) = n.lookups.get_mut(&lookup) else {
                    return;
                };
                for key in run.lookup.expire(now) {
                    n.table.failed(&key);
                }
                self.drive_lookup(node, lookup);
            }
            Ev::Lost { node, peer } => {
                self.lost_pending.remove(&(node, peer));
                if !self.nodes[node as usize].alive || self.connected(node, peer) {
                    return;
                }
                let mut out = Vec::new();
                self.nodes[node as usize]
                    .topic
                    .handle_connection_failed(peer, now, &mut out);
                self.exec(node, out);
            }
            Ev::Join { node } => self.join(node),
            Ev::Broadcast { index } => self.broadcast(index),
            Ev::Lookup { index } => {
                let (Some(from), Some(target)) = (self.random_live(true), self.random_live(true))
                else {
                    return;
                };
                let key = self.nodes[target as usize].key;
                self.start_lookup(from, key, Purpose::Measure { index });
            }
            Ev::Fail { fraction } => {
                let live: Vec<u32> = (0..self.nodes.len() as u32)
                    .filter(|&i| self.nodes[i as usize].alive)
                    .collect();
                let count = (live.len() as f64 * fraction).round() as usize;
                let mut pool = live;
                for _ in 0..count {
                    let i = self.random(pool.len() as u64) as usize;
                    let victim = pool.swap_remove(i);
                    self.kill(victim);
                }
            }
            Ev::Churn => {
                if let Some(victim) = self.random_live(false) {
                    self.kill(victim);
                }
                let hostile = self.chance(self.scenario.hostile.fraction);
                let fresh = self.new_node(hostile);
                self.join(fresh);
            }
            Ev::Rejoin => {
                let live: Vec<u32> = (0..self.nodes.len() as u32)
                    .filter(|&i| self.nodes[i as usize].alive)
                    .collect();
                let count = (live.len() as f64 * self.scenario.rejoin_probability).round();
                for _ in 0..count as usize {
                    let node = live[self.random(live.len() as u64) as usize];
                    self.rejoin(node);
                }
                let d = Duration::from_millis(self.scenario.shuffle_ms);
                if self.now + d < self.end() {
                    self.after(d, Ev::Rejoin);
                }
            }
            Ev::PartitionStart { index } => {
                let fraction = self.scenario.partition[index].fraction;
                for i in 0..self.nodes.len() {
                    let side = self.chance(fraction);
                    self.nodes[i].side = side;
                }
                self.partitioned = true;
                // Connections across the cut fail on both ends.
                let d = Duration::from_millis(self.scenario.failure_detection_ms);
                for i in 0..self.nodes.len() as u32 {
                    if !self.nodes[i as usize].alive {
                        continue;
                    }
                    let cut: Vec<u32> = self.nodes[i as usize]
                        .topic
                        .active()
                        .iter()
                        .copied()
                        .filter(|&p| !self.connected(i, p))
                        .collect();
                    for p in cut {
                        if self.lost_pending.insert((i, p)) {
                            self.after(d, Ev::Lost { node: i, peer: p });
                        }
                    }
                }
            }
            Ev::PartitionHeal => self.partitioned = false,
            Ev::Forge { node } => {
                if !self.nodes[node as usize].alive {
                    return;
                }
                self.forged += 1;
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&self.forged.to_le_bytes());
                id[8..12].copy_from_slice(&node.to_le_bytes());
                id[31] = 0xff;
                let payload = Bytes::from(vec![0x0a; 64]);
                let peers = self.nodes[node as usize].topic.active().to_vec();
                for to in peers {
                    self.send(
                        node,
                        to,
                        Wire::Gossip(Message::Gossip {
                            id,
                            payload: payload.clone(),
                            round: 0,
                        }),
                    );
                }
                let d = Duration::from_secs_f64(1.0 / self.scenario.hostile.invalid_per_sec);
                if self.now + d < self.end() {
                    self.after(d, Ev::Forge { node });
                }
            }
        }
    }

    fn broadcast(&mut self, index: u32) {
        let spec = &self.scenario.broadcast;
        let slot = index % spec.authors;
        // Authors are honest nodes picked once per slot; a failed author is replaced.
        let author = match self.authors_slot(slot) {
            Some(a) => a,
            None => return,
        };
        let content = vec![index as u8; spec.payload_bytes];
        let Some((identity, seq)) = self.authors.get_mut(&author) else {
            return;
        };
        *seq += 1;
        let created = 1_800_000_000_000 + self.now.as_millis() as u64;
        let Ok((id, signed)) = crate::message::sign_broadcast(
            identity,
            "sim",
            "application/octet-stream",
            Bytes::from(content),
            *seq,
            created,
        ) else {
            return;
        };
        let payload = Bytes::from(signed.encode_to_vec());
        self.broadcast_ids.insert(id.0, index);
        self.tracks.push(BroadcastTrack {
            sent_at: self.now,
            receptions: 0,
            delivered: vec![(author, self.now, 0)],
        });
        let now = self.instant();
        let mut out = Vec::new();
        self.nodes[author as usize]
            .topic
            .broadcast(id.0, payload, now, &mut out);
        self.exec(author, out);
    }

    fn authors_slot(&mut self, slot: u32) -> Option<u32> {
        let current: Vec<u32> = self
            .authors
            .keys()
            .copied()
            .filter(|a| self.nodes[*a as usize].alive)
            .collect();
        let mut sorted = current;
        sorted.sort_unstable();
        if let Some(&a) = sorted.get(slot as usize) {
            return Some(a);
        }
        let fresh = (0..100).find_map(|_| {
            self.random_live(true)
                .filter(|a| !self.authors.contains_key(a))
        })?;
        let identity = Identity::generate_with_rng(&mut self.rng);
        self.authors.insert(fresh, (identity, 0));
        Some(fresh)
    }

    fn end(&self) -> Duration {
        let s = self.scenario;
        let start = s.workload_start();
        let b_start = s.broadcast.start_ms.unwrap_or(start);
        let d_start = s.dht.start_ms.unwrap_or(start);
        let mut end = b_start + u64::from(s.broadcast.count) * s.broadcast.interval_ms;
        end = end.max(d_start + u64::from(s.dht.lookups) * s.dht.interval_ms);
        for f in &s.fail {
            end = end.max(f.at_ms);
        }
        for p in &s.partition {
            end = end.max(p.heal_ms);
        }
        if let Some(c) = &s.churn {
            end = end.max(c.to_ms);
        }
        // Time to drain: grafts and lookups finish well within this.
        Duration::from_millis(end + 10_000)
    }

    fn run(mut self) -> (Report, Topology) {
        let started = std::time::Instant::now();
        let rss_start = rss_bytes();
        let s = self.scenario;
        let hostile_count = (f64::from(s.nodes) * s.hostile.fraction).round() as u32;
        for i in 0..s.nodes {
            // Bootstrap nodes are honest; hostile ones are spread among the rest.
            let hostile = i >= s.bootstrap && (i - s.bootstrap) < hostile_count;
            self.new_node(hostile);
        }
        for i in 0..s.nodes {
            let at = Duration::from_millis(s.join_over_ms * u64::from(i) / u64::from(s.nodes));
            self.at(at, Ev::Join { node: i });
        }
        let start = s.workload_start();
        let b_start = s.broadcast.start_ms.unwrap_or(start);
        for i in 0..s.broadcast.count {
            let at = Duration::from_millis(b_start + u64::from(i) * s.broadcast.interval_ms);
            self.at(at, Ev::Broadcast { index: i });
        }
        let d_start = s.dht.start_ms.unwrap_or(start);
        self.lookup_results = vec![None; s.dht.lookups as usize];
        for i in 0..s.dht.lookups {
            let at = Duration::from_millis(d_start + u64::from(i) * s.dht.interval_ms);
            self.at(at, Ev::Lookup { index: i });
        }
        for f in &s.fail {
            self.at(
                Duration::from_millis(f.at_ms),
                Ev::Fail {
                    fraction: f.fraction,
                },
            );
        }
        for (index, p) in s.partition.iter().enumerate() {
            self.at(Duration::from_millis(p.at_ms), Ev::PartitionStart { index });
            self.at(Duration::from_millis(p.heal_ms), Ev::PartitionHeal);
        }
        if let Some(c) = &s.churn {
            let step = 1000.0 / c.per_sec;
            let mut t = c.from_ms as f64;
            while t < c.to_ms as f64 {
                self.at(Duration::from_secs_f64(t / 1000.0), Ev::Churn);
                t += step;
            }
        }
        if s.rejoin_probability > 0.0 {
            self.at(Duration::from_millis(s.shuffle_ms), Ev::Rejoin);
        }
        let end = self.end();
        let mut peak_rss = rss_start;
        while let Some(next) = self.queue.pop() {
            if next.at > end {
                break;
            }
            self.now = next.at;
            self.events += 1;
            if self.events % (1 << 20) == 0 {
                peak_rss = peak_rss.max(rss_bytes());
            }
            self.handle(next.ev);
        }
        peak_rss = peak_rss.max(rss_bytes());
        let topology = self.topology();
        (self.report(started, rss_start, peak_rss, end), topology)
    }

    /// Every node's routing table at the end of the run.
    fn topology(&self) -> Topology {
        let index: HashMap<Key, u32> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.key, i as u32))
            .collect();
        Topology {
            scenario: self.scenario.name.clone(),
            seed: self.scenario.seed,
            nodes: self
                .nodes
                .iter()
                .map(|n| TopologyNode {
                    key: data_encoding::HEXLOWER.encode(&n.key),
                    alive: n.alive,
                    hostile: n.hostile,
                    table: n
                        .table
                        .iter()
                        .filter_map(|(k, _)| index.get(&k).copied())
                        .collect(),
                })
                .collect(),
        }
    }

    fn report(
        self,
        started: std::time::Instant,
        rss_start: Option<u64>,
        peak_rss: Option<u64>,
        end: Duration,
    ) -> Report {
        let live: Vec<&SimNode> = self
            .nodes
            .iter()
            .filter(|n| n.alive && !n.hostile)
            .collect();
        let mut delivered_total = 0u64;
        let mut targets_total = 0u64;
        let mut worst = 1.0f64;
        let mut complete = 0u32;
        let mut receptions = 0u64;
        let mut deliveries = 0u64;
        let mut receptions_steady = 0u64;
        let mut deliveries_steady = 0u64;
        let mut last_hops = Vec::new();
        let mut times: Vec<u64> = Vec::new();
        let first_hop = Duration::from_millis(self.scenario.latency.max_ms);
        let mut lost_with_author = 0u32;
        for (b, track) in self.tracks.iter().enumerate() {
            // An author that fails before its message can have crossed one link may never
            // have got it out; such broadcasts are reported apart.
            let author = &self.nodes[track.delivered[0].0 as usize];
            if author.failed_at.saturating_sub(track.sent_at) < first_hop {
                lost_with_author += 1;
                continue;
            }
            let got: HashSet<u32> = track.delivered.iter().map(|d| d.0).collect();
            let cutoff = track.sent_at.saturating_sub(Duration::from_secs(1));
            let targets: Vec<u32> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.alive && !n.hostile && n.joined_at <= cutoff)
                .map(|(i, _)| i as u32)
                .collect();
            let reached = targets.iter().filter(|t| got.contains(t)).count() as u64;
            let ratio = if targets.is_empty() {
                1.0
            } else {
                reached as f64 / targets.len() as f64
            };
            worst = worst.min(ratio);
            if reached == targets.len() as u64 {
                complete += 1;
            }
            delivered_total += reached;
            targets_total += targets.len() as u64;
            // Deliveries beyond the author's own.
            let d = track.delivered.len().saturating_sub(1) as u64;
            receptions += track.receptions;
            deliveries += d;
            if b as u32 >= self.scenario.broadcast.warmup {
                receptions_steady += track.receptions;
                deliveries_steady += d;
            }
            last_hops.push(track.delivered.iter().map(|d| d.2).max().unwrap_or(0));
            for (_, at, _) in track.delivered.iter().skip(1) {
                times.push(at.saturating_sub(track.sent_at).as_millis() as u64);
            }
        }
        let rmr = |r: u64, d: u64| {
            if d == 0 {
                0.0
            } else {
                r as f64 / d as f64 - 1.0
            }
        };
        times.sort_unstable();
        let pct = |v: &[u64], p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            v[((v.len() as f64 - 1.0) * p).round() as usize] as f64
        };
        let mut cdf = Vec::new();
        if let Some(&max) = times.last() {
            let steps = 100u64;
            for i in 0..=steps {
                let ms = max * i / steps;
                let count = times.partition_point(|&t| t <= ms);
                cdf.push((ms, count as f64 / times.len() as f64));
            }
        }
        let results: Vec<&kad::LookupResult<u32>> = self.lookup_results.iter().flatten().collect();
        let found: Vec<u64> = results
            .iter()
            .filter(|r| r.found)
            .map(|r| u64::from(r.hops.unwrap_or(0)))
            .collect();
        let mut hops = found.clone();
        hops.sort_unstable();
        let lookups = self.scenario.dht.lookups;
        let nodes = self.nodes.len() as u32;
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.scenario.seed,
            nodes,
            live_at_end: live.len() as u32,
            broadcasts: self.tracks.len() as u32,
            delivery_ratio: if targets_total == 0 {
                1.0
            } else {
                delivered_total as f64 / targets_total as f64
            },
            delivery_ratio_min: worst,
            complete_broadcasts: complete,
            lost_with_author,
            rmr: rmr(receptions, deliveries),
            rmr_steady: rmr(receptions_steady, deliveries_steady),
            last_delivery_hop_mean: if last_hops.is_empty() {
                0.0
            } else {
                last_hops.iter().map(|&h| f64::from(h)).sum::<f64>() / last_hops.len() as f64
            },
            last_delivery_hop_max: last_hops.iter().copied().max().unwrap_or(0),
            delivery_ms_p50: pct(&times, 0.5),
            delivery_ms_p99: pct(&times, 0.99),
            lookups,
            lookup_success: if lookups == 0 {
                1.0
            } else {
                found.len() as f64 / f64::from(lookups)
            },
            lookup_hops_mean: if found.is_empty() {
                0.0
            } else {
                found.iter().sum::<u64>() as f64 / found.len() as f64
            },
            lookup_hops_p99: pct(&hops, 0.99) as u32,
            lookup_hops_max: hops.last().copied().unwrap_or(0) as u32,
            lookup_queries_mean: if results.is_empty() {
                0.0
            } else {
                results.iter().map(|r| f64::from(r.queries)).sum::<f64>() / results.len() as f64
            },
            bytes_sent_per_node: self.bytes_sent as f64 / f64::from(nodes),
            gossip_bytes_per_node: self.gossip_bytes as f64 / f64::from(nodes),
            memory_per_node_bytes: match (rss_start, peak_rss) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) / u64::from(nodes)),
                _ => None,
            },
            bans: self.bans,
            invalid_rejected: self.invalid_rejected,
            events: self.events,
            virtual_ms: end.as_millis() as u64,
            wall_ms: started.elapsed().as_millis() as u64,
            delivery_cdf: cdf,
        }
    }
}

/// Runs `scenario` to the end and measures it.
pub fn run(scenario: &Scenario) -> Report {
    Sim::new(scenario).run().0
}

/// Like [`run`], and also returns the overlay at the end: every node's routing table
/// (`meshara sim --topology`, which `meshara-explorer import-sim` loads).
pub fn run_with_topology(scenario: &Scenario) -> (Report, Topology) {
    Sim::new(scenario).run()
}

/// The overlay a simulation ended with.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Topology {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Every node created, in creation order.
    pub nodes: Vec<TopologyNode>,
}

/// One simulated node.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TopologyNode {
    /// Its 32-byte key, hex.
    pub key: String,
    /// Alive at the end.
    pub alive: bool,
    /// One of the scenario's hostile nodes.
    pub hostile: bool,
    /// Its routing table: indexes into [`Topology::nodes`].
    pub table: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(extra: &str) -> Scenario {
        Scenario::from_toml(&format!(
            "name = \"t\"\nseed = 7\nnodes = 120\njoin_over_ms = 2000\nsettle_ms = 3000\n{extra}"
        ))
        .expect("scenario")
    }

    #[test]
    fn same_seed_same_report() {
        let s = small("[broadcast]\ncount = 5\n[dht]\nlookups = 20\n");
        let a = run(&s);
        let b = run(&s);
        assert_eq!(a.events, b.events);
        assert_eq!(a.delivery_cdf, b.delivery_cdf);
        assert_eq!(a.lookup_hops_mean, b.lookup_hops_mean);
        assert_eq!(a.delivery_ratio, 1.0, "{}", a.to_text());
        assert_eq!(a.lookup_success, 1.0, "{}", a.to_text());
        let svg = a.svg();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    }

    #[test]
    fn scenarios_are_validated() {
        assert!(matches!(
            Scenario::from_toml("name = \"x\"\nseed = 1\nnodes = 10\nbogus = 1\n"),
            Err(SimError::Parse(_))
        ));
        assert!(matches!(
            Scenario::from_toml("name = \"x\"\nseed = 1\nnodes = 10\nloss = 1.5\n"),
            Err(SimError::Invalid(_))
        ));
        assert!(matches!(
            Scenario::from_toml("name = \"x\"\nseed = 1\nnodes = 1\n"),
            Err(SimError::Invalid(_))
        ));
    }
}
