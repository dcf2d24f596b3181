//! Lookup traces: a Kademlia lookup run from the explorer's node with the protocol library's
//! own state machine ([`meshara_core::routing::kad::Lookup`]) over real `FindNode` requests,
//! with each request recorded in the round it belongs to, so the UI can draw what Kademlia
//! does.
//!
//! Round 1 queries the closest entries of the explorer's own routing table; a node learned
//! from an answer in round *r* is queried in round *r + 1*. The lookup converges on the k
//! closest nodes that answered (it does not stop at the target, so the last rounds show the
//! convergence too).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use meshara_core::routing::kad::{KadConfig, Lookup, LookupStep, RoutingTable};
use meshara_core::{Node, NodeId, NodeRecord};
use serde::Serialize;
use tokio::sync::mpsc;

/// Longest a trace may run.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One round of a lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: u32,
    /// Nodes asked in this round.
    pub queried: Vec<String>,
    /// Of those, the ones that answered.
    pub answered: Vec<String>,
    /// Of those, the ones that failed or timed out.
    pub failed: Vec<String>,
    /// Nodes first learned from this round's answers.
    pub learned: Vec<String>,
    /// Who told us: answering node → the nodes first learned from its answer.
    pub learned_from: BTreeMap<String, Vec<String>>,
}

/// A finished lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// The NodeId looked up.
    pub target: String,
    /// Whether the target's record was learned (or already known).
    pub found: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// Rounds in order.
    pub rounds: Vec<Round>,
    /// The closest nodes that answered, closest first.
    pub closest: Vec<String>,
}

/// Runs a lookup for `target` (any 32-byte DHT key; a NodeId's bytes to find that node) from
/// `node` and records its rounds.
pub async fn trace(node: &Node, target: [u8; 32]) -> Trace {
    let started = Instant::now();
    let config = KadConfig::default().with_group_caps(usize::MAX, usize::MAX);
    let mut table: RoutingTable<NodeId> = RoutingTable::new(*node.node_id().as_bytes(), config);
    let now = Instant::now();
    for id in node.closest_peers(&target, 20) {
        table.insert(*id.as_bytes(), id, 0, now);
    }
    let mut lookup = Lookup::new(&table, target);
    let mut round_of: HashMap<NodeId, u32> = table
        .closest(&target, usize::MAX)
        .into_iter()
        .map(|(_, id)| (id, 1))
        .collect();
    let mut rounds: BTreeMap<u32, Round> = BTreeMap::new();
    let mut found = round_of.keys().any(|id| id.as_bytes() == &target);
    let (tx, mut rx) = mpsc::unbounded_channel::<(NodeId, Option<Vec<NodeRecord>>)>();
    let give_up = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        match lookup.poll(Instant::now()) {
            LookupStep::Query(peer) => {
                let r = round_of.get(&peer).copied().unwrap_or(1);
                round(&mut rounds, r).queried.push(peer.to_string());
                let node = node.clone();
                let tx = tx.clone();
                tasks.spawn(async move {
                    let answer = node.find_node(peer, target).await;
                    let _ = tx.send((peer, answer));
                });
            }
            LookupStep::Wait(deadline) => {
                let until = tokio::time::Instant::from_std(deadline).min(give_up);
                tokio::select! {
                    answer = rx.recv() => match answer {
                        Some((peer, Some(records))) => {
                            let r = round_of.get(&peer).copied().unwrap_or(1);
                            round(&mut rounds, r).answered.push(peer.to_string());
                            for rec in &records {
                                let id = rec.node_id();
                                if id.as_bytes() == &target {
                                    found = true;
                                }
                                if id != node.node_id() && !round_of.contains_key(&id) {
                                    round_of.insert(id, r + 1);
                                    let this = round(&mut rounds, r);
                                    this.learned.push(id.to_string());
                                    this.learned_from
                                        .entry(peer.to_string())
                                        .or_default()
                                        .push(id.to_string());
                                }
                            }
                            lookup.on_response(
                                peer.as_bytes(),
                                records.iter().map(|rec| (*rec.node_id().as_bytes(), rec.node_id())),
                            );
                        }
                        Some((peer, None)) => {
                            let r = round_of.get(&peer).copied().unwrap_or(1);
                            round(&mut rounds, r).failed.push(peer.to_string());
                            lookup.on_failure(peer.as_bytes());
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(until) => {
                        if tokio::time::Instant::now() >= give_up {
                            break;
                        }
                        for key in lookup.expire(Instant::now()) {
                            if let Some((id, r)) = round_of.iter().find(|(id, _)| id.as_bytes() == &key) {
                                round(&mut rounds, *r).failed.push(id.to_string());
                            }
                        }
                    }
                }
            }
            _ => break,
        }
    }
    tasks.abort_all();
    let result = lookup.result();
    Trace {
        target: data_encoding::BASE32_NOPAD
            .encode(&target)
            .to_ascii_lowercase(),
        found: found || result.found,
        duration_ms: started.elapsed().as_millis() as u64,
        rounds: rounds.into_values().collect(),
        closest: result
            .closest
            .iter()
            .map(|(_, id)| id.to_string())
            .collect(),
    }
}

fn round(rounds: &mut BTreeMap<u32, Round>, r: u32) -> &mut Round {
    rounds.entry(r).or_insert_with(|| Round {
        round: r,
        ..Round::default()
    })
}
