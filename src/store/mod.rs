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
pub mod merge;
pub mod merkle;
mod read;
pub mod schema;
pub mod version;
mod write;
pub mod writer;

use std::fmt;
use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::RwLock;

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

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
const META_INDEX: &str = schema::COMMIT_INDEX;

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
const META_TREE_FORMAT: &str = schema::TREE_FORMAT;
/// The summary layout this build writes.
const TREE_FORMAT: &[u8] = b"2";
/// Key of the level-3 hashes in the `tree` table.
const TREE_RECORD: &[u8] = b"level3";

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
