//! Package content, stored content-addressed on disk: `packages/<blake3 hex>`.
//!
//! An upload streams into `incoming/<random>.upload` while it is hashed and counted; only a
//! complete upload within the size limit is synced and renamed to its hash, and only then is
//! it recorded in the database. A crash at any point leaves either nothing visible or a
//! complete file: on start, `incoming/` is emptied and package files the database does not
//! list are removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use data_encoding::HEXLOWER;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The body exceeded the limit; nothing was kept.
    #[error("package exceeds the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body was empty.
    #[error("empty package")]
    Empty,
    /// The body did not arrive in time (in all, or a pause too long); nothing was kept.
    #[error("upload too slow: {0}")]
    TimedOut(&'static str),
    /// Reading the body failed (the client went away); nothing was kept.
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
}

/// A stored, complete upload.
#[derive(Debug, Clone)]
pub struct Stored {
    /// BLAKE3 hash, hex.
    pub hash: String,
    /// Bytes.
    pub size: u64,
}

/// The package directory.
#[derive(Debug, Clone)]
pub struct PackageStore {
    dir: PathBuf,
    incoming: PathBuf,
}

impl PackageStore {
    /// Opens (creating) the store under `data_dir` and drops unfinished uploads.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let dir = data_dir.join("packages");
        let incoming = data_dir.join("incoming");
        for d in [&dir, &incoming] {
            std::fs::create_dir_all(d).map_err(|e| StorageError::Io("creating the store", e))?;
        }
        for entry in
            std::fs::read_dir(&incoming).map_err(|e| StorageError::Io("reading incoming", e))?
        {
            let entry = entry.map_err(|e| StorageError::Io("reading incoming", e))?;
            tracing::warn!(file = %entry.path().display(), "removing an unfinished upload");
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self { dir, incoming })
    }

    /// Removes package files the database does not list (a crash between the rename and the
    /// database insert). Returns how many.
    pub fn remove_unlisted(&self, listed: &HashSet<String>) -> Result<usize, StorageError> {
        let mut removed = 0;
        for entry in
            std::fs::read_dir(&self.dir).map_err(|e| StorageError::Io("reading packages", e))?
        {
            let entry = entry.map_err(|e| StorageError::Io("reading packages", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !listed.contains(&name) {
                tracing::warn!(file = %name, "removing a package file the database does not list");
                let _ = std::fs::remove_file(entry.path());
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Where the content of `hash` is.
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(hash)
    }

    /// Removes a package's file (nothing if it is not there).
    pub async fn remove(&self, hash: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(hash)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::Io("removing a package", e))
            }
            _ => Ok(()),
        }
    }

    /// Streams `body` into the store, at most `limit` bytes, all of them before `deadline`
    /// and with no pause longer than `stall`.
    pub async fn put<S, E>(
        &self,
        body: S,
        limit: u64,
        deadline: tokio::time::Instant,
        stall: std::time::Duration,
    ) -> Result<Stored, StorageError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let tmp = self
            .incoming
            .join(format!("{}.upload", HEXLOWER.encode(&nonce)));
        let result = self.receive(body, limit, deadline, stall, &tmp).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn receive<S, E>(
        &self,
        mut body: S,
        limit: u64,
        deadline: tokio::time::Instant,
        stall: std::time::Duration,
        tmp: &Path,
    ) -> Result<Stored, StorageError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| StorageError::Io("creating an upload", e))?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        loop {
            let next = tokio::time::timeout_at(deadline, tokio::time::timeout(stall, body.next()));
            let chunk = match next.await {
                Err(_) => return Err(StorageError::TimedOut("the upload timeout passed")),
                Ok(Err(_)) => return Err(StorageError::TimedOut("no data for too long")),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            let chunk = chunk.map_err(|e| StorageError::Interrupted(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(StorageError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| StorageError::Io("writing an upload", e))?;
        }
        if size == 0 {
            return Err(StorageError::Empty);
        }
        file.sync_all()
            .await
            .map_err(|e| StorageError::Io("syncing an upload", e))?;
        drop(file);
        let hash = HEXLOWER.encode(hasher.finalize().as_bytes());
        let target = self.path(&hash);
        tokio::fs::rename(tmp, &target)
            .await
            .map_err(|e| StorageError::Io("storing an upload", e))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir).and_then(|d| d.sync_all()))
            .await
            .map_err(|e| StorageError::Io("syncing the store", std::io::Error::other(e)))?
            .map_err(|e| StorageError::Io("syncing the store", e))?;
        Ok(Stored { hash, size })
    }
}
