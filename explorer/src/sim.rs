//! Loading a simulator topology (`meshara sim SCENARIO --topology FILE`) into the explorer,
//! so the UI can be shown and measured at 10,000 nodes and more without running them.
//!
//! Simulated nodes are stored with `source = 'sim'` and flagged as such everywhere the API
//! shows them (`simulated: true`); a new import replaces the previous one, and crawls never
//! touch them. Their ids are the simulator's 32-byte keys, which are not public keys.

use std::path::Path;

use data_encoding::{BASE32_NOPAD, HEXLOWER};
use serde::Deserialize;
use serde_json::json;

use crate::db::{Db, DbError, NodeRow};

/// Most nodes in an imported topology.
pub const MAX_NODES: usize = 1_000_000;
/// Most routing-table entries of one simulated node.
pub const MAX_TABLE: usize = 4096;
/// Largest topology file read.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// Why a topology was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The file.
    #[error("reading {0}: {1}")]
    Read(String, #[source] std::io::Error),
    /// Not the format `meshara sim --topology` writes.
    #[error("not a topology: {0}")]
    Format(String),
    /// Storing it.
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Debug, Deserialize)]
struct Topology {
    scenario: String,
    seed: u64,
    nodes: Vec<TopologyNode>,
}

#[derive(Debug, Deserialize)]
struct TopologyNode {
    key: String,
    alive: bool,
    #[serde(default)]
    hostile: bool,
    table: Vec<u32>,
}

fn lower_base32(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

/// Checks a topology and turns it into node rows (stamped `now`).
pub fn rows(json_text: &[u8], now: i64) -> Result<Vec<NodeRow>, SimError> {
    let t: Topology =
        serde_json::from_slice(json_text).map_err(|e| SimError::Format(e.to_string()))?;
    if t.nodes.len() > MAX_NODES {
        return Err(SimError::Format(format!(
            "{} nodes, at most {MAX_NODES}",
            t.nodes.len()
        )));
    }
    let mut ids = Vec::with_capacity(t.nodes.len());
    for (i, n) in t.nodes.iter().enumerate() {
        let key = HEXLOWER
            .decode(n.key.as_bytes())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| SimError::Format(format!("node {i}: key is not 64 hex digits")))?;
        ids.push(lower_base32(&key));
    }
    let agent = format!(
        "meshara-sim/{}",
        t.scenario.chars().take(40).collect::<String>()
    );
    let mut out = Vec::with_capacity(t.nodes.len());
    for (i, n) in t.nodes.iter().enumerate() {
        if n.table.len() > MAX_TABLE {
            return Err(SimError::Format(format!(
                "node {i}: {} table entries, at most {MAX_TABLE}",
                n.table.len()
            )));
        }
        let mut neighbours = Vec::with_capacity(n.table.len());
        for &j in &n.table {
            let id = ids.get(j as usize).ok_or_else(|| {
                SimError::Format(format!(
                    "node {i}: table names node {j}, which is not listed"
                ))
            })?;
            neighbours.push(id.clone());
        }
        let mut capabilities = Vec::new();
        if n.hostile {
            capabilities.push("hostile (simulated)");
        }
        out.push(NodeRow {
            id: ids[i].clone(),
            fingerprint: ids[i][..16].to_owned(),
            record: String::new(),
            sequence: 0,
            issued_at: now,
            expires_at: now,
            agent: agent.clone(),
            version: format!("sim seed {}", t.seed),
            capabilities: json!(capabilities).to_string(),
            transports: "[]".into(),
            addresses: "[]".into(),
            topics: "[]".into(),
            up: n.alive,
            first_seen: now,
            last_seen: now,
            last_checked: now,
            rtt_us: None,
            uptime_ppm: None,
            status: None,
            probes: "[]".into(),
            neighbour_count: neighbours.len() as i64,
            neighbours: json!(neighbours).to_string(),
            source: "sim".into(),
        });
    }
    Ok(out)
}

/// Reads `path` and replaces the stored simulated topology with it; returns the node count.
pub async fn import(db: &Db, path: &Path) -> Result<usize, SimError> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|e| SimError::Read(shown.clone(), e))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(SimError::Format(format!(
            "{size} bytes, at most {MAX_FILE_BYTES}"
        )));
    }
    let text = std::fs::read(path).map_err(|e| SimError::Read(shown, e))?;
    let now = crate::crawl::unix_now() as i64;
    let rows = rows(&text, now)?;
    db.replace_simulated(&rows).await?;
    let id = db.begin_crawl("sim", now).await?;
    let up = rows.iter().filter(|r| r.up).count() as i64;
    let edges: i64 = rows.iter().map(|r| r.neighbour_count).sum();
    db.finish_crawl(&crate::db::CrawlRow {
        id,
        source: "sim".into(),
        started_at: now,
        finished_at: Some(now),
        duration_ms: Some(0),
        discovered: rows.len() as i64,
        reached: up,
        failed: rows.len() as i64 - up,
        edges,
        listed: rows.len() as i64,
        up_count: up,
        joined: 0,
        left_count: 0,
        versions: "{}".into(),
    })
    .await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_topology_becomes_rows_and_bad_ones_are_named() {
        let k = |b: u8| HEXLOWER.encode(&[b; 32]);
        let good = json!({"scenario": "t", "seed": 1, "nodes": [
            {"key": k(1), "alive": true, "hostile": false, "table": [1]},
            {"key": k(2), "alive": false, "hostile": true, "table": [0]},
        ]});
        let r = rows(good.to_string().as_bytes(), 5).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].neighbour_count, 1);
        assert!(r[0].up && !r[1].up);
        assert_eq!(r[0].source, "sim");
        let dangling = json!({"scenario": "t", "seed": 1, "nodes": [
            {"key": k(1), "alive": true, "table": [7]},
        ]});
        let e = rows(dangling.to_string().as_bytes(), 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node 7"), "{e}");
        let short = json!({"scenario": "t", "seed": 1, "nodes": [{"key": "ab", "alive": true, "table": []}]});
        assert!(rows(short.to_string().as_bytes(), 5).is_err());
        assert!(rows(b"{not json", 5).is_err());
    }
}
