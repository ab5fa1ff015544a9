//! Storage: versions of keys in LMDB (through heed), the time index, the
//! anti-entropy buckets and summary, and the node's own metadata.
//!
//! Every table and every metadata name is listed in `schema`.
//!
//! Invariant: a version, its time index entry and its bucket entry change
//! together in [`Store::put_version`] or [`Store::remove_version`], inside
//! the caller's write transaction; the summary changes they imply are
//! written by [`Store::commit`] in that same transaction, which then applies
//! them to the in-memory tree. On a running node only the writer thread
//! (`store::writer`) writes, metadata included (`WriterHandle::meta_put`);
//! `Store::meta_put` is for the start, before the writer runs (the node's
//! identity, `daemon`), and for the offline tools.

pub mod condition;
pub mod datafile;
mod error;
pub mod merge;
pub mod merkle;
mod read;
pub mod schema;
pub mod version;
mod write;
pub mod writer;

use std::collections::BTreeSet;
use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

pub use error::StoreError;
pub use merge::{merge, Merge};
pub use merkle::Tree;
pub use version::{Damage, Stamp, Version, VersionId};

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

/// Damaged records this store has met: a count for /metrics, and the keys
/// waiting for a repair from a peer (at most `DAMAGED_QUEUE_MAX`; the scrub
/// finds the others again). Each store keeps its own.
#[derive(Default)]
struct DamageLog {
    found: AtomicU64,
    keys: Mutex<BTreeSet<String>>,
}

const DAMAGED_QUEUE_MAX: usize = 10_000;

/// Free space below which a failed write is taken for a full disk.
const NO_SPACE_BYTES: u64 = 4 * 1024 * 1024;

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
    index: AtomicU64,
    damage: DamageLog,
}

/// What a write transaction changed: the summary's bucket-hash deltas, and
/// the keys that got a new version (in order).
#[derive(Debug, Default)]
pub struct Touched {
    pub deltas: Vec<(u16, u64)>,
    pub keys: Vec<String>,
}

/// Meta name of the commit index.
const META_INDEX: &str = schema::COMMIT_INDEX;

/// Key of the time index and tombstone tables.
pub fn time_key(ts: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub(crate) fn bucket_key(leaf: u16, key: &[u8]) -> Vec<u8> {
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

/// A key read back from an index: UTF-8, or the index entry is damaged.
fn utf8(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Damaged {
        key: String::from_utf8_lossy(bytes).into_owned(),
        damage: Damage::Malformed,
    })
}

/// Meta name of the summary format; a missing entry means the tree must be
/// rebuilt from the versions (a data directory from before the summary).
const META_TREE_FORMAT: &str = schema::TREE_FORMAT;
/// The summary layout this build writes: the level-3 hashes in
/// `merkle::CHUNKS` records keyed by `merkle::chunk_key`.
const TREE_FORMAT: &[u8] = b"3";
/// The layout before it: the level-3 hashes in one record, `OLD_TREE_RECORD`,
/// which `load_tree` splits into chunks.
const OLD_TREE_FORMAT: &[u8] = b"2";
const OLD_TREE_RECORD: &[u8] = b"level3";

/// Creates `dir` if needed and locks it against a second kvs process (the
/// lock lasts as long as the returned file is open).
fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(|e| {
        StoreError::DataDir(format!("data_dir: cannot create {}: {e}", dir.display()))
    })?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("kvs.lock"))
        .map_err(|e| {
            StoreError::DataDir(format!("data_dir: cannot write in {}: {e}", dir.display()))
        })?;
    if lock.try_lock().is_err() {
        return Err(StoreError::DataDir(format!(
            "data_dir: {} is in use by another kvs process",
            dir.display()
        )));
    }
    Ok(lock)
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, locking it against a
    /// second process.
    pub fn open(dir: &Path, map_size_mb: u64) -> Result<Store> {
        let lock = lock_dir(dir)?;
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
            index: AtomicU64::new(0),
            damage: DamageLog::default(),
        };
        let index = store
            .meta_get(META_INDEX)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        store.index.store(index, Ordering::Release);
        store.load_tree()?;
        datafile::mark(dir).map_err(StoreError::DataDir)?;
        Ok(store)
    }

    /// A damaged version of `key` in the versions table: logged (naming the
    /// key and the table), counted, queued for repair, and returned as the
    /// error of whoever met it.
    fn damaged(&self, key: &[u8], damage: Damage) -> StoreError {
        self.damage.found.fetch_add(1, Ordering::Relaxed);
        let key = String::from_utf8_lossy(key).into_owned();
        {
            let mut keys = self.damage.keys.lock().unwrap_or_else(|e| e.into_inner());
            if keys.len() < DAMAGED_QUEUE_MAX {
                keys.insert(key.clone());
            }
        }
        log::error!("damaged version of {key:?} in table versions: {damage}; it is not served");
        StoreError::Damaged { key, damage }
    }

    /// Takes the keys found damaged since the last call.
    pub fn take_damaged(&self) -> Vec<String> {
        let mut keys = self.damage.keys.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *keys).into_iter().collect()
    }

    /// Damaged records met since the store was opened (for /metrics).
    pub fn damaged_found(&self) -> u64 {
        self.damage.found.load(Ordering::Relaxed)
    }

    pub fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>> {
        Ok(self.env.read_txn()?)
    }

    fn write_txn(&self) -> Result<RwTxn<'_>> {
        Ok(self.env.write_txn()?)
    }

    /// Loads the summary from the `tree` table, rebuilding it from the
    /// versions when the table predates it, and splitting the one record
    /// of the previous layout into chunks.
    fn load_tree(&self) -> Result<()> {
        let rtxn = self.read_txn()?;
        let format = self
            .meta
            .get(&rtxn, META_TREE_FORMAT.as_bytes())?
            .map(|v| v.to_vec());
        let old_record = self
            .tree_db
            .get(&rtxn, OLD_TREE_RECORD)?
            .and_then(merkle::decode_stored);
        let chunks = match format.as_deref() {
            Some(TREE_FORMAT) => self.stored_chunks(&rtxn)?,
            _ => None,
        };
        drop(rtxn);
        let tree = match (format.as_deref(), chunks, old_record) {
            (Some(TREE_FORMAT), Some(hashes), _) => Tree::from_stored(&hashes),
            (Some(OLD_TREE_FORMAT), _, Some(hashes)) => {
                let tree = Tree::from_stored(&hashes);
                self.write_tree_chunks(&tree)?;
                log::info!(
                    "the anti-entropy summary is now kept in {} records",
                    merkle::CHUNKS
                );
                tree
            }
            (Some(OLD_TREE_FORMAT), _, None) => {
                let tree = Tree::new();
                self.write_tree_chunks(&tree)?;
                tree
            }
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

    /// The stored level as the chunk records hold it (a missing chunk is
    /// all zeros). None when a chunk has the wrong size.
    fn stored_chunks(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<Option<Vec<u64>>> {
        let mut hashes = Vec::with_capacity(merkle::STORED_NODES);
        for c in 0..merkle::CHUNKS {
            match self.tree_db.get(txn, &merkle::chunk_key(c))? {
                Some(bytes) => match merkle::decode_chunk(bytes) {
                    Some(part) => hashes.extend(part),
                    None => return Ok(None),
                },
                None => hashes.extend(std::iter::repeat_n(0, merkle::CHUNK_NODES)),
            }
        }
        Ok(Some(hashes))
    }

    /// Replaces the `tree` table with `tree`'s chunks, in the current
    /// layout.
    fn write_tree_chunks(&self, tree: &Tree) -> Result<()> {
        let mut wtxn = self.write_txn()?;
        self.tree_db.clear(&mut wtxn)?;
        self.put_tree_chunks(&mut wtxn, tree)?;
        wtxn.commit()?;
        Ok(())
    }

    fn put_tree_chunks(&self, wtxn: &mut RwTxn<'_>, tree: &Tree) -> Result<()> {
        for (c, part) in tree.stored().chunks(merkle::CHUNK_NODES).enumerate() {
            self.tree_db
                .put(wtxn, &merkle::chunk_key(c), &merkle::encode_stored(part))?;
        }
        self.meta
            .put(wtxn, META_TREE_FORMAT.as_bytes(), TREE_FORMAT)?;
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
        self.put_tree_chunks(&mut wtxn, &tree)?;
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
        // What is on disk must be what is in memory, or the next start
        // would load a different summary.
        let rtxn = self.read_txn()?;
        let stored = self.stored_chunks(&rtxn)?;
        drop(rtxn);
        if stored.as_deref() != Some(fresh.stored()) {
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
}

#[cfg(test)]
pub(crate) mod tests;
