//! Software updates over the mesh (feature `net`): hear releases announced by broadcast,
//! fetch their content from any peers that hold it, verify everything, install it.
//!
//! ```no_run
//! # async fn demo(node: meshara_core::Node, root: meshara_core::proto::SignedMetadata) -> Result<(), Box<dyn std::error::Error>> {
//! use meshara_core::updater::{AutoUpdate, FileInstaller, Updater, UpdateEvent};
//!
//! let updater = Updater::builder(node, "/var/lib/myapp/updates", root)
//!     .subscribe("myapp", "stable")
//!     .policy(AutoUpdate::Install)
//!     .installer(FileInstaller::new("/usr/local/bin/myapp"))
//!     .start()?;
//! let mut events = updater.events();
//! while let Ok(event) = events.recv().await {
//!     if let UpdateEvent::Installed { release } = event {
//!         println!("now running {}", release.semver);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Trust comes only from the root the application ships (see [`crate::update`]): a release
//! is accepted when its signatures meet the threshold of the current root, and content only
//! when every chunk and the whole hash to what that release says. Peers are sources of
//! bytes, never of trust: one that sends a bad chunk is dropped from the download.
//!
//! Announcements are broadcasts on [`TOPIC`] carrying an `UpdateMessage` (a root, a release,
//! or for releases too large for a broadcast a `MetadataRequest` naming package and channel
//! that receivers then ask the author for). Metadata and chunks move on node streams named
//! [`PROTOCOL`] (docs/protocol.md §11.2).

mod fetch;
mod install;
mod store;
mod stream;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use data_encoding::{BASE64, HEXLOWER};
use prost::Message;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use install::{FileInstaller, InstallError, InstallFuture, Installer};
pub use stream::PROTOCOL;

use crate::identity::NodeId;
use crate::net::{Event, Node, StreamError};
use crate::proto::{self, update_message::Body as U};
use crate::update::{Release, Root, TrustState, UpdateError};
use store::{Store, StoreError};

/// Broadcast topic of update announcements.
pub const TOPIC: &str = "meshara/updates";
/// Content type of update announcements.
pub const CONTENT_TYPE: &str = "application/vnd.meshara.update+protobuf";
/// Releases tracked for packages the node does not subscribe to (it still verifies, keeps
/// and serves their metadata, so nodes can learn releases from any peer).
const MAX_TRACKED: usize = 64;
/// First wait before an automatic download that failed is tried again; it doubles per
/// failure up to [`AUTO_RETRY_MAX`].
const AUTO_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between automatic download attempts.
const AUTO_RETRY_MAX: Duration = Duration::from_secs(60);
/// Metadata requests one check makes at most while catching up on roots (each answer
/// carries up to [`wire::MAX_METADATA_ROOTS`](crate::wire::MAX_METADATA_ROOTS) of them).
const MAX_ROOT_ROUNDS: usize = 64;
/// File in the data directory holding the trust state.
const STATE_FILE: &str = "state.json";

/// What the updater does on its own when it hears of a release for a subscribed package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AutoUpdate {
    /// Only report it ([`UpdateEvent::Available`]); the application calls
    /// [`Updater::download`] and [`Updater::apply`].
    Notify,
    /// Download it in the background, and wait for [`Updater::apply`].
    Download,
    /// Download and install it.
    Install,
}

/// Why an updater operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdaterError {
    /// Metadata or content was refused.
    #[error(transparent)]
    Verify(#[from] UpdateError),
    /// The release is not one this updater verified (use [`Updater::check`] or wait for an
    /// announcement).
    #[error("release {package}/{channel} #{sequence} has not been verified by this updater")]
    NotVerified {
        /// Its package.
        package: String,
        /// Its channel.
        channel: String,
        /// Its sequence.
        sequence: u64,
    },
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// Opening a stream to a peer failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A peer broke the update protocol.
    #[error("peer {peer} broke the update protocol: {reason}")]
    Protocol {
        /// The peer.
        peer: NodeId,
        /// What it did.
        reason: String,
    },
    /// A peer answered with an error status.
    #[error("peer {peer} answered {code}: {message}")]
    Status {
        /// The peer.
        peer: NodeId,
        /// The status code.
        code: u32,
        /// Its message.
        message: String,
    },
    /// No source to ask: no authority configured and no peer connected.
    #[error("no authority or peer to ask")]
    NoSource,
    /// No chunk arrived for the stall timeout; what arrived is kept for the next attempt.
    #[error("download stalled at {received} of {total} bytes")]
    Stalled {
        /// Bytes held.
        received: u64,
        /// Content size.
        total: u64,
    },
    /// The cache cannot hold the content without evicting something still needed.
    #[error("update cache full: {needed} more bytes do not fit its {limit}-byte limit")]
    CacheFull {
        /// Bytes needed.
        needed: u64,
        /// The cache limit.
        limit: u64,
    },
    /// The installer failed (see [`InstallError`]); nothing was recorded as installed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The updater or its node stopped.
    #[error("the updater stopped")]
    Stopped,
}

impl UpdaterError {
    /// Whether trying again later may succeed (no source yet, a stall, a network or peer
    /// failure, a full cache) as opposed to a refusal or an install failure.
    pub fn is_transient(&self) -> bool {
        match self {
            // Content that fails its hash as a whole was dropped; a new download may succeed.
            UpdaterError::Verify(e) => matches!(
                e,
                UpdateError::ContentMismatch(_) | UpdateError::ContentTooLarge { .. }
            ),
            UpdaterError::Io(..)
            | UpdaterError::Stream(_)
            | UpdaterError::Protocol { .. }
            | UpdaterError::Status { .. }
            | UpdaterError::NoSource
            | UpdaterError::Stalled { .. }
            | UpdaterError::CacheFull { .. } => true,
            UpdaterError::NotVerified { .. } | UpdaterError::Install(_) | UpdaterError::Stopped => {
                false
            }
        }
    }
}

impl From<StoreError> for UpdaterError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Verify(e) => UpdaterError::Verify(e),
            StoreError::Io(c, e) => UpdaterError::Io(c, e),
            StoreError::Full { needed, limit } => UpdaterError::CacheFull { needed, limit },
        }
    }
}

/// What the updater reports. Subscribe with [`Updater::events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UpdateEvent {
    /// A verified release newer than anything known for its package and channel.
    Available {
        /// The release.
        release: Release,
        /// The peer it came from.
        from: Option<NodeId>,
    },
    /// A verified release this node is outside the staged rollout of.
    NotInRollout {
        /// The release.
        release: Release,
    },
    /// A new root was accepted.
    RootRotated {
        /// Its sequence.
        sequence: u64,
    },
    /// Metadata was refused; nothing changed.
    Refused {
        /// The peer it came from.
        from: Option<NodeId>,
        /// Why.
        error: UpdateError,
    },
    /// Download progress.
    Progress {
        /// Package.
        package: String,
        /// Channel.
        channel: String,
        /// Release sequence.
        sequence: u64,
        /// Verified bytes held.
        received: u64,
        /// Content size.
        total: u64,
        /// Sources that sent this chunk (0 for the first event of a download).
        sources: usize,
    },
    /// A source sent data that does not verify and was dropped from the download.
    PeerMisbehaved {
        /// The source.
        peer: NodeId,
        /// What it sent.
        reason: String,
    },
    /// The content is complete and verified in the cache.
    Downloaded {
        /// The release.
        release: Release,
    },
    /// The release was installed and recorded.
    Installed {
        /// The release.
        release: Release,
    },
    /// An automatic download failed for a reason that may pass (no source, a stall, a
    /// network error); it is tried again after `retry_in` while the release is still the
    /// newest and has not expired. What arrived is kept.
    DownloadFailed {
        /// The release.
        release: Release,
        /// What went wrong.
        error: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// Installing failed; the release is not recorded and not retried automatically.
    InstallFailed {
        /// The release.
        release: Release,
        /// What went wrong.
        error: String,
        /// Whether the previous version is back in place.
        rolled_back: bool,
    },
}

/// A release with the signed metadata it was verified from.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    release: Release,
    signed: proto::SignedMetadata,
}

/// An accepted root, kept to hand to peers.
#[derive(Debug, Clone)]
pub(crate) struct SignedRoot {
    pub(crate) sequence: u64,
    pub(crate) signed: proto::SignedMetadata,
}

pub(crate) struct State {
    trust: TrustState,
    pub(crate) roots: Vec<SignedRoot>,
    pub(crate) latest: BTreeMap<(String, String), Known>,
    installed: BTreeMap<(String, String), [u8; 32]>,
    failed: BTreeSet<[u8; 32]>,
}

/// Called for every metadata request a peer sends (peer, package, channel).
type MetadataObserver = Arc<dyn Fn(NodeId, &str, &str) + Send + Sync>;

struct Config {
    dir: PathBuf,
    observer: Option<MetadataObserver>,
    subscriptions: BTreeSet<(String, String)>,
    policy: AutoUpdate,
    authorities: Vec<NodeId>,
    check_interval: Option<Duration>,
    stall_timeout: Duration,
    max_sources: usize,
    peer_sources: bool,
}

pub(crate) struct Shared {
    node: Node,
    config: Config,
    installer: Option<Arc<dyn Installer>>,
    state: Mutex<State>,
    store: Arc<Store>,
    events: broadcast::Sender<UpdateEvent>,
    shutdown: CancellationToken,
    downloads: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    install_lock: tokio::sync::Mutex<()>,
    persist_lock: Mutex<()>,
    served_bytes: AtomicU64,
}

/// Configures an [`Updater`].
pub struct UpdaterBuilder {
    node: Node,
    dir: PathBuf,
    root: proto::SignedMetadata,
    config: Config,
    cache_bytes: u64,
    installer: Option<Arc<dyn Installer>>,
}

impl std::fmt::Debug for UpdaterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdaterBuilder")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl UpdaterBuilder {
    /// Follows releases of `package` on `channel` (repeatable).
    pub fn subscribe(mut self, package: &str, channel: &str) -> Self {
        self.config
            .subscriptions
            .insert((package.to_owned(), channel.to_owned()));
        self
    }

    /// What to do on its own with releases of subscribed packages (default
    /// [`AutoUpdate::Notify`]).
    pub fn policy(mut self, policy: AutoUpdate) -> Self {
        self.config.policy = policy;
        self
    }

    /// Installs with `installer` (default: none, so [`Updater::apply`] fails and
    /// [`AutoUpdate::Install`] only downloads).
    pub fn installer(mut self, installer: impl Installer) -> Self {
        self.installer = Some(Arc::new(installer));
        self
    }

    /// An authority node to ask in [`Updater::check`] and to fetch from (repeatable).
    pub fn authority(mut self, node: NodeId) -> Self {
        self.config.authorities.push(node);
        self
    }

    /// Checks the authorities for every subscription this often (default: only on
    /// announcements and explicit checks).
    pub fn check_interval(mut self, every: Duration) -> Self {
        self.config.check_interval = Some(every);
        self
    }

    /// Bytes of content kept in the cache (default 1 GiB). The newest release of every
    /// tracked package and the installed ones are never evicted.
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// A download with no new verified chunk for this long fails with
    /// [`UpdaterError::Stalled`] (default 60 s); it resumes on the next attempt.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.config.stall_timeout = timeout;
        self
    }

    /// Calls `observe(peer, package, channel)` for every metadata request a peer sends (an
    /// authority counts update checks with it). It runs on the serving task: keep it quick.
    pub fn on_metadata_request(
        mut self,
        observe: impl Fn(NodeId, &str, &str) + Send + Sync + 'static,
    ) -> Self {
        self.config.observer = Some(Arc::new(observe));
        self
    }

    /// Whether content is fetched from any peer holding it (default) or only from the
    /// configured authorities (which reveals less about what this node downloads, and loads
    /// the authorities more).
    pub fn fetch_from_peers(mut self, yes: bool) -> Self {
        self.config.peer_sources = yes;
        self
    }

    /// Peers fetched from at once (default 8).
    pub fn max_sources(mut self, n: usize) -> Self {
        self.config.max_sources = n.max(1);
        self
    }

    /// Opens the data directory, restores the trust state saved there and starts listening
    /// for announcements and serving peers.
    pub fn start(self) -> Result<Updater, UpdaterError> {
        let root = Root::decode(&self.root.body)?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| UpdaterError::Io("creating the update directory", e))?;
        let store = Arc::new(Store::open(self.dir.join("content"), self.cache_bytes)?);
        let mut state = State {
            trust: TrustState::new(root.clone())?,
            roots: vec![SignedRoot {
                sequence: root.sequence,
                signed: self.root,
            }],
            latest: BTreeMap::new(),
            installed: BTreeMap::new(),
            failed: BTreeSet::new(),
        };
        let mut config = self.config;
        config.dir = self.dir;
        restore(&mut state, &config.dir.join(STATE_FILE))?;
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            node: self.node.clone(),
            config,
            installer: self.installer,
            state: Mutex::new(state),
            store,
            events,
            shutdown: CancellationToken::new(),
            downloads: Mutex::new(HashMap::new()),
            install_lock: tokio::sync::Mutex::new(()),
            persist_lock: Mutex::new(()),
            served_bytes: AtomicU64::new(0),
        });
        let listener = self.node.listen_streams(PROTOCOL);
        tokio::spawn(stream::serve(shared.clone(), listener));
        tokio::spawn(run(shared.clone(), self.node.events()));
        shared.resume_automatic();
        Ok(Updater { shared })
    }
}

/// Follows, downloads, serves and installs releases for one node. Clones share it.
#[derive(Clone)]
pub struct Updater {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("dir", &self.shared.config.dir)
            .finish_non_exhaustive()
    }
}

impl Updater {
    /// An updater for `node`, keeping its state and cache in `dir`, trusting `root` (the
    /// signed root the application ships; later roots rotate it).
    pub fn builder(
        node: Node,
        dir: impl Into<PathBuf>,
        root: proto::SignedMetadata,
    ) -> UpdaterBuilder {
        UpdaterBuilder {
            node,
            dir: dir.into(),
            root,
            config: Config {
                dir: PathBuf::new(),
                observer: None,
                subscriptions: BTreeSet::new(),
                policy: AutoUpdate::Notify,
                authorities: Vec::new(),
                check_interval: None,
                stall_timeout: Duration::from_secs(60),
                max_sources: 8,
                peer_sources: true,
            },
            cache_bytes: 1 << 30,
            installer: None,
        }
    }

    /// Subscribes to updater events. Each subscriber buffers 1024; a slow one misses the
    /// oldest.
    pub fn events(&self) -> broadcast::Receiver<UpdateEvent> {
        self.shared.events.subscribe()
    }

    /// The current root.
    pub fn root(&self) -> Root {
        self.shared.lock().trust.root().clone()
    }

    /// The newest verified release known for `package` on `channel`.
    pub fn latest(&self, package: &str, channel: &str) -> Option<Release> {
        self.shared
            .lock()
            .latest
            .get(&(package.to_owned(), channel.to_owned()))
            .map(|k| k.release.clone())
    }

    /// The signed metadata of the newest verified release for `package` on `channel`, as
    /// an authority hands it to nodes.
    pub fn latest_signed(&self, package: &str, channel: &str) -> Option<proto::SignedMetadata> {
        self.shared
            .lock()
            .latest
            .get(&(package.to_owned(), channel.to_owned()))
            .map(|k| k.signed.clone())
    }

    /// The installed sequence of `package` on `channel`.
    pub fn installed(&self, package: &str, channel: &str) -> Option<u64> {
        self.shared.lock().trust.installed(package, channel)
    }

    /// Bytes of content this node has served to peers.
    pub fn served_bytes(&self) -> u64 {
        self.shared.served_bytes.load(Ordering::Relaxed)
    }

    /// Asks the authorities (or, with none configured, the connected peers) for the newest
    /// release of `package` on `channel`, accepting any newer roots on the way. Returns the
    /// newest verified release that is newer than the installed one and includes this node
    /// in its rollout.
    pub async fn check(
        &self,
        package: &str,
        channel: &str,
    ) -> Result<Option<Release>, UpdaterError> {
        let mut sources = self.shared.config.authorities.clone();
        if sources.is_empty() {
            sources = self
                .shared
                .node
                .peers()
                .into_iter()
                .map(|p| p.node_id)
                .collect();
        }
        if sources.is_empty() {
            return Err(UpdaterError::NoSource);
        }
        let mut last = None;
        for peer in sources {
            match self.check_with(peer, package, channel).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "update check failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(UpdaterError::NoSource))
    }

    /// [`check`](Self::check) against one peer (an authority or any node).
    pub async fn check_with(
        &self,
        peer: NodeId,
        package: &str,
        channel: &str,
    ) -> Result<Option<Release>, UpdaterError> {
        let mut metadata = fetch_metadata(&self.shared, peer, package, channel).await?;
        // A node many rotations behind gets the roots in batches: ask again while a full
        // batch moved the trusted root forward.
        for _ in 0..MAX_ROOT_ROUNDS {
            let full = metadata.roots.len() >= crate::wire::MAX_METADATA_ROOTS;
            let before = self.shared.lock().trust.root().sequence;
            for root in std::mem::take(&mut metadata.roots) {
                self.shared.accept_root(root, Some(peer))?;
            }
            if !full || self.shared.lock().trust.root().sequence == before {
                break;
            }
            metadata = fetch_metadata(&self.shared, peer, package, channel).await?;
        }
        if let Some(release) = metadata.release {
            self.shared.accept_release(release, Some(peer), &[peer])?;
        }
        let me = self.shared.node.node_id();
        let st = self.shared.lock();
        let installed = st.trust.installed(package, channel).unwrap_or(0);
        Ok(st
            .latest
            .get(&(package.to_owned(), channel.to_owned()))
            .map(|k| &k.release)
            .filter(|r| r.sequence > installed && r.in_rollout(&me))
            .cloned())
    }

    /// Downloads `release` (one this updater verified) into the cache, from any peers that
    /// hold it, resuming an interrupted download. Reports [`UpdateEvent::Progress`].
    pub async fn download(&self, release: &Release) -> Result<PathBuf, UpdaterError> {
        let known = self.shared.known(release)?;
        fetch::download(&self.shared, &known.release, &[]).await
    }

    /// Installs `release`: checks its metadata again (expiry, rollback), downloads it if
    /// needed, hashes the content once more, runs the installer, and only then records it as
    /// installed. A failed install is reported and not retried automatically.
    pub async fn apply(&self, release: &Release) -> Result<(), UpdaterError> {
        self.shared.apply(release, &[]).await
    }

    /// Publishes a release an authority signed: verifies it against the trusted root like
    /// any node would, adds `content` to the cache (it must match), makes it the newest
    /// release of its package and channel, and announces it. Used by authority nodes.
    pub async fn publish(
        &self,
        signed: proto::SignedMetadata,
        content: &Path,
    ) -> Result<Release, UpdaterError> {
        let now = crate::net::unix_secs();
        let release = {
            let st = self.shared.lock();
            st.trust.verify_release(&signed, now)?
        };
        if let Some(current) = self.latest(&release.package, &release.channel) {
            if current.sequence >= release.sequence {
                return Err(UpdateError::Rollback {
                    what: "release",
                    current: current.sequence,
                    offered: release.sequence,
                }
                .into());
            }
        }
        let store = self.shared.store.clone();
        let mut pinned = self.shared.pinned();
        pinned.insert(release.content_hash);
        let (r, path) = (release.clone(), content.to_owned());
        tokio::task::spawn_blocking(move || {
            store.reserve(r.size, &pinned)?;
            store.insert_file(&r, &path)
        })
        .await
        .map_err(|_| UpdaterError::Stopped)??;
        self.shared.accept_release(signed.clone(), None, &[])?;
        self.shared.announce(U::Release(signed), &release);
        Ok(release)
    }

    /// Rotates to a new root (signed by the old and the new root threshold) and announces
    /// it. Used by authority nodes.
    pub fn publish_root(&self, signed: proto::SignedMetadata) -> Result<Root, UpdaterError> {
        self.shared.accept_root(signed.clone(), None)?;
        let body = proto::UpdateMessage {
            body: Some(U::Root(signed)),
        };
        self.shared.broadcast(body.encode_to_vec());
        Ok(self.root())
    }

    /// Announces the newest known release of `package` on `channel` again.
    pub fn announce(&self, package: &str, channel: &str) -> bool {
        let known = self
            .shared
            .lock()
            .latest
            .get(&(package.to_owned(), channel.to_owned()))
            .cloned();
        match known {
            Some(k) => {
                self.shared.announce(U::Release(k.signed), &k.release);
                true
            }
            None => false,
        }
    }

    /// Stops listening and serving (downloads in progress end with [`UpdaterError::Stopped`]).
    pub fn stop(&self) {
        self.shared.shutdown.cancel();
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: UpdateEvent) {
        let _ = self.events.send(event);
    }

    pub(crate) fn count_served(&self, bytes: usize) {
        self.served_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn download_lock(&self, hash: [u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        downloads.retain(|_, l| Arc::strong_count(l) > 1);
        downloads.entry(hash).or_default().clone()
    }

    /// Content the cache must keep: the newest release of everything tracked, and what is
    /// installed.
    fn pinned(&self) -> HashSet<[u8; 32]> {
        let st = self.lock();
        st.latest
            .values()
            .map(|k| k.release.content_hash)
            .chain(st.installed.values().copied())
            .collect()
    }

    fn known(&self, release: &Release) -> Result<Known, UpdaterError> {
        let st = self.lock();
        st.latest
            .get(&(release.package.clone(), release.channel.clone()))
            .filter(|k| k.release == *release)
            .cloned()
            .ok_or_else(|| UpdaterError::NotVerified {
                package: release.package.clone(),
                channel: release.channel.clone(),
                sequence: release.sequence,
            })
    }

    fn broadcast(&self, content: Vec<u8>) {
        if let Err(e) = self.node.broadcast(TOPIC, CONTENT_TYPE, content) {
            tracing::warn!(error = %e, "announcing an update");
        }
    }

    /// Announces a release: the signed metadata itself when it fits a broadcast, else a
    /// pointer receivers ask the author about.
    fn announce(&self, body: U, release: &Release) {
        let full = proto::UpdateMessage { body: Some(body) }.encode_to_vec();
        if full.len() <= crate::wire::MAX_BROADCAST_CONTENT {
            self.broadcast(full);
        } else {
            let pointer = proto::UpdateMessage {
                body: Some(U::MetadataRequest(proto::MetadataRequest {
                    package: release.package.clone(),
                    channel: release.channel.clone(),
                    root_sequence: 0,
                })),
            };
            self.broadcast(pointer.encode_to_vec());
        }
    }

    /// Accepts a root: a duplicate or an older one is ignored, a bad one refused.
    fn accept_root(
        &self,
        signed: proto::SignedMetadata,
        from: Option<NodeId>,
    ) -> Result<(), UpdateError> {
        let now = crate::net::unix_secs();
        let sequence = {
            let mut st = self.lock();
            if st.roots.iter().any(|r| r.signed.body == signed.body) {
                return Ok(());
            }
            match st.trust.rotate_root(&signed, now) {
                Ok(root) => {
                    let sequence = root.sequence;
                    // Every root is kept: replaying the chain from the shipped root is how
                    // the trust state is restored, and peers that are behind need it. Only
                    // the root keys' threshold can add one, once per rotation.
                    st.roots.push(SignedRoot { sequence, signed });
                    sequence
                }
                Err(UpdateError::Rollback { .. }) => return Ok(()),
                Err(error) => {
                    drop(st);
                    self.emit(UpdateEvent::Refused {
                        from,
                        error: error.clone(),
                    });
                    return Err(error);
                }
            }
        };
        self.persist();
        tracing::info!(sequence, "rotated to a new update root");
        self.emit(UpdateEvent::RootRotated { sequence });
        Ok(())
    }

    /// Accepts a release: verified against the current root, kept as the newest of its
    /// package and channel, and acted on per the policy. Duplicates and releases older than
    /// the newest known are ignored; a refused release changes nothing.
    fn accept_release(
        self: &Arc<Self>,
        signed: proto::SignedMetadata,
        from: Option<NodeId>,
        hints: &[NodeId],
    ) -> Result<(), UpdateError> {
        let now = crate::net::unix_secs();
        let release = {
            let st = self.lock();
            if st.latest.values().any(|k| k.signed.body == signed.body) {
                return Ok(());
            }
            match st.trust.verify_release(&signed, now) {
                Ok(r) => r,
                Err(error) => {
                    drop(st);
                    tracing::warn!(?from, %error, "refused a release");
                    self.emit(UpdateEvent::Refused {
                        from,
                        error: error.clone(),
                    });
                    return Err(error);
                }
            }
        };
        let key = (release.package.clone(), release.channel.clone());
        let subscribed = self.config.subscriptions.contains(&key);
        {
            let mut st = self.lock();
            if st
                .latest
                .get(&key)
                .is_some_and(|k| k.release.sequence >= release.sequence)
            {
                return Ok(());
            }
            let tracked_others = st
                .latest
                .keys()
                .filter(|k| !self.config.subscriptions.contains(*k))
                .count();
            if !subscribed && !st.latest.contains_key(&key) && tracked_others >= MAX_TRACKED {
                return Ok(());
            }
            st.latest.insert(
                key,
                Known {
                    release: release.clone(),
                    signed,
                },
            );
        }
        self.persist();
        tracing::info!(package = %release.package, channel = %release.channel, semver = %release.semver, sequence = release.sequence, "release available");
        self.emit(UpdateEvent::Available {
            release: release.clone(),
            from,
        });
        if !subscribed || self.config.policy == AutoUpdate::Notify {
            return Ok(());
        }
        if !release.in_rollout(&self.node.node_id()) {
            self.emit(UpdateEvent::NotInRollout { release });
            return Ok(());
        }
        if self.lock().failed.contains(&release.content_hash) {
            return Ok(());
        }
        tokio::spawn(self.clone().auto_update(release, hints.to_vec()));
        Ok(())
    }

    /// After a restart, picks up automatic downloads and installs that had not finished:
    /// the newest known release of each subscribed pair that is newer than the installed one,
    /// in this node's rollout and not failed before.
    fn resume_automatic(self: &Arc<Self>) {
        if self.config.policy == AutoUpdate::Notify {
            return;
        }
        let me = self.node.node_id();
        let pending: Vec<Release> = {
            let st = self.lock();
            self.config
                .subscriptions
                .iter()
                .filter_map(|key| st.latest.get(key))
                .map(|k| &k.release)
                .filter(|r| {
                    r.sequence > st.trust.installed(&r.package, &r.channel).unwrap_or(0)
                        && r.in_rollout(&me)
                        && !st.failed.contains(&r.content_hash)
                        && (self.config.policy == AutoUpdate::Install
                            || self.store.complete(&r.content_hash).is_none())
                })
                .cloned()
                .collect()
        };
        for release in pending {
            tracing::info!(package = %release.package, sequence = release.sequence, "resuming an automatic update");
            tokio::spawn(self.clone().auto_update(release, Vec::new()));
        }
    }

    /// Downloads (and, per the policy, installs) a release on its own, trying again with
    /// backoff after failures that may pass, for as long as the release is the newest of
    /// its package and channel and has not expired.
    async fn auto_update(self: Arc<Self>, release: Release, hints: Vec<NodeId>) {
        let mut wait = AUTO_RETRY_MIN;
        loop {
            let result = if self.config.policy == AutoUpdate::Install && self.installer.is_some() {
                self.apply(&release, &hints).await
            } else {
                fetch::download(&self, &release, &hints).await.map(|_| ())
            };
            let error = match result {
                Ok(()) => return,
                Err(e) if !e.is_transient() => {
                    tracing::warn!(package = %release.package, sequence = release.sequence, error = %e, "automatic update failed");
                    return;
                }
                Err(e) => e,
            };
            let still_newest = self
                .lock()
                .latest
                .get(&(release.package.clone(), release.channel.clone()))
                .is_some_and(|k| k.release == release);
            if !still_newest || release.expires_at <= crate::net::unix_secs() {
                return;
            }
            tracing::info!(package = %release.package, sequence = release.sequence, error = %error, retry_in = ?wait, "automatic download failed; trying again");
            self.emit(UpdateEvent::DownloadFailed {
                release: release.clone(),
                error: error.to_string(),
                retry_in: wait,
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => return,
            }
            wait = (wait * 2).min(AUTO_RETRY_MAX);
        }
    }

    async fn apply(
        self: &Arc<Self>,
        release: &Release,
        hints: &[NodeId],
    ) -> Result<(), UpdaterError> {
        let installer = self.installer.clone().ok_or_else(|| {
            UpdaterError::Install(InstallError::Other("no installer configured".into()))
        })?;
        let _one_at_a_time = self.install_lock.lock().await;
        let known = self.known(release)?;
        // The metadata is checked again now: it may have expired, or a newer release may
        // have been installed since it was announced.
        let release = self
            .lock()
            .trust
            .verify_release(&known.signed, crate::net::unix_secs())?;
        let path = fetch::download(self, &release, hints).await?;
        let (r, p) = (release.clone(), path.clone());
        let verified = tokio::task::spawn_blocking(move || store::verify_file(&p, &r))
            .await
            .map_err(|_| UpdaterError::Stopped)?;
        if let Err(e) = verified {
            // The cached copy changed on disk since it was verified: drop it so the next
            // attempt downloads it again, and so it is not served to peers.
            tracing::error!(package = %release.package, error = %e, "cached update content no longer verifies; evicting it");
            self.store.evict(&release.content_hash);
            return Err(e.into());
        }
        match installer.install(&release, &path).await {
            Ok(()) => {
                {
                    let mut st = self.lock();
                    st.trust.record_release(&release);
                    st.installed.insert(
                        (release.package.clone(), release.channel.clone()),
                        release.content_hash,
                    );
                }
                self.persist();
                tracing::info!(package = %release.package, semver = %release.semver, "update installed");
                self.emit(UpdateEvent::Installed { release });
                Ok(())
            }
            Err(e) => {
                self.lock().failed.insert(release.content_hash);
                self.persist();
                let rolled_back = matches!(
                    e,
                    InstallError::CheckFailed {
                        rolled_back: true,
                        ..
                    }
                );
                self.emit(UpdateEvent::InstallFailed {
                    release,
                    error: e.to_string(),
                    rolled_back,
                });
                Err(e.into())
            }
        }
    }

    /// Saves the trust state (atomically: a crash leaves the old or the new file).
    fn persist(&self) {
        let _one_writer = self.persist_lock.lock().unwrap_or_else(|p| p.into_inner());
        let json = {
            let st = self.lock();
            serde_json::json!({
                "version": 1,
                "roots": st.roots.iter().map(|r| BASE64.encode(&r.signed.encode_to_vec())).collect::<Vec<_>>(),
                "latest": st.latest.values().map(|k| BASE64.encode(&k.signed.encode_to_vec())).collect::<Vec<_>>(),
                "installed": st.trust.installed_all().map(|(p, c, s)| serde_json::json!({
                    "package": p, "channel": c, "sequence": s,
                    "content_hash": st.installed.get(&(p.to_owned(), c.to_owned())).map(|h| HEXLOWER.encode(h)),
                })).collect::<Vec<_>>(),
                "failed": st.failed.iter().map(|h| HEXLOWER.encode(h)).collect::<Vec<_>>(),
            })
        };
        let path = self.config.dir.join(STATE_FILE);
        let tmp = self.config.dir.join("state.json.tmp");
        let written = std::fs::write(&tmp, json.to_string())
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::error!(error = %e, path = %path.display(), "saving the update state");
        }
    }
}

/// Restores state saved by an earlier run. Roots and releases are verified again (their
/// signatures; expiry is checked when they are used).
fn restore(state: &mut State, path: &Path) -> Result<(), UpdaterError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(UpdaterError::Io("reading the update state", e)),
    };
    let bad = |why: &str| {
        UpdaterError::Io(
            "reading the update state",
            std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned()),
        )
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("not JSON"))?;
    let list = |key: &str| json[key].as_array().cloned().unwrap_or_default();
    let signed = |v: &serde_json::Value| -> Option<proto::SignedMetadata> {
        let bytes = BASE64.decode(v.as_str()?.as_bytes()).ok()?;
        crate::update::decode_signed(&bytes).ok()
    };
    for r in list("roots").iter().filter_map(signed) {
        let Ok(root) = Root::decode(&r.body) else {
            continue;
        };
        if root.sequence <= state.trust.root().sequence {
            continue;
        }
        // Expiry was checked when the root was accepted; replay checks the signatures.
        if state.trust.rotate_root(&r, 0).is_ok() {
            state.roots.push(SignedRoot {
                sequence: root.sequence,
                signed: r,
            });
        }
    }
    for s in list("latest").iter().filter_map(signed) {
        if let Ok(release) = state.trust.verify_release(&s, 0) {
            state.latest.insert(
                (release.package.clone(), release.channel.clone()),
                Known { release, signed: s },
            );
        }
    }
    for i in list("installed") {
        let (Some(p), Some(c), Some(s)) = (
            i["package"].as_str(),
            i["channel"].as_str(),
            i["sequence"].as_u64(),
        ) else {
            continue;
        };
        state.trust.set_installed(p, c, s);
        if let Some(h) = i["content_hash"]
            .as_str()
            .and_then(|h| HEXLOWER.decode(h.as_bytes()).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
        {
            state.installed.insert((p.to_owned(), c.to_owned()), h);
        }
    }
    for h in list("failed") {
        if let Some(h) = h
            .as_str()
            .and_then(|h| HEXLOWER.decode(h.as_bytes()).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
        {
            state.failed.insert(h);
        }
    }
    Ok(())
}

/// Asks the authority node `authority` for its signed roots and returns the newest one that
/// stands on its own ([`crate::update::verify_self_signed_root`]): the initial root of a
/// node that trusts that authority's identity (pinned in its configuration) instead of
/// shipping a root file. Keep what it returns (for example as `root.pb` next to the updater's
/// state) and pass it to [`Updater::builder`]; later roots then rotate from it as usual.
///
/// One attempt: the node must be able to reach `authority` (a connection, or its record to
/// dial); callers retry with a backoff while the authority is not up yet.
pub async fn fetch_root(
    node: &Node,
    authority: NodeId,
) -> Result<proto::SignedMetadata, UpdaterError> {
    let mut stream = node.open_stream(authority, PROTOCOL).await?;
    let ask = U::MetadataRequest(proto::MetadataRequest {
        package: String::new(),
        channel: String::new(),
        root_sequence: 0,
    });
    stream::write_msg(&mut stream, ask)
        .await
        .map_err(|e| UpdaterError::Io("writing an update stream", e))?;
    let protocol = |reason: &str| UpdaterError::Protocol {
        peer: authority,
        reason: reason.into(),
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        stream::read_msg(&mut stream, stream::MAX_ANSWER, authority),
    )
    .await
    .map_err(|_| protocol("no answer within 20 s"))??;
    let roots = match answer {
        Some(U::Metadata(m)) => m.roots,
        Some(U::Status(s)) => {
            return Err(UpdaterError::Status {
                peer: authority,
                code: s.code,
                message: s.message,
            });
        }
        Some(_) => return Err(protocol("answered a metadata request with something else")),
        None => return Err(protocol("closed the stream without answering")),
    };
    let now = crate::net::unix_secs();
    let mut best: Option<(u64, proto::SignedMetadata)> = None;
    let mut last_error = None;
    for signed in roots {
        match crate::update::verify_self_signed_root(&signed, now) {
            Ok(root) if best.as_ref().is_none_or(|(seq, _)| root.sequence > *seq) => {
                best = Some((root.sequence, signed));
            }
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    match (best, last_error) {
        (Some((_, signed)), _) => Ok(signed),
        (None, Some(e)) => Err(UpdaterError::Verify(e)),
        (None, None) => Err(protocol("has no root to give")),
    }
}

/// Asks `peer` for metadata over an update stream.
async fn fetch_metadata(
    shared: &Shared,
    peer: NodeId,
    package: &str,
    channel: &str,
) -> Result<proto::Metadata, UpdaterError> {
    let root_sequence = shared.lock().trust.root().sequence;
    let mut stream = shared.node.open_stream(peer, PROTOCOL).await?;
    let ask = U::MetadataRequest(proto::MetadataRequest {
        package: package.into(),
        channel: channel.into(),
        root_sequence,
    });
    stream::write_msg(&mut stream, ask)
        .await
        .map_err(|e| UpdaterError::Io("writing an update stream", e))?;
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        stream::read_msg(&mut stream, stream::MAX_ANSWER, peer),
    )
    .await
    .map_err(|_| UpdaterError::Protocol {
        peer,
        reason: "no answer within 20 s".into(),
    })??;
    match answer {
        Some(U::Metadata(m)) => Ok(m),
        Some(U::Status(s)) => Err(UpdaterError::Status {
            peer,
            code: s.code,
            message: s.message,
        }),
        Some(_) => Err(UpdaterError::Protocol {
            peer,
            reason: "answered a metadata request with something else".into(),
        }),
        None => Err(UpdaterError::Protocol {
            peer,
            reason: "closed the stream without answering".into(),
        }),
    }
}

/// Listens for announcements and runs periodic checks.
async fn run(shared: Arc<Shared>, mut events: crate::net::EventStream) {
    let mut interval = shared.config.check_interval.map(|every| {
        let mut i = tokio::time::interval(every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        let tick = async {
            match interval.as_mut() {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Broadcast(b)) if b.broadcast.topic == TOPIC => {
                    on_announcement(&shared, &b.broadcast.content, b.broadcast.author, b.via);
                }
                Some(_) => {}
                None => return,
            },
            () = tick => {
                let updater = Updater { shared: shared.clone() };
                let subs = shared.config.subscriptions.clone();
                tokio::spawn(async move {
                    for (p, c) in subs {
                        if let Err(e) = updater.check(&p, &c).await {
                            tracing::debug!(package = %p, channel = %c, error = %e, "periodic update check");
                        }
                    }
                });
            }
            () = shared.shutdown.cancelled() => return,
        }
    }
}

fn on_announcement(shared: &Arc<Shared>, content: &[u8], author: NodeId, via: NodeId) {
    let message = match crate::wire::decode_update(content, crate::wire::MAX_BROADCAST_CONTENT) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(%author, error = %e, "undecodable update announcement");
            return;
        }
    };
    match message.body {
        Some(U::Root(signed)) => {
            let _ = shared.accept_root(signed, Some(via));
        }
        Some(U::Release(signed)) => {
            let _ = shared.accept_release(signed, Some(via), &[via, author]);
        }
        Some(U::MetadataRequest(m)) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                for peer in [author, via] {
                    if let Ok(meta) = fetch_metadata(&shared, peer, &m.package, &m.channel).await {
                        for root in meta.roots {
                            let _ = shared.accept_root(root, Some(peer));
                        }
                        if let Some(release) = meta.release {
                            let _ = shared.accept_release(release, Some(peer), &[peer, via]);
                        }
                        return;
                    }
                }
            });
        }
        _ => tracing::debug!(%author, "update announcement of an unexpected kind"),
    }
}
