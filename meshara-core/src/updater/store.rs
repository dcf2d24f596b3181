//! The content cache: verified content addressed by its BLAKE3 hash, and partial downloads
//! whose chunks are each verified before they count.
//!
//! Layout under the cache directory:
//!
//! - `<hex content hash>`: complete content, verified as a whole before it was renamed here.
//! - `<hex content hash>-<chunk size>.part`: a download in progress, pre-sized. Which chunks it
//!   holds is not stored: on resume every chunk is hashed again and those matching their
//!   release count, so a crash mid-write can never leave a chunk counted that is not there.
//!
//! All methods do blocking file I/O; callers run them on the blocking pool.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use data_encoding::HEXLOWER;

use crate::update::{ContentVerifier, Release, UpdateError};

/// A set of chunk indices, in the wire's bitmap layout (bit i = byte i / 8, bit i % 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    bits: Vec<u8>,
    len: usize,
}

impl Bitmap {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            bits: vec![0; len.div_ceil(8)],
            len,
        }
    }

    pub(crate) fn full(len: usize) -> Self {
        let mut b = Self::new(len);
        (0..len).for_each(|i| b.set(i));
        b
    }

    /// Reads a peer's bitmap for `len` chunks; bits past `len` are ignored.
    pub(crate) fn from_wire(bytes: &[u8], len: usize) -> Self {
        let mut b = Self::new(len);
        for (dst, src) in b.bits.iter_mut().zip(bytes) {
            *dst = *src;
        }
        if len % 8 != 0 {
            if let Some(last) = b.bits.last_mut() {
                *last &= (1u8 << (len % 8)) - 1;
            }
        }
        b
    }

    pub(crate) fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    pub(crate) fn set(&mut self, i: usize) {
        if i < self.len {
            self.bits[i / 8] |= 1 << (i % 8);
        }
    }

    pub(crate) fn clear(&mut self, i: usize) {
        if i < self.len {
            self.bits[i / 8] &= !(1 << (i % 8));
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_wire(&self) -> &[u8] {
        &self.bits
    }
}

/// A download in progress: its pre-sized file and the chunks verified so far.
pub(crate) struct Partial {
    pub(crate) release: Release,
    path: PathBuf,
    file: File,
    have: Mutex<Bitmap>,
}

impl Partial {
    pub(crate) fn have(&self) -> MutexGuard<'_, Bitmap> {
        self.have.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held.
    pub(crate) fn held_bytes(&self) -> u64 {
        let have = self.have();
        (0..have.len())
            .filter(|i| have.get(*i))
            .filter_map(|i| self.release.chunk_len(i))
            .map(|l| l as u64)
            .sum()
    }

    /// Checks chunk `index` against the release and, only if it matches, writes it and marks
    /// it held.
    pub(crate) fn store_chunk(&self, index: usize, data: &[u8]) -> Result<(), StoreError> {
        ContentVerifier::check_chunk(&self.release, index, data)?;
        let offset = index as u64 * u64::from(self.release.chunk_size);
        self.file
            .write_all_at(data, offset)
            .map_err(|e| StoreError::Io("writing a chunk", e))?;
        self.have().set(index);
        Ok(())
    }

    fn read_chunk(&self, index: usize) -> io::Result<Option<Vec<u8>>> {
        if !self.have().get(index) {
            return Ok(None);
        }
        let Some(len) = self.release.chunk_len(index) else {
            return Ok(None);
        };
        let mut buf = vec![0; len];
        self.file
            .read_exact_at(&mut buf, index as u64 * u64::from(self.release.chunk_size))?;
        Ok(Some(buf))
    }
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Verify(#[from] UpdateError),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] io::Error),
    #[error("cache full: {needed} more bytes do not fit the {limit}-byte limit")]
    Full { needed: u64, limit: u64 },
}

#[derive(Debug)]
struct Entry {
    size: u64,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    complete: HashMap<[u8; 32], Entry>,
    partial: HashMap<([u8; 32], u32), Arc<Partial>>,
    /// `.part` files found on disk and not yet resumed, with their sizes.
    stale: HashMap<PathBuf, u64>,
    clock: u64,
}

/// The content cache (see the module docs).
pub(crate) struct Store {
    dir: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
}

fn hex(hash: &[u8; 32]) -> String {
    HEXLOWER.encode(hash)
}

impl Store {
    /// Opens the cache in `dir`, creating it, and indexes what is there.
    pub(crate) fn open(dir: PathBuf, limit: u64) -> Result<Store, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| StoreError::Io("creating the cache", e))?;
        let mut inner = Inner::default();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::Io("reading the cache", e))? {
            let entry = entry.map_err(|e| StoreError::Io("reading the cache", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if name.ends_with(".part") {
                inner.stale.insert(entry.path(), meta.len());
            } else if let Some(hash) = parse_hash(&name) {
                inner.complete.insert(
                    hash,
                    Entry {
                        size: meta.len(),
                        last_used: 0,
                    },
                );
            } else if name.ends_with(".tmp") {
                // A verified copy interrupted before its rename: never counted, so remove it.
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Store {
            dir,
            limit,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn complete_file(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(hex(hash))
    }

    /// The path of complete content, marking it recently used.
    pub(crate) fn complete(&self, hash: &[u8; 32]) -> Option<PathBuf> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let entry = inner.complete.get_mut(hash)?;
        entry.last_used = clock;
        Some(self.complete_file(hash))
    }

    /// Bytes in use: complete content and partial files.
    pub(crate) fn used(&self) -> u64 {
        let inner = self.lock();
        inner.complete.values().map(|e| e.size).sum::<u64>()
            + inner.partial.values().map(|p| p.release.size).sum::<u64>()
            + inner.stale.values().sum::<u64>()
    }

    /// Makes room for `needed` bytes, evicting stale partial files first, then the least
    /// recently used complete content not in `pinned`.
    pub(crate) fn reserve(
        &self,
        needed: u64,
        pinned: &HashSet<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let full = || StoreError::Full {
            needed,
            limit: self.limit,
        };
        if needed > self.limit {
            return Err(full());
        }
        loop {
            if self.used().saturating_add(needed) <= self.limit {
                return Ok(());
            }
            let mut inner = self.lock();
            if let Some(path) = inner.stale.keys().next().cloned() {
                inner.stale.remove(&path);
                drop(inner);
                let _ = fs::remove_file(&path);
                continue;
            }
            let victim = inner
                .complete
                .iter()
                .filter(|(h, _)| !pinned.contains(*h))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(h, _)| *h);
            let Some(victim) = victim else {
                return Err(full());
            };
            inner.complete.remove(&victim);
            drop(inner);
            tracing::debug!(content = %hex(&victim), "evicted from the update cache");
            let _ = fs::remove_file(self.complete_file(&victim));
        }
    }

    /// The partial download of `release`, opened (and its chunks verified again) if it is
    /// not open yet. Returns it and how many of its bytes were already held.
    pub(crate) fn open_partial(&self, release: &Release) -> Result<Arc<Partial>, StoreError> {
        let key = (release.content_hash, release.chunk_size);
        if let Some(p) = self.lock().partial.get(&key) {
            return Ok(p.clone());
        }
        let path = self.dir.join(format!(
            "{}-{}.part",
            hex(&release.content_hash),
            release.chunk_size
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::Io("opening a partial download", e))?;
        let existing = file
            .metadata()
            .map_err(|e| StoreError::Io("opening a partial download", e))?
            .len();
        file.set_len(release.size)
            .map_err(|e| StoreError::Io("sizing a partial download", e))?;
        let mut have = Bitmap::new(release.chunk_hashes.len());
        if existing > 0 {
            let mut buf = vec![0; release.chunk_size as usize];
            for i in 0..release.chunk_hashes.len() {
                let Some(len) = release.chunk_len(i) else {
                    break;
                };
                let offset = i as u64 * u64::from(release.chunk_size);
                if offset >= existing {
                    break;
                }
                file.read_exact_at(&mut buf[..len], offset)
                    .map_err(|e| StoreError::Io("reading a partial download", e))?;
                if ContentVerifier::check_chunk(release, i, &buf[..len]).is_ok() {
                    have.set(i);
                }
            }
        }
        let partial = Arc::new(Partial {
            release: release.clone(),
            path: path.clone(),
            file,
            have: Mutex::new(have),
        });
        let mut inner = self.lock();
        inner.stale.remove(&path);
        Ok(inner.partial.entry(key).or_insert(partial).clone())
    }

    /// Verifies a partial download whose chunks are all held as a whole and moves it into
    /// the cache. On a mismatch the partial file is removed.
    pub(crate) fn finish_partial(&self, partial: &Partial) -> Result<PathBuf, StoreError> {
        let release = &partial.release;
        let key = (release.content_hash, release.chunk_size);
        let verified = verify_file(&partial.path, release);
        self.lock().partial.remove(&key);
        if let Err(e) = verified {
            let _ = fs::remove_file(&partial.path);
            return Err(e);
        }
        partial
            .file
            .sync_all()
            .map_err(|e| StoreError::Io("syncing a download", e))?;
        let target = self.complete_file(&release.content_hash);
        fs::rename(&partial.path, &target)
            .map_err(|e| StoreError::Io("moving a download into the cache", e))?;
        self.insert_entry(release.content_hash, release.size);
        Ok(target)
    }

    fn insert_entry(&self, hash: [u8; 32], size: u64) {
        let mut inner = self.lock();
        inner.clock += 1;
        let last_used = inner.clock;
        inner.complete.insert(hash, Entry { size, last_used });
    }

    /// Copies (or hard-links) `source` into the cache as `release`'s content after verifying
    /// it as a whole.
    pub(crate) fn insert_file(
        &self,
        release: &Release,
        source: &Path,
    ) -> Result<PathBuf, StoreError> {
        let target = self.complete_file(&release.content_hash);
        if self.lock().complete.contains_key(&release.content_hash) {
            return Ok(target);
        }
        verify_file(source, release)?;
        let tmp = self.dir.join(format!("{}.tmp", hex(&release.content_hash)));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(source, &tmp).is_err() {
            fs::copy(source, &tmp).map_err(|e| StoreError::Io("copying content", e))?;
        }
        // Verify the copy too: the source could have changed between the check and the copy.
        if let Err(e) = verify_file(&tmp, release) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &target).map_err(|e| StoreError::Io("adding content", e))?;
        self.insert_entry(release.content_hash, release.size);
        Ok(target)
    }

    /// Which chunks of `hash` in `chunk_size` chunks are held, or `None`.
    pub(crate) fn have(&self, hash: &[u8; 32], chunk_size: u32) -> Option<Bitmap> {
        let inner = self.lock();
        if let Some(e) = inner.complete.get(hash) {
            let chunks = e.size.div_ceil(u64::from(chunk_size.max(1)));
            return usize::try_from(chunks)
                .ok()
                .filter(|c| *c <= crate::update::MAX_CHUNKS)
                .map(Bitmap::full);
        }
        inner
            .partial
            .get(&(*hash, chunk_size))
            .map(|p| p.have().clone())
    }

    /// Forgets complete content and removes its file (it no longer verifies).
    pub(crate) fn evict(&self, hash: &[u8; 32]) {
        self.lock().complete.remove(hash);
        let _ = fs::remove_file(self.complete_file(hash));
    }

    /// Chunk `index` of `hash` in `chunk_size` chunks, if held.
    pub(crate) fn read_chunk(
        &self,
        hash: &[u8; 32],
        chunk_size: u32,
        index: u32,
    ) -> io::Result<Option<Vec<u8>>> {
        let (complete, partial) = {
            let inner = self.lock();
            (
                inner.complete.get(hash).map(|e| e.size),
                inner.partial.get(&(*hash, chunk_size)).cloned(),
            )
        };
        if let Some(size) = complete {
            let offset = u64::from(index) * u64::from(chunk_size);
            if offset >= size {
                return Ok(None);
            }
            let len = (size - offset).min(u64::from(chunk_size)) as usize;
            let file = match File::open(self.complete_file(hash)) {
                Ok(f) => f,
                // Evicted in between.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, offset)?;
            return Ok(Some(buf));
        }
        match partial {
            Some(p) => p.read_chunk(index as usize),
            None => Ok(None),
        }
    }
}

fn parse_hash(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    HEXLOWER.decode(name.as_bytes()).ok()?.try_into().ok()
}

/// Hashes the file at `path` as `release`'s content, cutting off at the declared size.
pub(crate) fn verify_file(path: &Path, release: &Release) -> Result<(), StoreError> {
    let mut file = File::open(path).map_err(|e| StoreError::Io("opening content", e))?;
    let mut verifier = ContentVerifier::new(release);
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| StoreError::Io("reading content", e))?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n])?;
    }
    verifier.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(content: &[u8], chunk: u32) -> Release {
        Release::for_content("app", "stable", "1.0.0", 1, u64::MAX, content, chunk).unwrap()
    }

    #[test]
    fn bitmap_wire_round_trip_ignores_extra_bits() {
        let mut b = Bitmap::new(10);
        b.set(0);
        b.set(9);
        b.set(10);
        assert_eq!(b.count(), 2);
        let back = Bitmap::from_wire(&[0xff, 0xff, 0xff], 10);
        assert_eq!(back.count(), 10);
        assert!(!back.get(10));
    }

    #[test]
    fn partial_resumes_with_only_verified_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let r = release(&content, 1000);
        let store = Store::open(dir.path().into(), 1 << 20).unwrap();
        let p = store.open_partial(&r).unwrap();
        p.store_chunk(0, &content[..1000]).unwrap();
        p.store_chunk(3, &content[3000..4000]).unwrap();
        assert!(p.store_chunk(4, &content[3000..4000]).is_err());
        assert!(p.store_chunk(9, &[0; 1001]).is_err());
        drop(p);
        drop(store);

        // Corrupt chunk 3 on disk, as a crash mid-write would.
        let part = dir
            .path()
            .join(format!("{}-1000.part", hex(&r.content_hash)));
        let f = OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(b"x", 3500).unwrap();

        let store = Store::open(dir.path().into(), 1 << 20).unwrap();
        let p = store.open_partial(&r).unwrap();
        assert!(p.have().get(0));
        assert!(!p.have().get(3));
        assert_eq!(p.held_bytes(), 1000);
        for i in 1..10 {
            p.store_chunk(i, &content[i * 1000..(i + 1) * 1000])
                .unwrap();
        }
        let path = store.finish_partial(&p).unwrap();
        assert_eq!(fs::read(path).unwrap(), content);
        assert_eq!(store.have(&r.content_hash, 4096).unwrap().count(), 3);
        assert_eq!(
            store.read_chunk(&r.content_hash, 1000, 9).unwrap().unwrap(),
            &content[9000..]
        );
        assert!(
            store
                .read_chunk(&r.content_hash, 1000, 10)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn eviction_keeps_pinned_content_and_refuses_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().into(), 2500).unwrap();
        let mut hashes = vec![];
        for n in 0..2u8 {
            let content = vec![n; 1000];
            let r = release(&content, 512);
            let src = dir.path().join(format!("src{n}"));
            fs::write(&src, &content).unwrap();
            store.reserve(r.size, &HashSet::new()).unwrap();
            store.insert_file(&r, &src).unwrap();
            hashes.push(r.content_hash);
        }
        // Sources are outside the limit's accounting; only cache entries count.
        assert_eq!(store.used(), 2000);
        let pinned: HashSet<_> = [hashes[0]].into();
        store.reserve(1000, &pinned).unwrap();
        assert!(store.complete(&hashes[0]).is_some());
        assert!(store.complete(&hashes[1]).is_none());
        assert!(matches!(
            store.reserve(2000, &pinned),
            Err(StoreError::Full { .. })
        ));
        assert!(matches!(
            store.reserve(3000, &HashSet::new()),
            Err(StoreError::Full { .. })
        ));
    }

    #[test]
    fn content_that_does_not_match_is_not_inserted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().into(), 1 << 20).unwrap();
        let r = release(b"hello world", 4);
        let src = dir.path().join("src");
        fs::write(&src, b"hello world!").unwrap();
        assert!(matches!(
            store.insert_file(&r, &src),
            Err(StoreError::Verify(UpdateError::ContentTooLarge { .. }))
        ));
        fs::write(&src, b"hello worle").unwrap();
        assert!(matches!(
            store.insert_file(&r, &src),
            Err(StoreError::Verify(UpdateError::ContentMismatch(_)))
        ));
        assert!(store.complete(&r.content_hash).is_none());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
