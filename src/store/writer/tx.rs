//! What each op does inside the writer's transaction ([`Tx`]), and
//! [`apply`]: one group of ops in one transaction, then the commit.
//!
//! An op that fails leaves the transaction half-written, so the
//! transaction is never committed after one: [`apply`] says which op
//! failed ([`Failed::at`]) and the writer decides what to retry.

use super::{ConflictFound, Op, RemoteReport, WriteError, Written, EXPIRE_BATCH, PURGE_BATCH};
use crate::clock;
use crate::store::condition::Condition;
use crate::store::merge::{merge, next_timestamp, Merge};
use crate::store::version::{Stamp, Version, VersionId};
use crate::store::{Result, Store, StoreError, Touched};

/// The result of one op inside a transaction, before it is answered.
#[derive(Debug)]
pub(super) enum Outcome {
    /// A client write: done, or its condition failed.
    Client(std::result::Result<Written, WriteError>),
    Remote(RemoteReport),
    /// Whether the local version changed (resolve, repair).
    Changed(bool),
    /// How many keys or entries the op changed (purge, drop, recursive
    /// delete, expiry, metadata).
    Count(usize),
    Batch(Vec<Stamp>),
    Txn(super::TxnAnswer),
    /// `Op::Stop` (never applied; the writer ends before it).
    Nothing,
}

/// Everything a committed transaction produced.
#[derive(Default)]
pub(super) struct Effects {
    pub touched: Touched,
    /// The commit index after the transaction.
    pub index: u64,
    pub local: Vec<(String, Version)>,
    pub conflicts: Vec<ConflictFound>,
}

/// Why a group did not commit: the op that failed (`None`: the
/// transaction itself, at its start or its commit), and the error.
#[derive(Debug)]
pub(super) struct Failed {
    pub at: Option<usize>,
    pub error: StoreError,
}

/// Writes a new local version of `key` (a value, or a tombstone when
/// `data` is `None`) over `old`, with a timestamp above it and a fresh
/// uuid, and queues it for replication: what every client write does,
/// single, batched or recursive.
fn write_local(
    store: &Store,
    txn: &mut heed::RwTxn<'_>,
    key: &str,
    old: Option<Stamp>,
    data: &Option<Vec<u8>>,
    ttl_ms: Option<u64>,
    effects: &mut Effects,
) -> Result<Stamp> {
    let timestamp = next_timestamp(clock::now_ms(), old.as_ref());
    debug_assert!(
        old.is_none_or(|o| timestamp > o.timestamp),
        "a local write of {key:?} must be newer than the version it replaces"
    );
    let version = Version {
        stamp: Stamp {
            timestamp,
            uuid: VersionId::new_random(),
            deleted: data.is_none(),
        },
        data: data.clone().unwrap_or_default(),
        expires: ttl_ms
            .filter(|_| data.is_some())
            .map(|ttl| timestamp.saturating_add(ttl)),
    };
    store.put_version(txn, key, old.as_ref(), &version, &mut effects.touched)?;
    let stamp = version.stamp;
    effects.local.push((key.to_string(), version));
    Ok(stamp)
}

/// Applies a group of ops in one transaction and commits it; nothing is
/// committed when any op fails.
pub(super) fn apply(
    store: &Store,
    batch: &[Op],
) -> std::result::Result<(Vec<Outcome>, Effects), Failed> {
    let whole = |error| Failed { at: None, error };
    let mut tx = Tx {
        store,
        txn: store.write_txn().map_err(whole)?,
        effects: Effects::default(),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for (i, op) in batch.iter().enumerate() {
        let outcome = tx
            .apply(op)
            .map_err(|error| Failed { at: Some(i), error })?;
        outcomes.push(outcome);
    }
    let Tx {
        txn, mut effects, ..
    } = tx;
    let before = store.commit_index();
    effects.index = store.commit(txn, &effects.touched).map_err(whole)?;
    debug_assert!(
        effects.index >= before,
        "the commit index went back from {before} to {}",
        effects.index
    );
    Ok((outcomes, effects))
}

/// One write transaction being filled, with what it produced so far.
struct Tx<'s> {
    store: &'s Store,
    txn: heed::RwTxn<'s>,
    effects: Effects,
}

impl Tx<'_> {
    fn apply(&mut self, op: &Op) -> Result<Outcome> {
        Ok(match op {
            Op::Client {
                key,
                data,
                ttl_ms,
                condition,
                ..
            } => Outcome::Client(self.client(key, data, *ttl_ms, condition)?),
            Op::Remote { versions, .. } => Outcome::Remote(self.remote(versions)?),
            Op::Resolve { key, winner, .. } => Outcome::Changed(self.resolve(key, winner)?),
            Op::Batch { ops, .. } => Outcome::Batch(self.batch(ops)?),
            Op::Txn {
                ops, read_limit, ..
            } => Outcome::Txn(self.txn(ops, *read_limit)?),
            Op::DeleteMany { keys, .. } => Outcome::Count(self.delete_many(keys)?),
            Op::Repair { key, copy, .. } => Outcome::Changed(self.repair(key, copy)?),
            Op::Meta { name, value, .. } => {
                self.store
                    .meta_set_in(&mut self.txn, name, value.as_deref())?;
                Outcome::Count(1)
            }
            Op::Expire { now_ms, .. } => Outcome::Count(self.store.expire_in(
                &mut self.txn,
                *now_ms,
                EXPIRE_BATCH,
                &mut self.effects.touched,
            )?),
            Op::Drop { versions, .. } => Outcome::Count(self.drop_versions(versions)?),
            Op::Purge { horizon_ms, .. } => Outcome::Count(self.purge(*horizon_ms)?),
            Op::Stop => Outcome::Nothing,
        })
    }

    fn stamp(&self, key: &str) -> Result<Option<Stamp>> {
        self.store.stamp_in(&self.txn, key)
    }

    fn put(&mut self, key: &str, old: Option<&Stamp>, new: &Version) -> Result<()> {
        self.store
            .put_version(&mut self.txn, key, old, new, &mut self.effects.touched)
    }

    /// A new local version of `key` (see [`write_local`]).
    fn local(
        &mut self,
        key: &str,
        old: Option<Stamp>,
        data: &Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> Result<Stamp> {
        write_local(
            self.store,
            &mut self.txn,
            key,
            old,
            data,
            ttl_ms,
            &mut self.effects,
        )
    }

    /// A client PUT or DELETE, if its condition holds.
    fn client(
        &mut self,
        key: &str,
        data: &Option<Vec<u8>>,
        ttl_ms: Option<u64>,
        condition: &Condition,
    ) -> Result<std::result::Result<Written, WriteError>> {
        let old = self.stamp(key)?;
        let live = old.filter(|s| !s.deleted);
        if !condition.holds(live.as_ref()) {
            return Ok(Err(WriteError::PreconditionFailed(live)));
        }
        let stamp = self.local(key, old, data, ttl_ms)?;
        Ok(Ok(Written { stamp }))
    }

    /// Versions from a peer, each through the merge rule; conflicts are
    /// kept for the resolver.
    fn remote(&mut self, versions: &[(String, Version)]) -> Result<RemoteReport> {
        let mut report = RemoteReport::default();
        for (key, incoming) in versions {
            let old = match self.stamp(key) {
                Err(StoreError::Damaged { .. }) => {
                    self.replace_lost(key, incoming)?;
                    report.applied += 1;
                    continue;
                }
                other => other?,
            };
            match merge(old.as_ref(), &incoming.stamp) {
                Merge::TakeIncoming => {
                    self.put(key, old.as_ref(), incoming)?;
                    report.applied += 1;
                }
                Merge::KeepLocal | Merge::Same => report.ignored += 1,
                Merge::Conflict => {
                    report.conflicts += 1;
                    if let Some(local) = old {
                        self.effects.conflicts.push(ConflictFound {
                            key: key.clone(),
                            local,
                            incoming: incoming.clone(),
                        });
                    }
                }
            }
        }
        Ok(report)
    }

    /// A conflict's winner: replaces a version with the same timestamp.
    fn resolve(&mut self, key: &str, winner: &Version) -> Result<bool> {
        let old = self.stamp(key)?;
        let replace = match merge(old.as_ref(), &winner.stamp) {
            Merge::TakeIncoming | Merge::Conflict => true,
            Merge::KeepLocal | Merge::Same => false,
        };
        if replace {
            self.put(key, old.as_ref(), winner)?;
        }
        Ok(replace)
    }

    fn batch(&mut self, ops: &[(String, Option<Vec<u8>>)]) -> Result<Vec<Stamp>> {
        let mut stamps = Vec::with_capacity(ops.len());
        for (key, data) in ops {
            let old = self.stamp(key)?;
            stamps.push(self.local(key, old, data, None)?);
        }
        Ok(stamps)
    }

    /// A client transaction: every condition against the state before it,
    /// then the reads (that state too), then the writes in order. A failed
    /// condition returns before anything is written.
    fn txn(&mut self, ops: &[super::TxnOp], read_limit: usize) -> Result<super::TxnAnswer> {
        use super::{TxnAnswer, TxnKind, TxnResult};
        for (index, op) in ops.iter().enumerate() {
            if let Some(condition) = &op.condition {
                let live = self.stamp(&op.key)?.filter(|s| !s.deleted);
                if !condition.holds(live.as_ref()) {
                    return Ok(TxnAnswer::Failed {
                        index,
                        current: live,
                    });
                }
            }
        }
        let now = crate::clock::now_ms();
        let mut results = Vec::with_capacity(ops.len());
        let mut read = 0usize;
        for op in ops {
            results.push(match op.kind {
                TxnKind::Get => {
                    let v = self
                        .store
                        .get_in(&self.txn, &op.key)?
                        .filter(|v| !v.stamp.deleted && !v.is_expired(now));
                    read += v.as_ref().map_or(0, |v| v.data.len());
                    if read > read_limit {
                        return Ok(TxnAnswer::TooMuchRead { limit: read_limit });
                    }
                    TxnResult::Read(v)
                }
                _ => TxnResult::Checked,
            });
        }
        for (op, result) in ops.iter().zip(results.iter_mut()) {
            let data = match &op.kind {
                TxnKind::Put(d) => Some(d.clone()),
                TxnKind::Delete => None,
                TxnKind::Check | TxnKind::Get => continue,
            };
            let old = self.stamp(&op.key)?;
            *result = TxnResult::Written(self.local(&op.key, old, &data, None)?);
        }
        Ok(TxnAnswer::Done(results))
    }

    /// Tombstones for the keys that hold a live value.
    fn delete_many(&mut self, keys: &[String]) -> Result<usize> {
        let mut deleted = 0;
        for key in keys {
            let old = self.stamp(key)?;
            if old.is_none_or(|s| s.deleted) {
                continue;
            }
            self.local(key, old, &None, None)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Stores a peer's version over a damaged one whose stamp is lost (the
    /// record and its bucket copy both unreadable): nothing is known to
    /// merge against, and a real version beats an unreadable one. The old
    /// time index entry and summary share cannot be found; the scrub's
    /// summary check reports the difference.
    fn replace_lost(&mut self, key: &str, version: &Version) -> Result<()> {
        log::warn!("{key:?}: the damaged version's stamp is lost; a peer's version replaces it");
        self.put(key, None, version)
    }

    /// A peer's copy of a version damaged here (see [`Op::Repair`]). When
    /// not even the damaged version's stamp can be read back, the copy
    /// replaces it as if the key were new.
    fn repair(&mut self, key: &str, copy: &Version) -> Result<bool> {
        let old = match self.stamp(key) {
            Err(StoreError::Damaged { .. }) => {
                self.replace_lost(key, copy)?;
                return Ok(true);
            }
            other => other?,
        };
        let damaged = self.store.is_damaged_in(&self.txn, key)?;
        let replace = match merge(old.as_ref(), &copy.stamp) {
            Merge::TakeIncoming => true,
            Merge::Same | Merge::Conflict => damaged,
            Merge::KeepLocal => false,
        };
        if replace {
            self.put(key, old.as_ref(), copy)?;
        }
        Ok(replace)
    }

    /// Removes versions that are still the current ones.
    fn drop_versions(&mut self, versions: &[(String, Stamp)]) -> Result<usize> {
        let mut dropped = 0;
        for (key, stamp) in versions {
            if self.stamp(key)? == Some(*stamp) {
                self.store
                    .remove_version(&mut self.txn, key, stamp, &mut self.effects.touched)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Removes up to `PURGE_BATCH` tombstones older than the horizon.
    fn purge(&mut self, horizon_ms: u64) -> Result<usize> {
        let doomed = self
            .store
            .tombstones_before(&self.txn, horizon_ms, PURGE_BATCH)?;
        let mut purged = 0;
        for (key, ts) in doomed {
            if let Some(old) = self.stamp(&key)? {
                if old.deleted && old.timestamp == ts {
                    self.store.remove_version(
                        &mut self.txn,
                        &key,
                        &old,
                        &mut self.effects.touched,
                    )?;
                    purged += 1;
                }
            }
        }
        Ok(purged)
    }
}
