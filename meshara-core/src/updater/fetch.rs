//! Downloading content from any peers that hold it: every source is asked which chunks it
//! has, chunks are claimed so no two sources fetch the same one, each chunk is verified
//! before it is written, and sources that send bad data are dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::store::{Bitmap, Partial, StoreError};
use super::stream::{self, MAX_ANSWER, NOT_FOUND, PROTOCOL};
use super::{Shared, UpdateEvent, UpdaterError};
use crate::identity::NodeId;
use crate::proto::{self, update_message::Body as U};
use crate::update::Release;

/// Chunk requests outstanding on one source's stream.
const WINDOW: usize = 4;
/// A source idle for want of chunks asks again after this long.
const REFRESH: Duration = Duration::from_millis(250);
/// A source with nothing new is asked again after this long; one that failed after this
/// long doubled per consecutive failure, up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(2);
/// Longest pause for a source that keeps failing.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the set of sources is reconsidered.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The chunks of one download: held (in the partial) and claimed by a source.
struct Sched {
    partial: Arc<Partial>,
    claimed: Mutex<Bitmap>,
}

impl Sched {
    fn claimed(&self) -> MutexGuard<'_, Bitmap> {
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims a chunk the source has and nobody holds or fetches, starting the scan at
    /// `start` so sources spread over the content.
    fn claim(&self, source_has: &Bitmap, start: usize) -> Option<usize> {
        let have = self.partial.have();
        let mut claimed = self.claimed();
        let n = have.len();
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !have.get(i) && !claimed.get(i) && source_has.get(i))?;
        claimed.set(i);
        Some(i)
    }

    fn release(&self, index: usize) {
        self.claimed().clear(index);
    }

    fn complete(&self) -> bool {
        let have = self.partial.have();
        have.count() == have.len()
    }
}

/// Claimed chunks a source has asked for; given back if the source ends early.
struct Claims<'a> {
    sched: &'a Sched,
    indices: VecDeque<usize>,
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        for i in self.indices.drain(..) {
            self.sched.release(i);
        }
    }
}

/// Why a source stopped serving this download.
enum SourceEnd {
    /// It has nothing we can use for now: ask again later.
    Idle(&'static str),
    /// It failed (unreachable, an error status, a timeout): ask again after a backoff.
    Failed(String),
    /// It sent data that does not verify: never again for this download.
    Bad(String),
}

/// Downloads `release`'s content into the cache from `hints` and any connected peer,
/// resuming a partial download. Returns the path of the verified content.
pub(crate) async fn download(
    shared: &Arc<Shared>,
    release: &Release,
    hints: &[NodeId],
) -> Result<PathBuf, UpdaterError> {
    let hash = release.content_hash;
    let lock = shared.download_lock(hash);
    let _guard = lock.lock().await;
    if let Some(path) = shared.store.complete(&hash) {
        return Ok(path);
    }
    let store = shared.store.clone();
    let r = release.clone();
    let partial = blocking(move || store.open_partial(&r)).await?;
    let pinned = shared.pinned();
    let store = shared.store.clone();
    blocking(move || store.reserve(0, &pinned)).await?;

    let total = release.size;
    let resumed = partial.held_bytes();
    if resumed > 0 {
        tracing::info!(package = %release.package, resumed, total, "resuming a download");
    }
    shared.emit(progress(release, resumed, 0));
    let sched = Arc::new(Sched {
        partial: partial.clone(),
        claimed: Mutex::new(Bitmap::new(release.chunk_hashes.len())),
    });

    let mut sources: JoinSet<(NodeId, SourceEnd)> = JoinSet::new();
    let mut active: HashSet<NodeId> = HashSet::new();
    let mut retry_at: HashMap<NodeId, Instant> = HashMap::new();
    let mut failures: HashMap<NodeId, u32> = HashMap::new();
    let mut bad: HashSet<NodeId> = HashSet::new();
    let mut last_progress = (Instant::now(), resumed);
    let mut tick = tokio::time::interval(TICK);
    let me = shared.node.node_id();
    while !sched.complete() {
        let held = partial.held_bytes();
        if held != last_progress.1 {
            last_progress = (Instant::now(), held);
        } else if last_progress.0.elapsed() >= shared.config.stall_timeout {
            return Err(UpdaterError::Stalled {
                received: held,
                total,
            });
        }
        // Start sources: the hints first, then configured authorities, then connected peers.
        let now = Instant::now();
        let peers = if shared.config.peer_sources {
            shared.node.peers().into_iter().map(|p| p.node_id).collect()
        } else {
            Vec::new()
        };
        let hints = if shared.config.peer_sources {
            hints
        } else {
            &[]
        };
        let candidates = hints
            .iter()
            .copied()
            .chain(shared.config.authorities.iter().copied())
            .chain(peers);
        for peer in candidates {
            if active.len() >= shared.config.max_sources {
                break;
            }
            if peer == me
                || active.contains(&peer)
                || bad.contains(&peer)
                || retry_at.get(&peer).is_some_and(|t| *t > now)
            {
                continue;
            }
            active.insert(peer);
            let (shared, sched, release) = (shared.clone(), sched.clone(), release.clone());
            sources.spawn(async move {
                let end = fetch_from(&shared, &sched, &release, peer).await;
                (peer, end)
            });
        }
        tokio::select! {
            Some(done) = sources.join_next() => {
                if let Ok((peer, end)) = done {
                    active.remove(&peer);
                    match end {
                        SourceEnd::Idle(reason) => {
                            tracing::trace!(%peer, %reason, "update source idle");
                            failures.remove(&peer);
                            retry_at.insert(peer, Instant::now() + RETRY);
                        }
                        SourceEnd::Failed(reason) => {
                            let n = failures.entry(peer).or_insert(0);
                            *n = n.saturating_add(1);
                            let pause = RETRY.saturating_mul(1 << (*n - 1).min(8)).min(RETRY_MAX);
                            tracing::debug!(%peer, %reason, ?pause, "update source failed");
                            retry_at.insert(peer, Instant::now() + pause);
                        }
                        SourceEnd::Bad(reason) => {
                            tracing::warn!(%peer, %reason, "update source sent bad data");
                            bad.insert(peer);
                            shared.emit(UpdateEvent::PeerMisbehaved { peer, reason });
                        }
                    }
                }
            }
            _ = tick.tick() => {}
            () = shared.shutdown.cancelled() => return Err(UpdaterError::Stopped),
        }
    }
    sources.abort_all();
    let store = shared.store.clone();
    let p = partial.clone();
    let path = blocking(move || store.finish_partial(&p)).await?;
    shared.emit(UpdateEvent::Downloaded {
        release: release.clone(),
    });
    Ok(path)
}

fn progress(release: &Release, received: u64, sources: usize) -> UpdateEvent {
    UpdateEvent::Progress {
        package: release.package.clone(),
        channel: release.channel.clone(),
        sequence: release.sequence,
        received,
        total: release.size,
        sources,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, UpdaterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| UpdaterError::Stopped)?
        .map_err(UpdaterError::from)
}

/// Fetches chunks from one source until it has nothing more we need.
async fn fetch_from(shared: &Shared, sched: &Sched, release: &Release, peer: NodeId) -> SourceEnd {
    let mut stream = match shared.node.open_stream(peer, PROTOCOL).await {
        Ok(s) => s,
        Err(e) => return SourceEnd::Failed(e.to_string()),
    };
    let hash = bytes::Bytes::copy_from_slice(&release.content_hash);
    let chunks = release.chunk_hashes.len();
    // Spread the work: each (downloader, source) pair starts at its own place, so sources
    // serve different chunks to one downloader, and different downloaders take different
    // chunks from the same source (an authority) and then have something to trade.
    let start = {
        let mut h = blake3::Hasher::new();
        h.update(shared.node.node_id().as_bytes());
        h.update(peer.as_bytes());
        let d = h.finalize();
        let b = d.as_bytes();
        (u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) % chunks as u64)
            as usize
    };
    let mut claims = Claims {
        sched,
        indices: VecDeque::new(),
    };
    let mut idle_rounds = 0u32;
    loop {
        let ask = U::HaveRequest(proto::HaveRequest {
            content_hash: hash.clone(),
            chunk_size: release.chunk_size,
        });
        if let Err(e) = stream::write_msg(&mut stream, ask).await {
            return SourceEnd::Failed(e.to_string());
        }
        let mut source_has = match read(&mut stream, peer).await {
            Ok(U::Have(h)) if h.content_hash == hash => Bitmap::from_wire(&h.bitmap, chunks),
            Ok(U::Status(s)) if s.code == NOT_FOUND => Bitmap::new(chunks),
            Ok(U::Status(s)) => {
                return SourceEnd::Failed(format!("status {}: {}", s.code, s.message));
            }
            Ok(_) => return SourceEnd::Bad("answered a have request with something else".into()),
            Err(e) => return SourceEnd::Failed(e),
        };
        let mut fetched = 0usize;
        loop {
            while claims.indices.len() < WINDOW {
                let Some(i) = sched.claim(&source_has, start) else {
                    break;
                };
                let ask = U::ChunkRequest(proto::ChunkRequest {
                    content_hash: hash.clone(),
                    index: i as u32,
                    chunk_size: release.chunk_size,
                });
                claims.indices.push_back(i);
                if let Err(e) = stream::write_msg(&mut stream, ask).await {
                    return SourceEnd::Failed(e.to_string());
                }
            }
            let Some(&index) = claims.indices.front() else {
                break;
            };
            let answer = match read(&mut stream, peer).await {
                Ok(a) => a,
                Err(e) => return SourceEnd::Failed(e),
            };
            claims.indices.pop_front();
            match answer {
                U::Chunk(c) if c.index as usize == index && c.content_hash == hash => {
                    let partial = sched.partial.clone();
                    let stored =
                        tokio::task::spawn_blocking(move || partial.store_chunk(index, &c.data))
                            .await;
                    match stored {
                        Ok(Ok(())) => {
                            fetched += 1;
                            shared.emit(progress(release, sched.partial.held_bytes(), 1));
                        }
                        Ok(Err(StoreError::Verify(e))) => {
                            sched.release(index);
                            return SourceEnd::Bad(format!("chunk {index}: {e}"));
                        }
                        Ok(Err(e)) => {
                            sched.release(index);
                            return SourceEnd::Failed(e.to_string());
                        }
                        Err(_) => return SourceEnd::Idle("stopped"),
                    }
                }
                U::Status(s) if s.code == NOT_FOUND => {
                    // It no longer has it (evicted): stop asking it for that chunk.
                    sched.release(index);
                    source_has.clear(index);
                }
                U::Status(s) => {
                    sched.release(index);
                    return SourceEnd::Failed(format!("status {}: {}", s.code, s.message));
                }
                _ => {
                    sched.release(index);
                    return SourceEnd::Bad(format!("answered chunk {index} with something else"));
                }
            }
        }
        if sched.complete() {
            return SourceEnd::Idle("download complete");
        }
        // Nothing to ask for now: others hold the claims, or this source has nothing new.
        // Sources that are downloading too gain chunks, so ask again shortly; a source
        // without anything for a while is let go (and retried later).
        idle_rounds = if fetched == 0 { idle_rounds + 1 } else { 0 };
        if idle_rounds > 40 {
            return SourceEnd::Idle("nothing new to fetch");
        }
        tokio::time::sleep(REFRESH).await;
    }
}

async fn read(stream: &mut crate::net::PeerStream, peer: NodeId) -> Result<U, String> {
    match tokio::time::timeout(ANSWER_TIMEOUT, stream::read_msg(stream, MAX_ANSWER, peer)).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err("stream closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
    }
}
