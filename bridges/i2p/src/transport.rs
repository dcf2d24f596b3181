//! The I2P transport: a persistent destination, a STREAM session on the router, a dialer for
//! `i2p://….b32.i2p` record addresses and an accept loop feeding incoming streams to a node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshara_core::{Address, BoxedStream, Dialer, Node, Transport, TransportError, TransportKind};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::client::{SamConnection, SamStream, SamTimeouts};
use crate::dest;
use crate::error::SamError;

/// Port published in `i2p://` addresses. SAM 3.1 streams carry no ports; the field exists
/// because every record address has one.
pub const DEFAULT_PORT: u16 = 7340;
/// Further attempts at `SESSION CREATE` after the router dropped the connection.
const SESSION_RETRIES: u32 = 3;

/// How to reach the router and where the destination keys live.
#[derive(Debug, Clone)]
pub struct I2pConfig {
    /// The router's SAM bridge (i2pd and Java I2P default to 127.0.0.1:7656).
    pub sam: SocketAddr,
    /// File holding the private destination (base64, mode 0600). Created on first start;
    /// keep it (and back it up) to keep the `.b32.i2p` address.
    pub key_file: PathBuf,
    /// I2CP options for the session, `key=value` (e.g. `inbound.length=2`). Empty: the
    /// router's defaults (3-hop tunnels).
    pub session_options: Vec<String>,
    /// Port published with the address.
    pub port: u16,
    /// Step timeouts.
    pub timeouts: SamTimeouts,
}

impl I2pConfig {
    /// Router at `sam`, keys in `data_dir/i2p-destination.key`.
    pub fn new(sam: SocketAddr, data_dir: &Path) -> Self {
        Self {
            sam,
            key_file: data_dir.join("i2p-destination.key"),
            session_options: Vec::new(),
            port: DEFAULT_PORT,
            timeouts: SamTimeouts::default(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: I2pConfig,
    id: String,
    private: String,
    b32: String,
    /// Watches the connection that holds the session open; aborting it ends the session.
    control: Mutex<Option<JoinHandle<()>>>,
    /// Whether that connection is still open (the router keeps the session while it is).
    up: Arc<AtomicBool>,
}

/// A running STREAM session on an I2P router. Cheap to clone.
#[derive(Debug, Clone)]
pub struct I2pTransport {
    shared: Arc<Shared>,
}

impl I2pTransport {
    /// Loads (or creates and saves) the destination keys and opens a STREAM session. Takes as
    /// long as the router needs to build tunnels (about 20 s on i2pd).
    pub async fn start(config: I2pConfig) -> Result<Self, SamError> {
        let saved = load_keys(&config.key_file)?;
        let mut attempt = 0;
        let (id, control, private) = loop {
            // A fresh name per attempt: a half-created session may still hold the last one.
            let id = format!(
                "meshara-{:016x}",
                rand_core::RngCore::next_u64(&mut rand_core::OsRng)
            );
            let created = async {
                let mut control = SamConnection::connect(config.sam, config.timeouts).await?;
                let private = control
                    .session_create(&id, saved.as_deref(), &config.session_options)
                    .await?;
                Ok::<_, SamError>((control, private))
            }
            .await;
            match created {
                Ok((control, private)) => break (id, control, private),
                // i2pd sometimes drops a SESSION CREATE while it is starting or creating another
                // session; such a failure is worth another try.
                Err(e @ (SamError::RouterClosed | SamError::Io(_)))
                    if attempt < SESSION_RETRIES =>
                {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "I2P session creation failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        if saved.is_none() {
            save_keys(&config.key_file, &private)?;
        }
        let b32 = dest::b32_of(&private)?;
        tracing::info!(%b32, session = %id, sam = %config.sam, "I2P session ready");
        let up = Arc::new(AtomicBool::new(true));
        let watching = up.clone();
        let session = id.clone();
        let control = tokio::spawn(async move {
            let why = control.wait_closed().await;
            watching.store(false, Ordering::Relaxed);
            tracing::error!(%session, reason = %why, "the I2P router ended the session");
        });
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                id,
                private,
                b32,
                control: Mutex::new(Some(control)),
                up,
            }),
        })
    }

    /// Whether the session is still established: false once the router closed the
    /// connection holding it (a router restart), or after [`I2pTransport::close`]. A session
    /// is not re-created by itself: restart the transport (the address stays the same).
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// This node's `.b32.i2p` name.
    pub fn b32(&self) -> &str {
        &self.shared.b32
    }

    /// The address to publish in the node record: `i2p://<b32>:<port>`.
    pub fn address(&self) -> Address {
        Address {
            transport: Transport::I2p,
            host: self.shared.b32.clone(),
            port: self.shared.config.port,
        }
    }

    /// The session's public destination (base64).
    pub fn destination(&self) -> Result<String, SamError> {
        dest::public_of(&self.shared.private)
    }

    /// A dialer for [`NodeBuilder::dialer`](meshara_core::NodeBuilder::dialer).
    pub fn dialer(&self) -> Arc<dyn Dialer> {
        Arc::new(I2pDialer {
            transport: self.clone(),
        })
    }

    /// Opens a stream to `destination` (a `.b32.i2p` name or a base64 destination).
    pub async fn connect(&self, destination: &str) -> Result<SamStream, SamError> {
        let conn =
            SamConnection::connect(self.shared.config.sam, self.shared.config.timeouts).await?;
        conn.stream_connect(&self.shared.id, destination).await
    }

    /// Waits for the next incoming stream; returns the peer's destination and the stream.
    pub async fn accept(&self) -> Result<(String, SamStream), SamError> {
        let conn =
            SamConnection::connect(self.shared.config.sam, self.shared.config.timeouts).await?;
        conn.stream_accept(&self.shared.id).await?.peer().await
    }

    /// Accepts incoming streams and hands each to `node` as an I2P connection, until the node
    /// stops or the handle is dropped. Failures back off (1 s doubling to 30 s) and never end
    /// the loop; failed handshakes are counted by the node.
    pub fn serve(&self, node: Node) -> ServeHandle {
        let transport = self.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            while node.is_running() {
                match transport.accept().await {
                    Ok((peer, stream)) => {
                        backoff = Duration::from_secs(1);
                        // The handshake runs in the background: a stream that never speaks
                        // cannot hold up the loop, and the node bounds the handshakes in
                        // progress (evicting the oldest).
                        tracing::trace!(from = %dest::b32_of(&peer).unwrap_or_default(), "I2P stream");
                        node.spawn_accept_stream(stream, TransportKind::I2p);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "I2P accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        ServeHandle { task }
    }

    /// Ends the session (the router forgets it; the keys stay on disk).
    pub async fn close(&self) {
        if let Some(control) = self.shared.control.lock().await.take() {
            control.abort();
            let _ = control.await;
        }
        self.shared.up.store(false, Ordering::Relaxed);
    }
}

/// The accept loop started by [`I2pTransport::serve`]; dropping it stops the loop.
#[derive(Debug)]
pub struct ServeHandle {
    task: JoinHandle<()>,
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct I2pDialer {
    transport: I2pTransport,
}

impl Dialer for I2pDialer {
    fn dial<'a>(
        &'a self,
        address: &'a Address,
    ) -> meshara_core::net::transport::BoxFuture<'a, Result<BoxedStream, TransportError>> {
        Box::pin(async move {
            if address.transport != Transport::I2p || !dest::is_b32(&address.host) {
                return Err(TransportError::Connect(format!(
                    "{address}: I2P reaches only .b32.i2p destinations (no outproxy)"
                )));
            }
            let stream = self
                .transport
                .connect(&address.host)
                .await
                .map_err(|e| TransportError::Connect(format!("over I2P to {address}: {e}")))?;
            Ok(Box::new(stream) as BoxedStream)
        })
    }
}

fn keys_error(path: &Path, reason: impl std::fmt::Display) -> SamError {
    SamError::Keys {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads the saved private destination, if the file exists; a damaged file is an error,
/// never silently replaced (that would change the node's I2P address).
fn load_keys(path: &Path) -> Result<Option<String>, SamError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(keys_error(path, e)),
    };
    let private = text.trim().to_owned();
    dest::public_of(&private).map_err(|e| keys_error(path, e))?;
    Ok(Some(private))
}

/// Writes the private destination atomically with mode 0600.
fn save_keys(path: &Path, private: &str) -> Result<(), SamError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| keys_error(path, e))?;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(|e| keys_error(path, e))?;
    file.write_all(private.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| keys_error(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| keys_error(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/i2p.key");
        assert_eq!(load_keys(&path).unwrap(), None);
        let mut private = vec![9u8; 384];
        private.extend_from_slice(&[5, 0, 4, 0, 7, 0, 4]);
        private.extend_from_slice(&[3u8; 288]);
        let b64 = dest::encode_base64(&private);
        save_keys(&path, &b64).unwrap();
        assert_eq!(load_keys(&path).unwrap().as_deref(), Some(b64.as_str()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a destination").unwrap();
        assert!(matches!(load_keys(&path), Err(SamError::Keys { .. })));
    }
}
