//! The update stream protocol (docs/protocol.md §11.2): length-prefixed `UpdateMessage`s on a
//! node stream named [`PROTOCOL`], one request answered at a time, and the serving side.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::{Shared, UpdaterError};
use crate::identity::NodeId;
use crate::net::PeerStream;
use crate::proto::{self, update_message::Body as U};
use crate::wire;

/// Stream protocol name of the update protocol.
pub const PROTOCOL: &str = "meshara/update/1";
/// Largest request a server reads (requests are a few dozen bytes).
pub(crate) const MAX_REQUEST: usize = 1024;
/// Largest answer a client reads: a chunk, or metadata with its root chain.
pub(crate) const MAX_ANSWER: usize = 4 << 20;
/// Roots put in one answer stop once they pass this many bytes.
const ROOTS_BUDGET: usize = 2 << 20;
/// Streams served at once; more get `503 busy`.
const MAX_SERVING: usize = 64;
/// A served stream idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// Status codes of `UpdateStatus`.
pub(crate) const BAD_REQUEST: u32 = 400;
pub(crate) const NOT_FOUND: u32 = 404;
pub(crate) const BUSY: u32 = 503;

pub(crate) async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, body: U) -> std::io::Result<()> {
    let bytes = proto::UpdateMessage { body: Some(body) }.encode_to_vec();
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(&bytes);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one message of at most `max` bytes; `Ok(None)` on a clean end of stream.
pub(crate) async fn read_msg<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    peer: NodeId,
) -> Result<Option<U>, UpdaterError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(UpdaterError::Io("reading an update stream", e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(UpdaterError::Protocol {
            peer,
            reason: format!("{len}-byte message exceeds the {max}-byte limit"),
        });
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)
        .await
        .map_err(|e| UpdaterError::Io("reading an update stream", e))?;
    let msg = wire::decode_update(&buf, max).map_err(|e| UpdaterError::Protocol {
        peer,
        reason: e.to_string(),
    })?;
    msg.body.map(Some).ok_or_else(|| UpdaterError::Protocol {
        peer,
        reason: "empty update message".into(),
    })
}

pub(crate) fn status(code: u32, message: &str) -> U {
    U::Status(proto::UpdateStatus {
        code,
        message: message.into(),
    })
}

/// Accepts update streams until the updater stops.
pub(crate) async fn serve(shared: Arc<Shared>, mut listener: crate::net::StreamListener) {
    let slots = Arc::new(Semaphore::new(MAX_SERVING));
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s { Some(s) => s, None => return },
            () = shared.shutdown.cancelled() => return,
        };
        let shared = shared.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    let peer = stream.peer();
                    if let Err(e) = serve_stream(&shared, stream).await {
                        tracing::debug!(%peer, error = %e, "update stream ended");
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = write_msg(&mut stream, status(BUSY, "busy")).await;
                    let _ = stream.shutdown().await;
                });
            }
        }
    }
}

async fn serve_stream(shared: &Shared, mut stream: PeerStream) -> Result<(), UpdaterError> {
    let peer = stream.peer();
    loop {
        let request = tokio::select! {
            r = tokio::time::timeout(IDLE, read_msg(&mut stream, MAX_REQUEST, peer)) => match r {
                Ok(r) => r,
                Err(_) => return Ok(()),
            },
            () = shared.shutdown.cancelled() => return Ok(()),
        };
        let request = match request {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                let _ = write_msg(&mut stream, status(BAD_REQUEST, &e.to_string())).await;
                return Err(e);
            }
        };
        let answer = answer(shared, peer, request).await;
        let end = matches!(&answer, U::Status(s) if s.code == BAD_REQUEST);
        write_msg(&mut stream, answer)
            .await
            .map_err(|e| UpdaterError::Io("writing an update stream", e))?;
        if end {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

async fn answer(shared: &Shared, peer: NodeId, request: U) -> U {
    match request {
        U::MetadataRequest(m) => {
            // An empty package asks for roots only (`fetch_root`): not an update check.
            if let (Some(observe), false) = (&shared.config.observer, m.package.is_empty()) {
                observe(peer, &m.package, &m.channel);
            }
            let state = shared.lock();
            let mut roots = Vec::new();
            let mut budget = 0usize;
            for r in state.roots.iter().filter(|r| r.sequence > m.root_sequence) {
                budget += r.signed.encoded_len();
                if budget > ROOTS_BUDGET || roots.len() == wire::MAX_METADATA_ROOTS {
                    break;
                }
                roots.push(r.signed.clone());
            }
            let release = state
                .latest
                .get(&(m.package, m.channel))
                .map(|r| r.signed.clone());
            U::Metadata(proto::Metadata { roots, release })
        }
        U::HaveRequest(h) => {
            let Ok(hash) = <[u8; 32]>::try_from(&h.content_hash[..]) else {
                return status(BAD_REQUEST, "content hash");
            };
            match shared.store.have(&hash, h.chunk_size) {
                Some(bitmap) => U::Have(proto::Have {
                    content_hash: h.content_hash,
                    bitmap: bytes::Bytes::copy_from_slice(bitmap.as_wire()),
                }),
                None => status(NOT_FOUND, "content not held"),
            }
        }
        U::ChunkRequest(c) => {
            let Ok(hash) = <[u8; 32]>::try_from(&c.content_hash[..]) else {
                return status(BAD_REQUEST, "content hash");
            };
            let store = shared.store.clone();
            let (size, index) = (c.chunk_size, c.index);
            let read =
                tokio::task::spawn_blocking(move || store.read_chunk(&hash, size, index)).await;
            match read {
                Ok(Ok(Some(data))) => {
                    shared.count_served(data.len());
                    U::Chunk(proto::Chunk {
                        content_hash: c.content_hash,
                        index: c.index,
                        data: data.into(),
                    })
                }
                Ok(Ok(None)) => status(NOT_FOUND, "chunk not held"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading a chunk to serve");
                    status(NOT_FOUND, "chunk unreadable")
                }
                Err(_) => status(BUSY, "internal error"),
            }
        }
        _ => status(BAD_REQUEST, "not a request"),
    }
}
