//! Writes: a version, its time index entry, its tombstone entry, its
//! bucket entry and its expiry entry change together, inside the writer's
//! transaction; `commit` writes the summary changes and the commit index in
//! that same transaction. Only the writer thread calls these (the offline
//! tools through `Store::write_versions`).

use std::ops::Bound;

use heed::{RoTxn, RwTxn, WithoutTls};

use super::version::{self, Version};
use super::{
    bucket_key, merkle, split_time_key, time_key, utf8, Result, Stamp, Store, StoreError, Touched,
    META_INDEX, NO_SPACE_BYTES,
};

impl Store {
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
        // Every path here (client writes, the merge rule, conflict
        // winners, repairs, expiry) only moves a key forward in time; a
        // version replaced by an older one would be lost on every node
        // that took it.
        debug_assert!(
            old.is_none_or(|o| new.stamp.timestamp >= o.timestamp),
            "{key:?}: a version at {} would replace a newer one at {}",
            new.stamp.timestamp,
            old.map_or(0, |o| o.timestamp)
        );
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
            // Only the chunks above the changed buckets are rewritten.
            let mut chunks: Vec<Option<Vec<u64>>> = vec![None; merkle::CHUNKS];
            for &(leaf, delta) in deltas {
                let node = merkle::stored_node_of(leaf);
                let c = merkle::chunk_of(node);
                if chunks[c].is_none() {
                    let hashes = match self.tree_db.get(&txn, &merkle::chunk_key(c))? {
                        Some(bytes) => merkle::decode_chunk(bytes)
                            .ok_or_else(|| StoreError::Corrupt(format!("summary record {c}")))?,
                        None => vec![0u64; merkle::CHUNK_NODES],
                    };
                    chunks[c] = Some(hashes);
                }
                if let Some(hashes) = &mut chunks[c] {
                    hashes[node % merkle::CHUNK_NODES] ^= delta;
                }
            }
            for (c, hashes) in chunks.iter().enumerate() {
                if let Some(hashes) = hashes {
                    self.tree_db.put(
                        &mut txn,
                        &merkle::chunk_key(c),
                        &merkle::encode_stored(hashes),
                    )?;
                }
            }
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
