//! Reads: single keys (values are checked against their checksum before
//! they are served), the time index in pages, prefix listings, the
//! anti-entropy buckets and the summary tree.

use std::ops::Bound;

use heed::{RoTxn, WithoutTls};

use super::version::{self, Damage};
use super::{
    bucket_key, merkle, split_time_key, time_key, utf8, BucketPage, Listed, Page, Result, Stamp,
    Store, StoreError, Version,
};

impl Store {
    pub fn get(&self, key: &str) -> Result<Option<Version>> {
        let rtxn = self.read_txn()?;
        self.get_in(&rtxn, key)
    }

    pub fn get_in(&self, txn: &RoTxn<'_, WithoutTls>, key: &str) -> Result<Option<Version>> {
        match self.versions.get(txn, key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Version::decode(key.as_bytes(), bytes)
                .map(Some)
                .map_err(|d| self.damaged(key.as_bytes(), d)),
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
                let _ = self.damaged(k, d);
            }
            last = Some(String::from_utf8_lossy(k).into_owned());
        }
        Ok((checked, bad, None))
    }

    /// The stamp of the version of `key`, without copying its data.
    ///
    /// A stored version whose stamp does not decode is damage: it is
    /// reported (logged, counted, queued for repair), and the stamp is read
    /// from the key's bucket entry, which holds a copy of it, so that the
    /// merge rule still works and a newer version (a client write, a push,
    /// a repair) can replace the damaged one. Only when the bucket entry is
    /// gone or damaged too is this an error, [`StoreError::Damaged`], which
    /// fails the one op that asked.
    pub fn stamp_in(&self, txn: &RoTxn<'_, WithoutTls>, key: &str) -> Result<Option<Stamp>> {
        let k = key.as_bytes();
        let Some(bytes) = self.versions.get(txn, k)? else {
            return Ok(None);
        };
        if let Some(stamp) = version::decode_stamp(bytes) {
            return Ok(Some(stamp));
        }
        let error = self.damaged(k, Damage::Malformed);
        match self.buckets.get(txn, &bucket_key(merkle::leaf_of(k), k))? {
            Some(copy) => Stamp::decode(copy).map(Some).ok_or(error),
            None => Err(error),
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
            .ok_or_else(|| self.damaged(key.as_bytes(), Damage::Malformed))?;
        let expires = version::decode_expires(bytes);
        if stamp.deleted || version::is_expired(expires, crate::clock::now_ms()) {
            return Ok(None);
        }
        version::verify(key.as_bytes(), bytes).map_err(|d| self.damaged(key.as_bytes(), d))?;
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
                    if let Some((l, key, _)) = page.entries.last() {
                        page.next = Some((*l, key.clone()));
                    }
                    return Ok(page);
                }
                let corrupt = || StoreError::Corrupt("bucket entry".into());
                let stamp = Stamp::decode(v).ok_or_else(corrupt)?;
                page.entries
                    .push((leaf, utf8(k.get(2..).ok_or_else(corrupt)?)?, stamp));
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
        self.list_visible(prefix, after, separator, with_values, limit, None)
    }

    /// [`Store::list`] of only the keys that start with one of `visible`
    /// (sorted prefixes, none covering another; `None`: every key). A
    /// common prefix shows when a visible key is under it; the keys in
    /// between are skipped, not read.
    pub fn list_visible(
        &self,
        prefix: &str,
        after: Option<&str>,
        separator: Option<char>,
        with_values: bool,
        limit: usize,
        visible: Option<&[String]>,
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
                if let Some(visible) = visible {
                    if !visible.iter().any(|p| k.starts_with(p.as_bytes())) {
                        // The first visible key after k starts the next
                        // visible prefix above it.
                        match visible.iter().find(|p| p.as_bytes() > k) {
                            Some(p) => skip_to = Some(Some(p.as_bytes().to_vec())),
                            None => return Ok((out, false)),
                        }
                        break;
                    }
                }
                let stamp =
                    version::decode_stamp(v).ok_or_else(|| self.damaged(k, Damage::Malformed))?;
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
                    version::verify(k, v).map_err(|d| self.damaged(k, d))?;
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
