//! A Kademlia routing table and iterative lookups, sans-IO.
//!
//! Keys are 32 bytes (NodeIds) compared by XOR distance. The table keeps up to `k` entries per
//! bucket, least recently seen first, plus a replacement cache of the same size; an entry that
//! fails [`KadConfig::max_failures`] times in a row is evicted and the freshest replacement
//! takes its place. This keeps long-lived nodes (which Kademlia's measurements show are the
//! ones likely to stay) and cannot be flushed by a burst of new identities.
//!
//! **Poisoning resistance.** Entries come with a *group*: a hash of the peer's IP prefix (/24
//! for IPv4, /48 for IPv6). A bucket holds at most [`KadConfig::bucket_per_group`] entries of
//! one group and the whole table at most [`KadConfig::table_per_group`], so one operator with
//! one subnet cannot fill the buckets around a target with Sybils. The driver only inserts keys
//! it has verified (signed node records, or a peer proven by TLS), so an entry cannot name a key
//! its holder does not own.
//!
//! [`Lookup`] is the iterative node lookup: `alpha` queries in flight, closest unqueried
//! candidates first, finishing when the `k` closest candidates that did not fail have all
//! answered. It records how many hops away each candidate was learned, which the simulator
//! reports as lookup hops.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A 32-byte DHT key (a NodeId's bytes).
pub type Key = [u8; 32];

/// XOR distance between two keys, comparable as a big-endian number.
pub fn distance(a: &Key, b: &Key) -> Key {
    let mut d = [0u8; 32];
    for (i, out) in d.iter_mut().enumerate() {
        *out = a[i] ^ b[i];
    }
    d
}

/// Number of leading bits `a` and `b` share (256 when equal).
pub fn common_prefix(a: &Key, b: &Key) -> usize {
    for i in 0..32 {
        let x = a[i] ^ b[i];
        if x != 0 {
            return i * 8 + x.leading_zeros() as usize;
        }
    }
    256
}

/// The diversity group of an IP address: /24 for IPv4, /48 for IPv6, hashed to 8 bytes.
pub fn ip_group(ip: std::net::IpAddr) -> u64 {
    let mut bytes = [0u8; 7];
    match ip {
        std::net::IpAddr::V4(v4) => {
            bytes[0] = 4;
            bytes[1..4].copy_from_slice(&v4.octets()[..3]);
        }
        std::net::IpAddr::V6(v6) => {
            bytes[0] = 6;
            bytes[1..7].copy_from_slice(&v6.octets()[..6]);
        }
    }
    let h = blake3::hash(&bytes);
    let mut g = [0u8; 8];
    g.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(g)
}

/// Routing table and lookup parameters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KadConfig {
    /// Bucket size and the number of closest nodes a lookup converges on (20).
    pub k: usize,
    /// Lookup queries in flight at once (3).
    pub alpha: usize,
    /// How long a lookup waits for one answer before counting the peer as failed (2 s).
    pub request_timeout: Duration,
    /// Entries of one diversity group per bucket (2).
    pub bucket_per_group: usize,
    /// Entries of one diversity group in the whole table (16).
    pub table_per_group: usize,
    /// Consecutive failures before an entry is evicted (2).
    pub max_failures: u8,
}

impl Default for KadConfig {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            request_timeout: Duration::from_secs(2),
            bucket_per_group: 2,
            table_per_group: 16,
            max_failures: 2,
        }
    }
}

impl KadConfig {
    /// Sets `k`.
    pub fn with_k(mut self, k: usize) -> Self {
        self.k = k.max(1);
        self
    }

    /// Sets `alpha`.
    pub fn with_alpha(mut self, alpha: usize) -> Self {
        self.alpha = alpha.max(1);
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the per-bucket and per-table group caps.
    pub fn with_group_caps(mut self, per_bucket: usize, per_table: usize) -> Self {
        self.bucket_per_group = per_bucket.max(1);
        self.table_per_group = per_table.max(1);
        self
    }
}

#[derive(Debug, Clone)]
struct Entry<P> {
    key: Key,
    peer: P,
    group: u64,
    failures: u8,
    last_seen: Instant,
}

#[derive(Debug, Clone)]
struct Bucket<P> {
    /// Least recently seen first.
    entries: Vec<Entry<P>>,
    /// Candidates for when an entry is evicted, freshest last.
    replacements: Vec<Entry<P>>,
}

impl<P> Default for Bucket<P> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            replacements: Vec::new(),
        }
    }
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inserted {
    /// A new entry.
    Added,
    /// The entry was known; it is now the most recently seen.
    Refreshed,
    /// The bucket is full; the peer waits in the replacement cache.
    Pending,
    /// The key is our own.
    Local,
    /// Its diversity group already has its share of the bucket or the table.
    GroupFull,
}

/// A Kademlia routing table over peers of type `P` (a NodeId in the node, an index in the
/// simulator).
#[derive(Debug, Clone)]
pub struct RoutingTable<P> {
    local: Key,
    config: KadConfig,
    buckets: Vec<Bucket<P>>,
    groups: HashMap<u64, usize>,
    len: usize,
}

impl<P: Copy + Eq + Hash + Debug> RoutingTable<P> {
    /// An empty table for the node whose key is `local`.
    pub fn new(local: Key, config: KadConfig) -> Self {
        Self {
            local,
            config,
            buckets: Vec::new(),
            groups: HashMap::new(),
            len: 0,
        }
    }

    /// The local key.
    pub fn local(&self) -> &Key {
        &self.local
    }

    /// The configuration.
    pub fn config(&self) -> &KadConfig {
        &self.config
    }

    /// Number of entries (not counting replacements).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bucket_index(&self, key: &Key) -> Option<usize> {
        let cpl = common_prefix(&self.local, key);
        (cpl < 256).then_some(cpl)
    }

    /// Notes that `peer` (with `key`, in diversity `group`) is alive: a new entry if there is
    /// room, a refresh if known, else a place in the replacement cache.
    pub fn insert(&mut self, key: Key, peer: P, group: u64, now: Instant) -> Inserted {
        let Some(index) = self.bucket_index(&key) else {
            return Inserted::Local;
        };
        if self.buckets.len() <= index {
            self.buckets.resize_with(index + 1, Bucket::default);
        }
        let k = self.config.k;
        let bucket = &mut self.buckets[index];
        if let Some(pos) = bucket.entries.iter().position(|e| e.key == key) {
            let mut e = bucket.entries.remove(pos);
            e.failures = 0;
            e.last_seen = now;
            e.peer = peer;
            bucket.entries.push(e);
            return Inserted::Refreshed;
        }
        let in_bucket = bucket.entries.iter().filter(|e| e.group == group).count();
        let in_table = self.groups.get(&group).copied().unwrap_or(0);
        let entry = Entry {
            key,
            peer,
            group,
            failures: 0,
            last_seen: now,
        };
        if in_bucket >= self.config.bucket_per_group || in_table >= self.config.table_per_group {
            return Inserted::GroupFull;
        }
        if bucket.entries.len() < k {
            bucket.entries.push(entry);
            *self.groups.entry(group).or_insert(0) += 1;
            self.len += 1;
            return Inserted::Added;
        }
        bucket.replacements.retain(|e| e.key != key);
        if bucket.replacements.len() >= k {
            bucket.replacements.remove(0);
        }
        bucket.replacements.push(entry);
        Inserted::Pending
    }

    /// Notes that a request to `key` failed. After `max_failures` in a row the entry is evicted
    /// and the freshest replacement promoted; returns whether it was evicted.
    pub fn failed(&mut self, key: &Key) -> bool {
        let Some(index) = self.bucket_index(key) else {
            return false;
        };
        let max = self.config.max_failures;
        let Some(bucket) = self.buckets.get_mut(index) else {
            return false;
        };
        bucket.replacements.retain(|e| &e.key != key);
        let Some(pos) = bucket.entries.iter().position(|e| &e.key == key) else {
            return false;
        };
        bucket.entries[pos].failures = bucket.entries[pos].failures.saturating_add(1);
        if bucket.entries[pos].failures < max {
            return false;
        }
        self.remove(key);
        true
    }

    /// Removes `key` at once (a peer that misbehaved or said goodbye), promoting a replacement.
    pub fn remove(&mut self, key: &Key) -> bool {
        let Some(index) = self.bucket_index(key) else {
            return false;
        };
        let Some(bucket) = self.buckets.get_mut(index) else {
            return false;
        };
        bucket.replacements.retain(|e| &e.key != key);
        let Some(pos) = bucket.entries.iter().position(|e| &e.key == key) else {
            return false;
        };
        let gone = bucket.entries.remove(pos);
        self.len -= 1;
        if let Some(n) = self.groups.get_mut(&gone.group) {
            *n -= 1;
            if *n == 0 {
                self.groups.remove(&gone.group);
            }
        }
        // Promote the freshest replacement whose group still has room.
        while let Some(r) = self.buckets[index].replacements.pop() {
            let in_bucket = self.buckets[index]
                .entries
                .iter()
                .filter(|e| e.group == r.group)
                .count();
            let in_table = self.groups.get(&r.group).copied().unwrap_or(0);
            if in_bucket < self.config.bucket_per_group && in_table < self.config.table_per_group {
                *self.groups.entry(r.group).or_insert(0) += 1;
                self.buckets[index].entries.push(r);
                self.len += 1;
                break;
            }
        }
        true
    }

    /// Whether `key` is in the table.
    pub fn contains(&self, key: &Key) -> bool {
        self.bucket_index(key)
            .and_then(|i| self.buckets.get(i))
            .is_some_and(|b| b.entries.iter().any(|e| &e.key == key))
    }

    /// The peer stored under `key`.
    pub fn get(&self, key: &Key) -> Option<P> {
        self.bucket_index(key)
            .and_then(|i| self.buckets.get(i))
            .and_then(|b| b.entries.iter().find(|e| &e.key == key))
            .map(|e| e.peer)
    }

    /// Up to `n` entries closest to `target`, closest first.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<(Key, P)> {
        let mut all: Vec<(Key, &Entry<P>)> = self
            .buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .map(|e| (distance(&e.key, target), e))
            .collect();
        if all.len() > n && n > 0 {
            all.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
            all.truncate(n);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.truncate(n);
        all.into_iter().map(|(_, e)| (e.key, e.peer)).collect()
    }

    /// Every entry, bucket by bucket.
    pub fn iter(&self) -> impl Iterator<Item = (Key, P)> + '_ {
        self.buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .map(|e| (e.key, e.peer))
    }

    /// Indices of non-empty buckets whose least recently seen entry is older than `stale`
    /// (to refresh with a lookup of a random key in that bucket's range).
    pub fn stale_buckets(&self, now: Instant, stale: Duration) -> Vec<usize> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.entries
                    .iter()
                    .map(|e| e.last_seen)
                    .max()
                    .is_some_and(|t| now.saturating_duration_since(t) >= stale)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// A key sharing exactly `bucket` leading bits with the local key, the rest from `random`.
    pub fn key_in_bucket(&self, bucket: usize, random: Key) -> Key {
        let mut key = random;
        let bucket = bucket.min(255);
        for bit in 0..=bucket {
            let byte = bit / 8;
            let mask = 0x80u8 >> (bit % 8);
            let local_bit = self.local[byte] & mask;
            let want = if bit == bucket {
                local_bit ^ mask
            } else {
                local_bit
            };
            key[byte] = (key[byte] & !mask) | want;
        }
        key
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandidateState {
    Waiting,
    InFlight(Instant),
    Answered,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate<P> {
    key: Key,
    peer: P,
    state: CandidateState,
    hops: u32,
}

/// What a [`Lookup`] wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LookupStep<P> {
    /// Send a FindNode for the target to this peer.
    Query(P),
    /// Nothing to send until an answer arrives or the deadline passes.
    Wait(Instant),
    /// The lookup converged.
    Done,
}

/// The result of a finished lookup.
#[derive(Debug, Clone)]
pub struct LookupResult<P> {
    /// The `k` closest peers that answered, closest first.
    pub closest: Vec<(Key, P)>,
    /// Whether the target key itself was learned.
    pub found: bool,
    /// Hops from us at which the target was learned (0 if we knew it), when found.
    pub hops: Option<u32>,
    /// Requests sent.
    pub queries: u32,
    /// Requests that failed or timed out.
    pub failures: u32,
}

/// An iterative Kademlia lookup for `target`.
#[derive(Debug, Clone)]
pub struct Lookup<P> {
    target: Key,
    local: Key,
    k: usize,
    alpha: usize,
    timeout: Duration,
    /// By distance to the target.
    candidates: BTreeMap<Key, Candidate<P>>,
    found_hops: Option<u32>,
    queries: u32,
    failures: u32,
    stop_when_found: bool,
}

impl<P: Copy + Eq + Hash + Debug> Lookup<P> {
    /// Starts a lookup for `target` from the closest entries of `table`.
    pub fn new(table: &RoutingTable<P>, target: Key) -> Self {
        let config = table.config();
        let mut lookup = Self {
            target,
            local: *table.local(),
            k: config.k,
            alpha: config.alpha,
            timeout: config.request_timeout,
            candidates: BTreeMap::new(),
            found_hops: None,
            queries: 0,
            failures: 0,
            stop_when_found: false,
        };
        if target == lookup.local {
            lookup.found_hops = Some(0);
        }
        for (key, peer) in table.closest(&target, config.k) {
            lookup.add(key, peer, 0);
        }
        lookup
    }

    /// Finishes as soon as the target's own key is learned (a search for one node rather than
    /// a convergence on the closest set).
    pub fn stop_when_found(mut self) -> Self {
        self.stop_when_found = true;
        self
    }

    /// The target key.
    pub fn target(&self) -> &Key {
        &self.target
    }

    fn add(&mut self, key: Key, peer: P, hops: u32) {
        if key == self.local {
            return;
        }
        if key == self.target && self.found_hops.is_none() {
            self.found_hops = Some(hops);
        }
        let d = distance(&key, &self.target);
        self.candidates.entry(d).or_insert(Candidate {
            key,
            peer,
            state: CandidateState::Waiting,
            hops,
        });
        // Keep the candidate set bounded: far candidates beyond 4k are never queried.
        while self.candidates.len() > self.k * 4 {
            let Some((&last, c)) = self.candidates.iter().next_back() else {
                break;
            };
            if matches!(c.state, CandidateState::InFlight(_)) {
                break;
            }
            self.candidates.remove(&last);
        }
    }

    /// Feeds the answer of `from`: the peers it returned (already verified by the driver).
    pub fn on_response(&mut self, from: &Key, peers: impl IntoIterator<Item = (Key, P)>) {
        let d = distance(from, &self.target);
        let hops = match self.candidates.get_mut(&d) {
            Some(c) if matches!(c.state, CandidateState::InFlight(_)) => {
                c.state = CandidateState::Answered;
                c.hops + 1
            }
            // An answer we did not ask for (or one that arrived after its timeout and was
            // counted as failed): its peers are still useful, one hop further.
            Some(c) => {
                if c.state == CandidateState::Failed {
                    c.state = CandidateState::Answered;
                    self.failures = self.failures.saturating_sub(1);
                }
                c.hops + 1
            }
            None => return,
        };
        for (key, peer) in peers.into_iter().take(self.k * 2) {
            self.add(key, peer, hops);
        }
    }

    /// Feeds a failed request to `from` (connection refused, closed, or a bad answer).
    pub fn on_failure(&mut self, from: &Key) {
        let d = distance(from, &self.target);
        if let Some(c) = self.candidates.get_mut(&d) {
            if c.state != CandidateState::Failed && c.state != CandidateState::Answered {
                c.state = CandidateState::Failed;
                self.failures += 1;
            }
        }
    }

    /// Peers whose requests timed out at `now` (the driver should count them as failed in its
    /// routing table).
    pub fn expire(&mut self, now: Instant) -> Vec<Key> {
        let mut expired = Vec::new();
        for c in self.candidates.values_mut() {
            if let CandidateState::InFlight(since) = c.state {
                if now.saturating_duration_since(since) >= self.timeout {
                    c.state = CandidateState::Failed;
                    expired.push(c.key);
                }
            }
        }
        self.failures += expired.len() as u32;
        expired
    }

    /// The next thing to do at `now`. Call repeatedly until it returns `Wait` or `Done`.
    pub fn poll(&mut self, now: Instant) -> LookupStep<P> {
        if self.stop_when_found && self.found_hops.is_some() {
            return LookupStep::Done;
        }
        let mut in_flight = 0usize;
        let mut earliest: Option<Instant> = None;
        let mut next: Option<Key> = None;
        let mut settled = 0usize;
        for (d, c) in &self.candidates {
            if settled >= self.k {
                break;
            }
            match c.state {
                CandidateState::Answered => settled += 1,
                CandidateState::Failed => {}
                CandidateState::InFlight(since) => {
                    in_flight += 1;
                    settled += 1;
                    let deadline = since + self.timeout;
                    earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                }
                CandidateState::Waiting => {
                    if next.is_none() {
                        next = Some(*d);
                    }
                    settled += 1;
                }
            }
        }
        if let Some(d) = next {
            if in_flight < self.alpha {
                if let Some(c) = self.candidates.get_mut(&d) {
                    c.state = CandidateState::InFlight(now);
                    self.queries += 1;
                    return LookupStep::Query(c.peer);
                }
            }
        }
        match earliest {
            Some(deadline) => LookupStep::Wait(deadline),
            None => LookupStep::Done,
        }
    }

    /// The outcome so far (final once [`poll`](Self::poll) returned `Done`).
    pub fn result(&self) -> LookupResult<P> {
        LookupResult {
            closest: self
                .candidates
                .values()
                .filter(|c| c.state == CandidateState::Answered)
                .take(self.k)
                .map(|c| (c.key, c.peer))
                .collect(),
            found: self.found_hops.is_some(),
            hops: self.found_hops,
            queries: self.queries,
            failures: self.failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Key {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn buckets_keep_k_and_replacements_take_over_after_failures() {
        let now = Instant::now();
        let local = [0u8; 32];
        let mut t = RoutingTable::new(local, KadConfig::default().with_k(2));
        // Three keys in the same bucket (first bit set), distinct groups.
        let mut keys = Vec::new();
        for i in 0..3u8 {
            let mut k = [0u8; 32];
            k[0] = 0x80;
            k[31] = i;
            keys.push(k);
        }
        assert_eq!(t.insert(keys[0], 0u32, 1, now), Inserted::Added);
        assert_eq!(t.insert(keys[1], 1, 2, now), Inserted::Added);
        assert_eq!(t.insert(keys[2], 2, 3, now), Inserted::Pending);
        assert_eq!(t.insert(keys[0], 0, 1, now), Inserted::Refreshed);
        assert_eq!(t.len(), 2);
        assert!(!t.failed(&keys[1]));
        assert!(t.failed(&keys[1]));
        assert!(t.contains(&keys[2]));
        assert!(!t.contains(&keys[1]));
        assert_eq!(t.insert(local, 9, 9, now), Inserted::Local);
    }

    #[test]
    fn one_subnet_cannot_fill_a_bucket_or_the_table() {
        let now = Instant::now();
        let mut t = RoutingTable::new(key(0), KadConfig::default());
        let sybil_group = ip_group("203.0.113.7".parse().expect("ip"));
        let mut added = 0;
        for i in 1..2000 {
            if t.insert(key(i), i, sybil_group, now) == Inserted::Added {
                added += 1;
            }
        }
        assert_eq!(added, 16);
        // Honest peers from other subnets still get in.
        let honest = ip_group("198.51.100.1".parse().expect("ip"));
        assert_ne!(honest, sybil_group);
        assert_eq!(
            ip_group("203.0.113.200".parse().expect("ip")),
            sybil_group,
            "same /24"
        );
        assert_eq!(t.insert(key(5000), 5000, honest, now), Inserted::Added);
    }

    #[test]
    fn closest_is_sorted_by_xor_distance() {
        let now = Instant::now();
        let mut t = RoutingTable::new(key(0), KadConfig::default());
        for i in 1..500u32 {
            t.insert(key(i), i, u64::from(i), now);
        }
        let target = key(10_000);
        let got = t.closest(&target, 20);
        assert_eq!(got.len(), 20);
        let mut all: Vec<(Key, u32)> = t.iter().collect();
        all.sort_by_key(|(k, _)| distance(k, &target));
        assert_eq!(got, all[..20].to_vec());
    }

    #[test]
    fn key_in_bucket_lands_in_that_bucket() {
        let t: RoutingTable<u32> = RoutingTable::new(key(1), KadConfig::default());
        for b in [0, 1, 7, 8, 100, 255] {
            let k = t.key_in_bucket(b, key(77));
            assert_eq!(common_prefix(t.local(), &k), b);
        }
    }

    /// A full lookup over an in-memory network of 2000 tables, answering synchronously.
    #[test]
    fn lookups_find_every_node_in_a_static_network() {
        let now = Instant::now();
        let n = 2000u32;
        let config = KadConfig::default();
        let mut tables: Vec<RoutingTable<u32>> = (0..n)
            .map(|i| RoutingTable::new(key(i), config.clone()))
            .collect();
        // Each node knows 40 pseudo-random others.
        for i in 0..n {
            for j in 0..40u32 {
                let other = (i.wrapping_mul(7919).wrapping_add(j * 104_729)) % n;
                tables[i as usize].insert(key(other), other, u64::from(other), now);
            }
        }
        // Converge: each node looks itself up (the Kademlia join), inserting whoever answers.
        for i in 0..n {
            let mut lookup = Lookup::new(&tables[i as usize], key(i));
            while let LookupStep::Query(p) = lookup.poll(now) {
                let answer = tables[p as usize].closest(&key(i), 20);
                tables[p as usize].insert(key(i), i, u64::from(i), now);
                lookup.on_response(&key(p), answer.clone());
                for (k, q) in answer {
                    tables[i as usize].insert(k, q, u64::from(q), now);
                }
            }
        }
        let mut found = 0;
        let mut max_hops = 0;
        for t in 0..200u32 {
            let from = (t * 37) % n;
            let target = (t * 101 + 5) % n;
            let mut lookup = Lookup::new(&tables[from as usize], key(target)).stop_when_found();
            loop {
                match lookup.poll(now) {
                    LookupStep::Query(p) => {
                        let answer = tables[p as usize].closest(&key(target), 20);
                        lookup.on_response(&key(p), answer);
                    }
                    LookupStep::Wait(_) => unreachable!("answers are synchronous"),
                    LookupStep::Done => break,
                }
            }
            let r = lookup.result();
            if r.found {
                found += 1;
                max_hops = max_hops.max(r.hops.unwrap_or(0));
            }
        }
        assert_eq!(found, 200);
        assert!(max_hops <= 6, "hops {max_hops}");
    }

    #[test]
    fn lookups_route_around_failures_and_timeouts() {
        let start = Instant::now();
        let mut t = RoutingTable::new(key(0), KadConfig::default().with_alpha(2));
        for i in 1..=30u32 {
            t.insert(key(i), i, u64::from(i), start);
        }
        let target = key(999);
        let mut lookup = Lookup::new(&t, target);
        let LookupStep::Query(a) = lookup.poll(start) else {
            panic!("expected a query")
        };
        let LookupStep::Query(b) = lookup.poll(start) else {
            panic!("expected a query")
        };
        assert!(matches!(lookup.poll(start), LookupStep::Wait(_)));
        lookup.on_failure(&key(a));
        let later = start + Duration::from_secs(3);
        assert_eq!(lookup.expire(later), vec![key(b)]);
        let mut answered = 0;
        let now = later;
        loop {
            match lookup.poll(now) {
                LookupStep::Query(p) => {
                    lookup.on_response(&key(p), std::iter::empty());
                    answered += 1;
                }
                LookupStep::Wait(_) => unreachable!(),
                LookupStep::Done => break,
            }
        }
        let r = lookup.result();
        // The 20 seeds were all it knew; the two that failed are not among the closest.
        assert_eq!(r.failures, 2);
        assert_eq!(r.closest.len(), 18);
        assert_eq!(answered, 18);
        assert!(!r.closest.iter().any(|(k, _)| *k == key(a) || *k == key(b)));
        assert!(!r.found);
    }
}
