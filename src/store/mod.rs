//! Storage: versions of keys in LMDB (through heed), the time index, the
//! anti-entropy buckets and summary, and the node's own metadata.
//!
//! Tables (all byte keys and values):
//! - `versions`: key → encoded [`Version`]; exactly one version per key.
//! - `by_time`: timestamp (8 bytes, big-endian) ‖ key → nothing. Answers
//!   "what changed since T" and "latest N".
//! - `tombs`: timestamp ‖ key → nothing, for tombstones only, so the purge
//!   reads only what it may delete.
//! - `buckets`: leaf bucket (2 bytes) ‖ key → stamp. Lists the versions of one
//!   anti-entropy bucket without touching their data.
//! - `tree`: one record, the 4096 level-3 hashes of the summary tree
//!   (`merkle`); the leaf hashes below are computed from `buckets` on demand.
//! - `meta`: name → bytes: node identity, members, sync marks.
//!
//! Invariant: a version, its time index entry and its bucket entry change
//! together in [`Store::put_version`] or [`Store::remove_version`], inside
//! the caller's write transaction; the summary changes they imply are
//! written by [`Store::commit`] in that same transaction, which then applies
//! them to the in-memory tree. Only the writer thread (`store::writer`) and
//! the offline tools write versions; `meta_put` and `meta_delete` write
//! single metadata entries in their own transactions, from other threads.

pub mod condition;
pub mod datafile;
pub mod merkle;
pub mod version;
pub mod writer;

use std::fmt;
use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::RwLock;

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

pub use merkle::Tree;
pub use version::{merge, Damage, Merge, Stamp, Version, VersionId};

/// Longest accepted key in bytes. LMDB keys are at most 511 bytes and the
/// time index prefixes 8 bytes to the key.
pub const MAX_KEY_BYTES: usize = 500;

/// Checks the rules every key follows, whether it came from a client or a
/// peer: at most [`MAX_KEY_BYTES`], no control characters, no empty, `.` or
/// `..` path segment. A listing prefix (`is_prefix`) may end with `/`.
pub fn check_key(key: &str, is_prefix: bool) -> std::result::Result<(), String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key is {} bytes long; the limit is {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("key contains a control character".into());
    }
    let body = if is_prefix {
        key.strip_suffix('/').unwrap_or(key)
    } else {
        key
    };
    for segment in body.split('/') {
        match segment {
            "" => {
                return Err(
                    "key has an empty path segment (\"//\", or a leading or trailing \"/\")".into(),
                )
            }
            "." | ".." => return Err(format!("key has a \"{segment}\" path segment")),
            _ => {}
        }
    }
    Ok(())
}

/// Stored versions found damaged on a read since start (for /metrics).
pub static CHECKSUM_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Keys found damaged, waiting for a repair from a peer (at most
/// `DAMAGED_QUEUE_MAX`; the scrub finds the others again).
static DAMAGED_KEYS: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
const DAMAGED_QUEUE_MAX: usize = 10_000;

/// Takes the keys found damaged since the last call.
pub fn take_damaged() -> Vec<String> {
    let mut keys = DAMAGED_KEYS.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *keys).into_iter().collect()
}

/// A damaged version of `key` in the versions table: logged (naming the
/// key and the table), counted, queued for repair, and reported as
/// corruption.
fn damaged(key: &[u8], d: Damage) -> StoreError {
    CHECKSUM_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = String::from_utf8_lossy(key);
    {
        let mut keys = DAMAGED_KEYS.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() < DAMAGED_QUEUE_MAX {
            keys.insert(key.to_string());
        }
    }
    let what = match d {
        Damage::Checksum => "checksum mismatch",
        Damage::Malformed => "record does not decode",
    };
    log::error!("damaged version of {key:?} in table versions: {what}; it is not served");
    StoreError::Corrupt(format!("{what} in the stored version of {key:?}"))
}

/// Free space below which a failed write is taken for a full disk.
const NO_SPACE_BYTES: u64 = 4 * 1024 * 1024;

/// A storage failure. Only a record that does not decode is "corrupt";
/// a full map, a full disk, an I/O failure and a stopped writer each say
/// what they are.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The LMDB map is full (map_size_mb): the write was not made.
    MapFull,
    /// The disk under the data directory is full: the write was not made.
    NoSpace,
    /// The data directory cannot be used.
    DataDir(String),
    /// The disk failed a read or write (other than being full).
    Io(String),
    /// Any other LMDB failure.
    Lmdb(String),
    /// A stored record does not decode.
    Corrupt(String),
    /// The writer thread has stopped: the node is stopping.
    WriterStopped,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::MapFull => write!(f, "storage is full (raise map_size_mb)"),
            StoreError::NoSpace => write!(f, "no space left on device"),
            StoreError::DataDir(m) => write!(f, "{m}"),
            StoreError::Io(m) => write!(f, "I/O error: {m}"),
            StoreError::Lmdb(m) => write!(f, "storage error: {m}"),
            StoreError::Corrupt(m) => write!(f, "corrupt record: {m}"),
            StoreError::WriterStopped => write!(f, "the writer has stopped"),
        }
    }
}

impl std::error::Error for StoreError {}

/// errno values that mean the disk (or the user's quota) is full.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::MapFull,
            // The B-tree itself is damaged: that is corruption too.
            heed::Error::Mdb(
                e @ (heed::MdbError::Corrupted
                | heed::MdbError::PageNotFound
                | heed::MdbError::Invalid),
            ) => StoreError::Corrupt(format!("database structure: {e}")),
            heed::Error::Io(io) if matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT)) => {
                StoreError::NoSpace
            }
            heed::Error::Io(io) => StoreError::Io(io.to_string()),
            other => StoreError::Lmdb(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

type Db = Database<'static, Bytes, Bytes>;

/// A page of versions from the time index.
#[derive(Debug, Default)]
pub struct Page {
    pub versions: Vec<(String, Version)>,
    /// Where the next page starts (exclusive), when there may be more.
    pub next: Option<(u64, String)>,
}

/// A page of bucket entries.
#[derive(Debug, Default)]
pub struct BucketPage {
    pub entries: Vec<(u16, String, Stamp)>,
    /// Where the next page starts (exclusive), when there is more.
    pub next: Option<(u16, String)>,
}

/// One entry of a prefix listing.
#[derive(Debug, PartialEq)]
pub enum Listed {
    /// A key and, when asked for, its version.
    Key(String, Option<Version>),
    /// A common prefix ending with the separator (`?separator=/`).
    Prefix(String),
}

/// The open database of one node.
pub struct Store {
    env: Env<WithoutTls>,
    versions: Db,
    by_time: Db,
    tombs: Db,
    buckets: Db,
    tree_db: Db,
    meta: Db,
    /// Values with an expiry: (expiry ms, key) -> the value's uuid. An
    /// entry whose value was replaced since is dropped when it comes due.
    expiry: Db,
    /// In-memory copy of the `tree` table with its inner levels.
    tree: RwLock<Tree>,
    /// Held for the life of the store: one process per data directory.
    _lock: File,
    /// The data directory (to tell a full disk from other I/O failures).
    dir: std::path::PathBuf,
    /// The commit index: how many versions this node has committed, ever
    /// (kept in `meta`, so never lower after a restart).
    index: std::sync::atomic::AtomicU64,
}

/// What a write transaction changed: the summary's bucket-hash deltas, and
/// the keys that got a new version (in order).
#[derive(Debug, Default)]
pub struct Touched {
    pub deltas: Vec<(u16, u64)>,
    pub keys: Vec<String>,
}

/// Meta name of the commit index.
const META_INDEX: &str = "commit_index";

/// Key of the time index and tombstone tables.
pub fn time_key(ts: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn bucket_key(leaf: u16, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&leaf.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn split_time_key(k: &[u8]) -> Option<(u64, &[u8])> {
    if k.len() < 8 {
        return None;
    }
    Some((u64::from_be_bytes(k[..8].try_into().ok()?), &k[8..]))
}

fn utf8(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt("key is not UTF-8".into()))
}

/// Meta name of the summary format; a missing entry means the tree must be
/// rebuilt from the versions (a data directory from before the summary).
const META_TREE_FORMAT: &str = "tree_format";
/// The summary layout this build writes.
const TREE_FORMAT: &[u8] = b"2";
/// Key of the level-3 hashes in the `tree` table.
const TREE_RECORD: &[u8] = b"level3";

impl Store {
    /// Opens (creating if needed) the store in `dir`, locking it against a
    /// second process.
    pub fn open(dir: &Path, map_size_mb: u64) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::DataDir(format!("data_dir: cannot create {}: {e}", dir.display()))
        })?;
        let lock_path = dir.join("kvs.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::DataDir(format!("data_dir: cannot write in {}: {e}", dir.display()))
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::DataDir(format!(
                "data_dir: {} is in use by another kvs process",
                dir.display()
            )));
        }
        // Before LMDB maps the file: a truncated file would fault the map,
        // an emptied one would open as an empty database.
        datafile::check_before_open(dir).map_err(StoreError::DataDir)?;
        let map_size = (map_size_mb as usize) * 1024 * 1024;
        // SAFETY: the directory is locked above, so no other kvs process
        // maps it, and this process opens each directory once (heed refuses
        // a second open). No flag weakens durability.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size)
                .max_dbs(8)
                .max_readers(1024)
                .open(dir)
        }
        .map_err(|e| {
            StoreError::DataDir(format!(
                "data_dir: cannot open LMDB in {}: {e}",
                dir.display()
            ))
        })?;
        let wtxn = env.write_txn()?;
        let (versions, by_time, tombs, buckets, tree_db, meta, expiry) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                let mut db = |name| opener.create_database::<Bytes, Bytes>(wtxn, Some(name));
                let dbs = (
                    db("versions")?,
                    db("by_time")?,
                    db("tombs")?,
                    db("buckets")?,
                    db("tree")?,
                    db("meta")?,
                    db("expiry")?,
                );
                Ok(heed::CommitOrAbort::<_, ()>::Commit(dbs))
            })?
            .unwrap_commit();
        let store = Store {
            env,
            versions,
            by_time,
            tombs,
            buckets,
            tree_db,
            meta,
            expiry,
            tree: RwLock::new(Tree::new()),
            _lock: lock,
            dir: dir.to_path_buf(),
            index: std::sync::atomic::AtomicU64::new(0),
        };
        let index = store
            .meta_get(META_INDEX)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        store
            .index
            .store(index, std::sync::atomic::Ordering::Release);
        store.load_tree()?;
        datafile::mark(dir).map_err(StoreError::DataDir)?;
        Ok(store)
    }

    pub fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>> {
        Ok(self.env.read_txn()?)
    }

    fn write_txn(&self) -> Result<RwTxn<'_>> {
        Ok(self.env.write_txn()?)
    }

    /// Loads the summary from the `tree` table, rebuilding it from the
    /// versions when the table predates it.
    fn load_tree(&self) -> Result<()> {
        let rtxn = self.read_txn()?;
        let format = self
            .meta
            .get(&rtxn, META_TREE_FORMAT.as_bytes())?
            .map(|v| v.to_vec());
        let stored = self
            .tree_db
            .get(&rtxn, TREE_RECORD)?
            .and_then(merkle::decode_stored);
        drop(rtxn);
        let tree = match (format.as_deref(), stored) {
            (Some(TREE_FORMAT), Some(hashes)) => Tree::from_stored(&hashes),
            (Some(TREE_FORMAT), None) => Tree::new(),
            _ => {
                let tree = self.rebuild_tree()?;
                let keys = self.counts()?.0;
                if keys > 0 {
                    log::info!("rebuilt the anti-entropy summary from {keys} keys");
                }
                tree
            }
        };
        *self.tree.write().unwrap_or_else(|e| e.into_inner()) = tree;
        Ok(())
    }

    /// Recomputes the summary from the versions alone.
    fn tree_from_versions(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<(Tree, Vec<u64>)> {
        let mut tree = Tree::new();
        let mut leaves = vec![0u64; merkle::LEAVES];
        for item in self.versions.iter(txn)? {
            let (k, v) = item?;
            let stamp = version::decode_stamp(v).ok_or_else(|| {
                StoreError::Corrupt(format!("version of {:?}", String::from_utf8_lossy(k)))
            })?;
            let leaf = merkle::leaf_of(k);
            let h = merkle::version_hash(k, &stamp.encode());
            tree.apply(leaf, h);
            leaves[leaf as usize] ^= h;
        }
        Ok((tree, leaves))
    }

    /// Recomputes the bucket index and summary from the versions table and
    /// stores them.
    fn rebuild_tree(&self) -> Result<Tree> {
        let mut wtxn = self.write_txn()?;
        self.buckets.clear(&mut wtxn)?;
        self.tree_db.clear(&mut wtxn)?;
        let (tree, _) = self.tree_from_versions(&wtxn)?;
        let mut entries = Vec::new();
        for item in self.versions.iter(&wtxn)? {
            let (k, v) = item?;
            if let Some(stamp) = version::decode_stamp(v) {
                entries.push((bucket_key(merkle::leaf_of(k), k), stamp.encode()));
            }
        }
        for (k, v) in &entries {
            self.buckets.put(&mut wtxn, k, v)?;
        }
        self.tree_db.put(
            &mut wtxn,
            TREE_RECORD,
            &merkle::encode_stored(tree.stored()),
        )?;
        self.meta
            .put(&mut wtxn, META_TREE_FORMAT.as_bytes(), TREE_FORMAT)?;
        wtxn.commit()?;
        Ok(tree)
    }

    /// Recomputes the summary from the versions and compares it with the
    /// one kept up to date by writes, and every leaf hash with the one the
    /// bucket index gives. True when they all agree.
    pub fn verify_tree(&self) -> Result<bool> {
        let rtxn = self.read_txn()?;
        let (fresh, leaves) = self.tree_from_versions(&rtxn)?;
        drop(rtxn);
        if fresh != *self.tree.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        for node in 0..merkle::STORED_NODES {
            let indexed = self.leaf_hashes(node)?;
            if indexed[..] != leaves[node * merkle::FANOUT..(node + 1) * merkle::FANOUT] {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The 16 leaf hashes below a level-3 node, from the bucket index.
    pub fn leaf_hashes(&self, node: usize) -> Result<[u64; merkle::FANOUT]> {
        let mut out = [0u64; merkle::FANOUT];
        if node >= merkle::STORED_NODES {
            return Ok(out);
        }
        let rtxn = self.read_txn()?;
        let first = (node * merkle::FANOUT) as u16;
        let start = first.to_be_bytes();
        let end = ((node + 1) * merkle::FANOUT) as u32;
        let end_key = (end as u16).to_be_bytes();
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = if end as usize >= merkle::LEAVES {
            (Bound::Included(&start[..]), Bound::Unbounded)
        } else {
            (Bound::Included(&start[..]), Bound::Excluded(&end_key[..]))
        };
        for item in self.buckets.range(&rtxn, &bounds)? {
            let (k, v) = item?;
            if k.len() < 2 || v.len() < 25 {
                return Err(StoreError::Corrupt("bucket entry".into()));
            }
            let leaf = u16::from_be_bytes([k[0], k[1]]);
            let stamp: [u8; 25] = v[..25].try_into().expect("25 bytes");
            out[leaf as usize - first as usize] ^= merkle::version_hash(&k[2..], &stamp);
        }
        Ok(out)
    }

    // ----- reads -----

    pub fn get(&self, key: &str) -> Result<Option<Version>> {
        let rtxn = self.read_txn()?;
        self.get_in(&rtxn, key)
    }

    pub fn get_in(&self, txn: &RoTxn<'_, WithoutTls>, key: &str) -> Result<Option<Version>> {
        match self.versions.get(txn, key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Version::decode(key.as_bytes(), bytes)
                .map(Some)
                .map_err(|d| damaged(key.as_bytes(), d)),
        }
    }

    /// Whether the stored version of `key` fails its checksum (or does not
    /// decode).
    pub fn is_damaged_in(&self, txn: &RoTxn<'_, WithoutTls>, key: &str) -> Result<bool> {
        Ok(match self.versions.get(txn, key.as_bytes())? {
            None => false,
            Some(bytes) => version::verify(key.as_bytes(), bytes).is_err(),
        })
    }

    /// Checks up to `limit` stored versions after `after` (all from the
    /// start when `None`), in key order; damaged ones are logged, counted
    /// and queued for repair like any found on a read. Returns how many
    /// were checked, how many were damaged, and where to go on (`None`
    /// at the end).
    pub fn scrub_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(usize, usize, Option<String>)> {
        let rtxn = self.read_txn()?;
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = match after {
            Some(a) => (Bound::Excluded(a.as_bytes()), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let (mut checked, mut bad, mut last) = (0, 0, None);
        for item in self.versions.range(&rtxn, &bounds)? {
            let (k, v) = item?;
            if checked >= limit {
                return Ok((checked, bad, last));
            }
            checked += 1;
            if let Err(d) = version::verify(k, v) {
                bad += 1;
                let _ = damaged(k, d);
            }
            last = Some(String::from_utf8_lossy(k).into_owned());
        }
        Ok((checked, bad, None))
    }

    /// The stamp of the version of `key`, without copying its data.
    pub fn stamp_in(&self, txn: &RoTxn<'_, WithoutTls>, key: &str) -> Result<Option<Stamp>> {
        match self.versions.get(txn, key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => version::decode_stamp(bytes)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("version of {key:?}"))),
        }
    }

    /// Calls `f` with the stored bytes of a live value (not a tombstone),
    /// borrowed from LMDB, and its stamp. Returns None when absent or deleted.
    pub fn with_value<T>(
        &self,
        key: &str,
        f: impl FnOnce(&Stamp, &[u8], Option<u64>) -> T,
    ) -> Result<Option<T>> {
        let rtxn = self.read_txn()?;
        let Some(bytes) = self.versions.get(&rtxn, key.as_bytes())? else {
            return Ok(None);
        };
        let stamp = version::decode_stamp(bytes)
            .ok_or_else(|| damaged(key.as_bytes(), Damage::Malformed))?;
        let expires = version::decode_expires(bytes);
        if stamp.deleted || version::is_expired(expires, crate::clock::now_ms()) {
            return Ok(None);
        }
        version::verify(key.as_bytes(), bytes).map_err(|d| damaged(key.as_bytes(), d))?;
        Ok(Some(f(&stamp, version::encoded_data(bytes), expires)))
    }

    /// Versions from the time index, oldest first, strictly after
    /// `(after_ts, after_key)` (or from `after_ts` inclusive when `after_key`
    /// is None), at most `limit` entries or about `max_bytes` of data.
    pub fn since(
        &self,
        after_ts: u64,
        after_key: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page> {
        let rtxn = self.read_txn()?;
        let start = match after_key {
            Some(k) => Bound::Excluded(time_key(after_ts, k.as_bytes())),
            None => Bound::Included(time_key(after_ts, b"")),
        };
        let bounds = (start.as_ref().map(|v| v.as_slice()), Bound::Unbounded);
        let mut page = Page::default();
        let mut bytes = 0usize;
        for item in self.by_time.range(&rtxn, &bounds)? {
            let (tk, _) = item?;
            let Some((ts, key)) = split_time_key(tk) else {
                continue;
            };
            if page.versions.len() >= limit.max(1) || bytes >= max_bytes {
                if let Some((k, v)) = page.versions.last() {
                    page.next = Some((v.stamp.timestamp, k.clone()));
                }
                break;
            }
            let key = utf8(key)?;
            if let Some(v) = self.get_in(&rtxn, &key)? {
                if v.stamp.timestamp == ts {
                    bytes += key.len() + v.data.len() + 64;
                    page.versions.push((key, v));
                }
            }
        }
        Ok(page)
    }

    /// The `n` most recent versions' stamps, newest first.
    pub fn latest(&self, n: usize) -> Result<Vec<(String, Stamp)>> {
        let rtxn = self.read_txn()?;
        let mut out = Vec::with_capacity(n);
        for item in self.by_time.rev_iter(&rtxn)? {
            if out.len() >= n {
                break;
            }
            let (tk, _) = item?;
            let Some((_, key)) = split_time_key(tk) else {
                continue;
            };
            let key = utf8(key)?;
            if let Some(stamp) = self.stamp_in(&rtxn, &key)? {
                out.push((key, stamp));
            }
        }
        Ok(out)
    }

    /// The newest timestamp stored, if any.
    pub fn newest_timestamp(&self) -> Result<Option<u64>> {
        let rtxn = self.read_txn()?;
        Ok(self
            .by_time
            .last(&rtxn)?
            .and_then(|(k, _)| split_time_key(k).map(|(ts, _)| ts)))
    }

    /// Stored versions that cannot be served as they are, at most `max`,
    /// each with the reason: a checksum that does not match, a record that
    /// does not decode, or a value that is not one valid UTF-8 JSON document
    /// (values written before kvs checked UTF-8 inside strings). Also counts
    /// the versions written before checksums.
    pub fn damaged_values(&self, max: usize) -> Result<(Vec<(String, String)>, u64)> {
        let rtxn = self.read_txn()?;
        let mut bad = Vec::new();
        let mut unchecked = 0u64;
        for item in self.versions.iter(&rtxn)? {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(k).into_owned();
            if !version::has_checksum(v) {
                unchecked += 1;
            }
            let reason = match Version::decode(k, v) {
                Err(Damage::Checksum) => Some("checksum mismatch"),
                Err(Damage::Malformed) => Some("record does not decode"),
                Ok(version) if version.stamp.deleted => None,
                Ok(version) => {
                    let valid = std::str::from_utf8(&version.data).is_ok_and(|text| {
                        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
                    });
                    (!valid).then_some("not UTF-8 JSON")
                }
            };
            if let Some(reason) = reason {
                bad.push((key, reason.to_string()));
                if bad.len() >= max {
                    break;
                }
            }
        }
        Ok((bad, unchecked))
    }

    /// Number of versions (values and tombstones) and of tombstones.
    pub fn counts(&self) -> Result<(u64, u64)> {
        let rtxn = self.read_txn()?;
        Ok((self.versions.len(&rtxn)?, self.tombs.len(&rtxn)?))
    }

    /// Stamps of the versions in the given leaf buckets (sorted ascending),
    /// starting after `after`, at most `limit` entries.
    pub fn bucket_entries(
        &self,
        leaves: &[u16],
        after: Option<(u16, &str)>,
        limit: usize,
    ) -> Result<BucketPage> {
        let rtxn = self.read_txn()?;
        let mut page = BucketPage::default();
        let mut leaves: Vec<u16> = leaves.to_vec();
        leaves.sort_unstable();
        leaves.dedup();
        for leaf in leaves {
            if let Some((after_leaf, _)) = after {
                if leaf < after_leaf {
                    continue;
                }
            }
            let prefix = leaf.to_be_bytes();
            let start = match after {
                Some((after_leaf, k)) if after_leaf == leaf => {
                    Bound::Excluded(bucket_key(leaf, k.as_bytes()))
                }
                _ => Bound::Included(prefix.to_vec()),
            };
            let end = match leaf.checked_add(1) {
                Some(n) => Bound::Excluded(n.to_be_bytes().to_vec()),
                None => Bound::Unbounded,
            };
            let bounds = (
                start.as_ref().map(|v| v.as_slice()),
                end.as_ref().map(|v| v.as_slice()),
            );
            for item in self.buckets.range(&rtxn, &bounds)? {
                let (k, v) = item?;
                if page.entries.len() >= limit {
                    let (l, key, _) = page.entries.last().expect("page is not empty");
                    page.next = Some((*l, key.clone()));
                    return Ok(page);
                }
                let stamp =
                    Stamp::decode(v).ok_or_else(|| StoreError::Corrupt("bucket entry".into()))?;
                page.entries.push((leaf, utf8(&k[2..])?, stamp));
            }
        }
        Ok(page)
    }

    /// The root hash of the summary.
    pub fn tree_root(&self) -> u64 {
        self.tree.read().unwrap_or_else(|e| e.into_inner()).root()
    }

    /// Children hashes of the given nodes at `level`; None for a bad node.
    pub fn tree_children(
        &self,
        level: usize,
        nodes: &[usize],
    ) -> Result<Option<Vec<[u64; merkle::FANOUT]>>> {
        if level == merkle::STORED {
            if nodes.iter().any(|&n| n >= merkle::STORED_NODES) {
                return Ok(None);
            }
            return nodes
                .iter()
                .map(|&n| self.leaf_hashes(n))
                .collect::<Result<Vec<_>>>()
                .map(Some);
        }
        let tree = self.tree.read().unwrap_or_else(|e| e.into_inner());
        Ok(nodes.iter().map(|&n| tree.children(level, n)).collect())
    }

    /// Keys under `prefix` in key order, after `after`, tombstones left out,
    /// at most `limit` entries; the flag says whether more follow. With a
    /// separator, keys that continue past the next separator collapse into
    /// one [`Listed::Prefix`].
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        separator: Option<char>,
        with_values: bool,
        limit: usize,
    ) -> Result<(Vec<Listed>, bool)> {
        let rtxn = self.read_txn()?;
        let mut out = Vec::new();
        let now = crate::clock::now_ms();
        let mut start: Bound<Vec<u8>> = match after {
            Some(a) if !a.is_empty() && a.as_bytes() >= prefix.as_bytes() => match separator {
                Some(sep) if a.ends_with(sep) => match successor(a.as_bytes()) {
                    Some(s) => Bound::Included(s),
                    None => return Ok((out, false)),
                },
                _ => Bound::Excluded(a.as_bytes().to_vec()),
            },
            _ if prefix.is_empty() => Bound::Unbounded,
            _ => Bound::Included(prefix.as_bytes().to_vec()),
        };
        loop {
            let bounds = (start.as_ref().map(|v| v.as_slice()), Bound::Unbounded);
            let mut skip_to = None;
            for item in self.versions.range(&rtxn, &bounds)? {
                let (k, v) = item?;
                if !k.starts_with(prefix.as_bytes()) {
                    return Ok((out, false));
                }
                let stamp = version::decode_stamp(v).ok_or_else(|| {
                    StoreError::Corrupt(format!("version of {:?}", String::from_utf8_lossy(k)))
                })?;
                if stamp.deleted || version::is_expired(version::decode_expires(v), now) {
                    continue;
                }
                if out.len() >= limit {
                    return Ok((out, true));
                }
                let key = utf8(k)?;
                if let Some(sep) = separator {
                    if let Some(pos) = key[prefix.len()..].find(sep) {
                        let common = key[..prefix.len() + pos + sep.len_utf8()].to_string();
                        skip_to = Some(successor(common.as_bytes()));
                        out.push(Listed::Prefix(common));
                        break;
                    }
                }
                if with_values {
                    version::verify(k, v).map_err(|d| damaged(k, d))?;
                }
                let value = with_values.then(|| Version {
                    stamp,
                    data: version::encoded_data(v).to_vec(),
                    expires: version::decode_expires(v),
                });
                out.push(Listed::Key(key, value));
            }
            match skip_to {
                Some(Some(next)) => start = Bound::Included(next),
                _ => return Ok((out, false)),
            }
        }
    }

    // ----- metadata -----

    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let rtxn = self.read_txn()?;
        Ok(self.meta.get(&rtxn, name.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Removes metadata entries in one (durable) transaction.
    pub fn meta_delete(&self, names: &[&str]) -> Result<()> {
        let mut wtxn = self.write_txn()?;
        for name in names {
            self.meta.delete(&mut wtxn, name.as_bytes())?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// The size of `data.mdb` in bytes.
    pub fn data_file_bytes(&self) -> Option<u64> {
        std::fs::metadata(self.dir.join("data.mdb"))
            .ok()
            .map(|m| m.len())
    }

    /// Writes a consistent, compacted copy of the database into `file`
    /// (LMDB's own copy: one read transaction, writers keep going).
    pub fn backup_to(&self, file: &mut File) -> Result<()> {
        self.env
            .copy_to_file(file, heed::CompactionOption::Enabled)
            .map_err(StoreError::from)
    }

    /// Sets or removes a metadata entry inside the writer's transaction.
    pub(crate) fn meta_set_in(
        &self,
        txn: &mut RwTxn<'_>,
        name: &str,
        value: Option<&[u8]>,
    ) -> Result<()> {
        match value {
            Some(v) => self.meta.put(txn, name.as_bytes(), v)?,
            None => {
                self.meta.delete(txn, name.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Writes versions in one transaction, each over the current one: for
    /// the offline tools, on a stopped node's directory (a running node
    /// writes through its writer thread). Returns the commit index.
    pub fn write_versions(&self, versions: &[(String, Version)]) -> Result<u64> {
        let mut txn = self.write_txn()?;
        let mut touched = Touched::default();
        for (key, v) in versions {
            let old = self.stamp_in(&txn, key)?;
            self.put_version(&mut txn, key, old.as_ref(), v, &mut touched)?;
        }
        self.commit(txn, &touched)
    }

    /// Stores one metadata entry in its own (durable) transaction: only
    /// while a node starts (before its writer thread runs) and in the
    /// offline tools; a running node writes metadata through the writer.
    pub fn meta_put(&self, name: &str, value: &[u8]) -> Result<()> {
        let mut wtxn = self.write_txn()?;
        self.meta.put(&mut wtxn, name.as_bytes(), value)?;
        wtxn.commit()?;
        Ok(())
    }

    // ----- writes: only the writer thread calls these -----

    /// Stores `new` as the version of `key`, replacing `old` (its current
    /// stamp, read in the same transaction), and keeps the time index, the
    /// tombstone index, the bucket entry and the bucket hash in step. The
    /// bucket hash change is appended to `touched` for the in-memory tree,
    /// with the key.
    pub fn put_version(
        &self,
        txn: &mut RwTxn<'_>,
        key: &str,
        old: Option<&Stamp>,
        new: &Version,
        touched: &mut Touched,
    ) -> Result<()> {
        let k = key.as_bytes();
        let new_stamp = new.stamp.encode();
        let mut delta = merkle::version_hash(k, &new_stamp);
        if let Some(old) = old {
            let old_tk = time_key(old.timestamp, k);
            self.by_time.delete(txn, &old_tk)?;
            if old.deleted {
                self.tombs.delete(txn, &old_tk)?;
            }
            delta ^= merkle::version_hash(k, &old.encode());
        }
        self.versions.put(txn, k, &new.encode(k))?;
        let tk = time_key(new.stamp.timestamp, k);
        self.by_time.put(txn, &tk, &[])?;
        if new.stamp.deleted {
            self.tombs.put(txn, &tk, &[])?;
        }
        let leaf = merkle::leaf_of(k);
        self.buckets.put(txn, &bucket_key(leaf, k), &new_stamp)?;
        if let (Some(at), false) = (new.expires, new.stamp.deleted) {
            self.expiry.put(txn, &time_key(at, k), &new.stamp.uuid.0)?;
        }
        touched.deltas.push((leaf, delta));
        touched.keys.push(key.to_string());
        Ok(())
    }

    /// The earliest expiry in the index (ms), if any.
    pub fn next_expiry(&self) -> Result<Option<u64>> {
        let rtxn = self.read_txn()?;
        Ok(match self.expiry.first(&rtxn)? {
            Some((k, _)) => split_time_key(k).map(|(at, _)| at),
            None => None,
        })
    }

    /// Turns up to `limit` values whose expiry is at or before `now_ms`
    /// into their expiry tombstones, and drops the index entries of values
    /// replaced since. Returns how many expired.
    pub fn expire_in(
        &self,
        txn: &mut RwTxn<'_>,
        now_ms: u64,
        limit: usize,
        touched: &mut Touched,
    ) -> Result<usize> {
        let mut due = Vec::new();
        for item in self.expiry.iter(txn)? {
            let (k, v) = item?;
            match split_time_key(k) {
                Some((at, key)) if at <= now_ms && due.len() < limit => {
                    due.push((k.to_vec(), at, utf8(key)?, v.to_vec()))
                }
                _ => break,
            }
        }
        let mut expired = 0;
        for (entry, at, key, uuid) in due {
            self.expiry.delete(txn, &entry)?;
            let Some(bytes) = self.versions.get(txn, key.as_bytes())? else {
                continue;
            };
            let (Some(stamp), Some(expires)) =
                (version::decode_stamp(bytes), version::decode_expires(bytes))
            else {
                continue;
            };
            if stamp.deleted || expires != at || stamp.uuid.0[..] != uuid[..] {
                continue;
            }
            let tombstone = Version::expiry_tombstone(&stamp, at);
            self.put_version(txn, &key, Some(&stamp), &tombstone, touched)?;
            expired += 1;
        }
        Ok(expired)
    }

    /// Removes the version of `key` (a purged tombstone) with its index
    /// entries and its share of the bucket hash.
    pub fn remove_version(
        &self,
        txn: &mut RwTxn<'_>,
        key: &str,
        old: &Stamp,
        touched: &mut Touched,
    ) -> Result<()> {
        let k = key.as_bytes();
        let tk = time_key(old.timestamp, k);
        self.versions.delete(txn, k)?;
        self.by_time.delete(txn, &tk)?;
        self.tombs.delete(txn, &tk)?;
        let leaf = merkle::leaf_of(k);
        self.buckets.delete(txn, &bucket_key(leaf, k))?;
        let delta = merkle::version_hash(k, &old.encode());
        touched.deltas.push((leaf, delta));
        Ok(())
    }

    /// A failed commit as a `StoreError`. LMDB reports a write that ran out
    /// of disk as a plain I/O error (EIO) as often as ENOSPC, so an I/O
    /// error on a disk with less than `NO_SPACE_BYTES` free is a full disk.
    fn commit_error(&self, e: heed::Error) -> StoreError {
        match StoreError::from(e) {
            StoreError::Io(m) => match crate::sys::free_bytes(&self.dir) {
                Some(free) if free < NO_SPACE_BYTES => StoreError::NoSpace,
                _ => StoreError::Io(m),
            },
            other => other,
        }
    }

    /// This node's commit index: versions committed, ever.
    pub fn commit_index(&self) -> u64 {
        self.index.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Writes the summary changes and the new commit index of a
    /// transaction into it, commits it, and then applies them to the
    /// in-memory tree. Every write transaction that called `put_version`
    /// or `remove_version` ends here. Returns the commit index after it
    /// (the last of `touched.keys` has this index; only the writer thread
    /// commits, so indexes are handed out in order).
    pub fn commit(&self, mut txn: RwTxn<'_>, touched: &Touched) -> Result<u64> {
        let deltas = &touched.deltas;
        let index = self.commit_index() + touched.keys.len() as u64;
        if !touched.keys.is_empty() {
            self.meta
                .put(&mut txn, META_INDEX.as_bytes(), &index.to_be_bytes())?;
        }
        if !deltas.is_empty() {
            let mut stored = match self.tree_db.get(&txn, TREE_RECORD)? {
                Some(bytes) => merkle::decode_stored(bytes)
                    .ok_or_else(|| StoreError::Corrupt("summary record".into()))?,
                None => vec![0u64; merkle::STORED_NODES],
            };
            for &(leaf, delta) in deltas {
                stored[merkle::stored_node_of(leaf)] ^= delta;
            }
            self.tree_db
                .put(&mut txn, TREE_RECORD, &merkle::encode_stored(&stored))?;
        }
        txn.commit().map_err(|e| self.commit_error(e))?;
        if !deltas.is_empty() {
            let mut tree = self.tree.write().unwrap_or_else(|e| e.into_inner());
            for &(leaf, delta) in deltas {
                tree.apply(leaf, delta);
            }
        }
        self.index
            .store(index, std::sync::atomic::Ordering::Release);
        Ok(index)
    }

    /// Tombstones older than `horizon_ms`, oldest first, at most `limit`.
    pub fn tombstones_before(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        horizon_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, u64)>> {
        let end = horizon_ms.to_be_bytes();
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Unbounded, Bound::Excluded(&end[..]));
        let mut out = Vec::new();
        for item in self.tombs.range(txn, &bounds)? {
            if out.len() >= limit {
                break;
            }
            let (tk, _) = item?;
            if let Some((ts, key)) = split_time_key(tk) {
                out.push((utf8(key)?, ts));
            }
        }
        Ok(out)
    }
}

/// The smallest byte string greater than every string starting with `p`,
/// or None when there is none (all bytes 0xff).
fn successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut s = p.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store in a fresh temporary directory, removed on drop.
    pub(crate) struct TempStore {
        pub store: Option<Store>,
        pub dir: std::path::PathBuf,
    }

    impl TempStore {
        pub(crate) fn new() -> TempStore {
            let dir = std::env::temp_dir().join(format!(
                "kvs-store-test-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            let store = Store::open(&dir, 64).unwrap();
            TempStore {
                store: Some(store),
                dir,
            }
        }

        pub(crate) fn store(&self) -> &Store {
            self.store.as_ref().unwrap()
        }

        /// Closes and reopens the store on the same directory.
        fn reopen(&mut self) {
            drop(self.store.take());
            self.store = Some(Store::open(&self.dir, 64).unwrap());
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            drop(self.store.take());
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn the_commit_index_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("kvs-index-test-{}", fastrand::u64(..)));
        {
            let store = Store::open(&dir, 64).unwrap();
            assert_eq!(store.commit_index(), 0);
            let mut txn = store.write_txn().unwrap();
            let mut touched = Touched::default();
            for (i, key) in ["x", "y"].iter().enumerate() {
                store
                    .put_version(
                        &mut txn,
                        key,
                        None,
                        &version(i as u64 + 1, Some("1")),
                        &mut touched,
                    )
                    .unwrap();
            }
            assert_eq!(store.commit(txn, &touched).unwrap(), 2);
            // A commit that gave no key a version leaves it alone.
            let txn = store.write_txn().unwrap();
            assert_eq!(store.commit(txn, &Touched::default()).unwrap(), 2);
        }
        let store = Store::open(&dir, 64).unwrap();
        assert_eq!(store.commit_index(), 2);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    pub(crate) fn version(ts: u64, data: Option<&str>) -> Version {
        Version {
            stamp: Stamp {
                timestamp: ts,
                uuid: VersionId::new_random(),
                deleted: data.is_none(),
            },
            data: data.map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
            expires: None,
        }
    }

    #[test]
    fn values_expire_through_the_time_index_only_while_current() {
        let dir = std::env::temp_dir().join(format!("kvs-expiry-test-{}", fastrand::u64(..)));
        let s = Store::open(&dir, 64).unwrap();
        let short = Version {
            expires: Some(2_000),
            ..version(1_000, Some("1"))
        };
        let long = Version {
            expires: Some(9_000),
            ..version(1_000, Some("2"))
        };
        let replaced = Version {
            expires: Some(1_500),
            ..version(1_000, Some("3"))
        };
        write(&s, &[("a", short.clone()), ("b", long), ("c", replaced)]);
        // c is written again without a ttl: its old expiry must not fire.
        write(&s, &[("c", version(1_100, Some("4")))]);
        assert_eq!(s.next_expiry().unwrap(), Some(1_500));
        let mut txn = s.write_txn().unwrap();
        let mut touched = Touched::default();
        assert_eq!(s.expire_in(&mut txn, 5_000, 100, &mut touched).unwrap(), 1);
        s.commit(txn, &touched).unwrap();
        assert_eq!(touched.keys, ["a"]);
        let a = s.get("a").unwrap().unwrap();
        assert_eq!(a, Version::expiry_tombstone(&short.stamp, 2_000));
        assert_eq!(s.get("c").unwrap().unwrap().data, b"4");
        assert_eq!(s.next_expiry().unwrap(), Some(9_000));
        assert!(s.verify_tree().unwrap());
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Writes versions the way the writer does: each replaces the current
    /// one, all in one transaction.
    fn write(store: &Store, versions: &[(&str, Version)]) {
        let mut txn = store.write_txn().unwrap();
        let mut touched = Touched::default();
        for (key, v) in versions {
            let old = store.stamp_in(&txn, key).unwrap();
            store
                .put_version(&mut txn, key, old.as_ref(), v, &mut touched)
                .unwrap();
        }
        store.commit(txn, &touched).unwrap();
    }

    #[test]
    fn damaged_values_are_never_served_and_are_listed() {
        let t = TempStore::new();
        let mut bad = version(1, Some("\"x\""));
        bad.data = b"\"\xff\"".to_vec();
        write(
            t.store(),
            &[
                ("good", version(1, Some("{\"a\": 1}"))),
                ("bad", bad),
                ("gone", version(2, None)),
                ("flip", version(3, Some("\"abc\""))),
            ],
        );
        let store = t.store();
        // One bit flipped in the stored data of "flip": "abc" reads "abb".
        let mut txn = store.write_txn().unwrap();
        let mut raw = store.versions.get(&txn, b"flip").unwrap().unwrap().to_vec();
        let at = raw.len() - 2;
        raw[at] ^= 0x01;
        store.versions.put(&mut txn, b"flip", &raw).unwrap();
        txn.commit().unwrap();

        let before = CHECKSUM_FAILURES.load(std::sync::atomic::Ordering::Relaxed);
        let named = |r: Result<_>| matches!(r, Err(StoreError::Corrupt(m)) if m.contains("flip"));
        assert!(named(store.get("flip").map(|_| ())));
        assert!(named(
            store.with_value("flip", |_, d, _| d.to_vec()).map(|_| ())
        ));
        assert!(named(store.list("", None, None, true, 100).map(|_| ())));
        assert!(named(store.since(0, None, 100, 1 << 20).map(|_| ())));
        // Listing keys reads stamps only, and still works.
        assert_eq!(store.list("", None, None, false, 100).unwrap().0.len(), 3);
        let after = CHECKSUM_FAILURES.load(std::sync::atomic::Ordering::Relaxed);
        assert!(after >= before + 4);

        let (damaged, unchecked) = store.damaged_values(10).unwrap();
        assert_eq!(
            damaged,
            vec![
                ("bad".to_string(), "not UTF-8 JSON".to_string()),
                ("flip".to_string(), "checksum mismatch".to_string())
            ]
        );
        assert_eq!(unchecked, 0);
        assert_eq!(store.get("good").unwrap().unwrap().data, b"{\"a\": 1}");
    }

    #[test]
    fn versions_replace_each_other_and_tombstones_hide_values() {
        let t = TempStore::new();
        let s = t.store();
        write(
            s,
            &[
                ("a", version(10, Some("1"))),
                ("b", version(11, Some("[2]"))),
            ],
        );
        write(s, &[("a", version(20, Some("{\"x\": 3}")))]);
        assert_eq!(s.get("a").unwrap().unwrap().data, b"{\"x\": 3}");
        assert_eq!(
            s.with_value("b", |st, d, _| (st.timestamp, d.to_vec()))
                .unwrap(),
            Some((11, b"[2]".to_vec()))
        );
        write(s, &[("b", version(30, None))]);
        assert!(s.with_value("b", |_, _, _| ()).unwrap().is_none());
        assert!(s.get("b").unwrap().unwrap().stamp.deleted);
        assert_eq!(s.counts().unwrap(), (2, 1));
        assert!(s.get("missing").unwrap().is_none());
    }

    #[test]
    fn the_time_index_pages_in_order_and_forgets_replaced_versions() {
        let t = TempStore::new();
        let s = t.store();
        for i in 0..10u64 {
            write(s, &[(&format!("k{i}"), version(100 + i, Some("1")))]);
        }
        // k3 is rewritten later: it moves to the end of the index.
        write(s, &[("k3", version(500, Some("2")))]);
        let mut seen = Vec::new();
        let mut cursor: (u64, Option<String>) = (0, None);
        loop {
            let page = s
                .since(cursor.0, cursor.1.as_deref(), 3, usize::MAX)
                .unwrap();
            assert!(page.versions.len() <= 3);
            seen.extend(
                page.versions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.stamp.timestamp)),
            );
            match page.next {
                Some((ts, k)) => cursor = (ts, Some(k)),
                None => break,
            }
        }
        let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["k0", "k1", "k2", "k4", "k5", "k6", "k7", "k8", "k9", "k3"]
        );
        assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
        // From a timestamp on.
        let page = s.since(105, None, 100, usize::MAX).unwrap();
        assert_eq!(page.versions.first().unwrap().0, "k5");
        // The latest N, newest first.
        let latest: Vec<String> = s.latest(3).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(latest, ["k3", "k9", "k8"]);
        assert_eq!(s.newest_timestamp().unwrap(), Some(500));
        // A byte limit cuts a page but always returns something.
        let page = s.since(0, None, 100, 1).unwrap();
        assert_eq!(page.versions.len(), 1);
        assert!(page.next.is_some());
    }

    #[test]
    fn tombstones_are_found_for_purging_and_removed_entirely() {
        let t = TempStore::new();
        let s = t.store();
        write(
            s,
            &[
                ("old", version(10, None)),
                ("new", version(1000, None)),
                ("live", version(5, Some("1"))),
            ],
        );
        let rtxn = s.read_txn().unwrap();
        let doomed = s.tombstones_before(&rtxn, 500, 10).unwrap();
        drop(rtxn);
        assert_eq!(doomed, vec![("old".to_string(), 10)]);
        let mut txn = s.write_txn().unwrap();
        let mut touched = Touched::default();
        let stamp = s.stamp_in(&txn, "old").unwrap().unwrap();
        s.remove_version(&mut txn, "old", &stamp, &mut touched)
            .unwrap();
        s.commit(txn, &touched).unwrap();
        assert!(s.get("old").unwrap().is_none());
        assert_eq!(s.counts().unwrap(), (2, 1));
        assert!(s
            .since(0, None, 10, usize::MAX)
            .unwrap()
            .versions
            .iter()
            .all(|(k, _)| k != "old"));
        assert!(s.verify_tree().unwrap());
    }

    #[test]
    fn prefix_listing_collapses_and_pages() {
        let t = TempStore::new();
        let s = t.store();
        for k in [
            "users/ann",
            "users/bob/x",
            "users/bob/y",
            "users/carl",
            "usersx",
            "other",
        ] {
            write(s, &[(k, version(1, Some("1")))]);
        }
        write(s, &[("users/carl", version(2, None))]);
        let names = |l: Vec<Listed>| -> Vec<String> {
            l.into_iter()
                .map(|e| match e {
                    Listed::Key(k, _) | Listed::Prefix(k) => k,
                })
                .collect()
        };
        let (all, more) = s.list("users/", None, None, false, 100).unwrap();
        assert_eq!(names(all), ["users/ann", "users/bob/x", "users/bob/y"]);
        assert!(!more);
        let (one_level, _) = s.list("users/", None, Some('/'), false, 100).unwrap();
        assert_eq!(names(one_level), ["users/ann", "users/bob/"]);
        let (page, more) = s.list("users/", None, None, false, 2).unwrap();
        assert_eq!(names(page), ["users/ann", "users/bob/x"]);
        assert!(more);
        let (rest, _) = s
            .list("users/", Some("users/bob/x"), None, false, 2)
            .unwrap();
        assert_eq!(names(rest), ["users/bob/y"]);
        let (after_prefix, _) = s
            .list("users/", Some("users/bob/"), Some('/'), false, 10)
            .unwrap();
        assert!(after_prefix.is_empty());
        let (everything, _) = s.list("", None, None, true, 100).unwrap();
        assert_eq!(everything.len(), 5);
        assert!(
            matches!(&everything[0], Listed::Key(k, Some(v)) if k == "other" && v.data == b"1")
        );
    }

    #[test]
    fn the_summary_is_kept_by_writes_persisted_and_checked() {
        let mut t = TempStore::new();
        for round in 0..3u64 {
            let batch: Vec<(String, Version)> = (0..200)
                .map(|i| {
                    let data = if (i + round) % 7 == 0 {
                        None
                    } else {
                        Some("{}")
                    };
                    (format!("key/{i}"), version(round * 1000 + i, data))
                })
                .collect();
            let refs: Vec<(&str, Version)> =
                batch.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            write(t.store(), &refs);
        }
        assert!(t.store().verify_tree().unwrap());
        let root = t.store().tree_root();
        assert_ne!(root, 0);
        t.reopen();
        assert_eq!(
            t.store().tree_root(),
            root,
            "the summary survives a restart"
        );
        assert!(t.store().verify_tree().unwrap());
        // Leaf hashes from the bucket index add up to their parent.
        let level3 = t.store().tree_children(2, &[0]).unwrap().unwrap()[0];
        for (i, parent) in level3.iter().enumerate() {
            let leaves = t.store().leaf_hashes(i).unwrap();
            assert_eq!(leaves.iter().fold(0, |a, h| a ^ h), *parent);
        }
    }

    #[test]
    fn two_stores_with_the_same_versions_have_the_same_summary() {
        let a = TempStore::new();
        let b = TempStore::new();
        let versions: Vec<(String, Version)> = (0..300)
            .map(|i| (format!("k{i}"), version(i, Some("1"))))
            .collect();
        for (k, v) in &versions {
            write(a.store(), &[(k.as_str(), v.clone())]);
        }
        let reversed: Vec<(&str, Version)> = versions
            .iter()
            .rev()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        write(b.store(), &reversed);
        assert_eq!(a.store().tree_root(), b.store().tree_root());
        let entries = |s: &Store| {
            s.bucket_entries(&(0..=u16::MAX).collect::<Vec<_>>(), None, 1000)
                .unwrap()
                .entries
        };
        assert_eq!(entries(a.store()), entries(b.store()));
        write(b.store(), &[("k7", version(999, Some("2")))]);
        assert_ne!(a.store().tree_root(), b.store().tree_root());
    }

    #[test]
    fn keys_follow_the_rules() {
        assert!(check_key("users/john/profile", false).is_ok());
        assert!(check_key("users/", true).is_ok());
        assert!(check_key("users/", false).is_err());
        assert!(check_key("a//b", false).is_err());
        assert!(check_key("a/../b", false).is_err());
        assert!(check_key("tab\there", false).is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES), false).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1), false).is_err());
    }
}
