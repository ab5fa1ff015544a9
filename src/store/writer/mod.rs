//! The single writer thread: group commit.
//!
//! Every change to the store (client writes, versions from peers, conflict
//! winners, tombstone purges) is an [`Op`] sent to this thread. It takes all
//! ops waiting, applies them in one LMDB write transaction, commits (one
//! fsync for the whole batch), and only then answers each op and tells the
//! rest of the node (replication, conflict resolution) what changed. A client
//! therefore never hears "200" before its write is on disk, and throughput
//! grows with concurrency because concurrent writes share one commit.
//!
//! When a batch does not fit in the map (LMDB's MapFull), it is retried op by
//! op so that only the ops that do not fit fail.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use super::condition::Condition;
use super::merge::{merge, next_timestamp, Merge};
use super::version::{Stamp, Version, VersionId};
use super::{Result, Store, StoreError, Touched};
use crate::clock;

/// Values expired in one op at most.
pub const EXPIRE_BATCH: usize = 1000;
/// Ops taken into one transaction at most.
const MAX_BATCH_OPS: usize = 2048;
/// Data bytes taken into one transaction at most (a soft bound).
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Ops waiting for the writer at most; senders block beyond it.
const QUEUE_OPS: usize = 16 * 1024;
/// Tombstones purged per transaction.
const PURGE_BATCH: usize = 10_000;

/// A client write that was committed.
#[derive(Clone, Debug)]
pub struct Written {
    pub stamp: Stamp,
}

/// Why a client write was not made.
#[derive(Debug)]
pub enum WriteError {
    /// The condition did not hold; the current stamp, if any.
    PreconditionFailed(Option<Stamp>),
    Store(StoreError),
}

/// Called once with the outcome of a client write, after commit.
pub type ClientReply = Box<dyn FnOnce(std::result::Result<Written, WriteError>) + Send>;

/// What applying a batch of remote versions did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteReport {
    /// Versions stored (newer than ours, or new keys).
    pub applied: usize,
    /// Versions we already had or that were older than ours.
    pub ignored: usize,
    /// Versions in conflict with ours (handed to conflict resolution).
    pub conflicts: usize,
}

/// A conflict found while applying a remote version: same key, same
/// timestamp, different uuids. The local version was kept for now.
#[derive(Clone, Debug)]
pub struct ConflictFound {
    pub key: String,
    pub local: Stamp,
    pub incoming: Version,
}

/// One change for the writer.
pub enum Op {
    /// A client PUT (`data` is Some) or DELETE (None).
    Client {
        key: String,
        data: Option<Vec<u8>>,
        /// The value's time to live, in ms (`PUT ?ttl=`).
        ttl_ms: Option<u64>,
        condition: Condition,
        reply: ClientReply,
    },
    /// Versions from a peer, each through the merge rule.
    Remote {
        versions: Vec<(String, Version)>,
        reply: Option<SyncSender<Result<RemoteReport>>>,
    },
    /// The winner of a resolved conflict: replaces a local version with the
    /// same timestamp, or applies normally when newer.
    Resolve {
        key: String,
        winner: Version,
        reply: Option<SyncSender<Result<bool>>>,
    },
    /// A client batch (`POST /batch`): puts (`Some(data)`) and deletes,
    /// all in one transaction, each like a single client write.
    Batch {
        ops: Vec<(String, Option<Vec<u8>>)>,
        reply: SyncSender<Result<Vec<Stamp>>>,
    },
    /// Client deletes of several keys (a recursive delete): each key that
    /// holds a live value gets a tombstone, as a client `DELETE` would.
    DeleteMany {
        keys: Vec<String>,
        reply: SyncSender<Result<usize>>,
    },
    /// A peer's copy of a version stored damaged here: replaces the local
    /// version if it is still damaged and the copy is the same version or
    /// a newer one; otherwise goes through the merge rule like any remote
    /// version.
    Repair {
        key: String,
        copy: Version,
        reply: SyncSender<Result<bool>>,
    },
    /// Removes tombstones older than the horizon (a bounded number per op).
    Purge {
        horizon_ms: u64,
        reply: SyncSender<Result<usize>>,
    },
    /// Removes versions if they are still the current ones (keys found
    /// deleted while this node was away; see `cluster::antientropy`).
    Drop {
        versions: Vec<(String, Stamp)>,
        reply: SyncSender<Result<usize>>,
    },
    /// Sets (`Some`) or removes (`None`) a metadata entry.
    Meta {
        name: &'static str,
        value: Option<Vec<u8>>,
        reply: SyncSender<Result<usize>>,
    },
    /// Turns values whose expiry has come into their expiry tombstones (a
    /// bounded number per op).
    Expire {
        now_ms: u64,
        reply: SyncSender<Result<usize>>,
    },
    /// Commit what came before, then end the writer thread.
    Stop,
}

impl Op {
    fn data_len(&self) -> usize {
        match self {
            Op::Client { data, .. } => data.as_ref().map_or(0, |d| d.len()),
            Op::Remote { versions, .. } => versions.iter().map(|(_, v)| v.data.len()).sum(),
            Op::Resolve { winner, .. } => winner.data.len(),
            Op::Repair { copy, .. } => copy.data.len(),
            Op::Batch { ops, .. } => ops
                .iter()
                .map(|(_, d)| d.as_ref().map_or(0, Vec::len))
                .sum(),
            Op::Meta { value, .. } => value.as_ref().map_or(0, Vec::len),
            Op::Purge { .. }
            | Op::Drop { .. }
            | Op::DeleteMany { .. }
            | Op::Expire { .. }
            | Op::Stop => 0,
        }
    }

    /// Answers the op with a store error (used when its batch failed).
    fn fail(self, e: &StoreError) {
        let copy = || e.clone();
        match self {
            Op::Client { reply, .. } => reply(Err(WriteError::Store(copy()))),
            Op::Remote { reply: Some(r), .. } => {
                let _ = r.send(Err(copy()));
            }
            Op::Resolve { reply: Some(r), .. } => {
                let _ = r.send(Err(copy()));
            }
            Op::Purge { reply, .. }
            | Op::Drop { reply, .. }
            | Op::Expire { reply, .. }
            | Op::Meta { reply, .. } => {
                let _ = reply.send(Err(copy()));
            }
            Op::Repair { reply, .. } => {
                let _ = reply.send(Err(copy()));
            }
            Op::DeleteMany { reply, .. } => {
                let _ = reply.send(Err(copy()));
            }
            Op::Batch { reply, .. } => {
                let _ = reply.send(Err(copy()));
            }
            _ => {}
        }
    }
}

/// Keys with their versions, as committed.
pub type Versions = [(String, Version)];

/// Called with the commit index of a commit's last version, and the keys.
pub type OnChanged = dyn Fn(u64, &[String]) + Send;

/// What the rest of the node hears after each commit.
pub struct Hooks {
    /// New local (client) versions, in commit order: to replicate.
    pub on_local: Box<dyn Fn(&Versions) + Send>,
    /// Conflicts met while applying remote versions.
    pub on_conflict: Box<dyn Fn(Vec<ConflictFound>) + Send>,
    /// The keys a commit gave new versions, and the commit index of the
    /// last of them.
    pub on_changed: Box<OnChanged>,
    /// Commit statistics: ops in the batch, and the time from taking the
    /// batch to having answered it.
    pub on_commit: Box<dyn Fn(usize, std::time::Duration) + Send>,
}

/// Sends ops to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: SyncSender<Op>,
}

/// The writer is gone (the node is stopping).
#[derive(Debug)]
pub struct WriterClosed;

impl WriterHandle {
    /// Queues an op, waiting while the queue is full.
    pub fn submit(&self, op: Op) -> std::result::Result<(), WriterClosed> {
        self.tx.send(op).map_err(|_| WriterClosed)
    }

    /// Submits the op `make` builds around a reply channel and waits for
    /// the answer, sent after the commit.
    fn call<T>(&self, make: impl FnOnce(SyncSender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(make(tx))
            .map_err(|_| StoreError::WriterStopped)?;
        rx.recv().unwrap_or(Err(StoreError::WriterStopped))
    }

    /// Applies remote versions and waits for the commit.
    pub fn apply_remote(&self, versions: Vec<(String, Version)>) -> Result<RemoteReport> {
        if versions.is_empty() {
            return Ok(RemoteReport::default());
        }
        self.call(|tx| Op::Remote {
            versions,
            reply: Some(tx),
        })
    }

    /// Stores a conflict winner and waits for the commit; true if it changed
    /// the local version.
    pub fn resolve(&self, key: String, winner: Version) -> Result<bool> {
        self.call(|tx| Op::Resolve {
            key,
            winner,
            reply: Some(tx),
        })
    }

    /// Applies a client batch in one commit; returns each op's new stamp.
    pub fn batch(&self, ops: Vec<(String, Option<Vec<u8>>)>) -> Result<Vec<Stamp>> {
        self.call(|tx| Op::Batch { ops, reply: tx })
    }

    /// Stores a metadata entry (in the writer's next commit) and waits for
    /// the commit.
    pub fn meta_put(&self, name: &'static str, value: &[u8]) -> Result<()> {
        let value = Some(value.to_vec());
        self.call(|tx| Op::Meta {
            name,
            value,
            reply: tx,
        })
        .map(|_| ())
    }

    /// Expires the values due at `now_ms` (at most `EXPIRE_BATCH`); returns
    /// how many expired.
    pub fn expire(&self, now_ms: u64) -> Result<usize> {
        self.call(|tx| Op::Expire { now_ms, reply: tx })
    }

    /// Deletes the keys that hold a live value, in one commit; returns how
    /// many were deleted. The tombstones replicate like any client delete.
    pub fn delete_many(&self, keys: Vec<String>) -> Result<usize> {
        self.call(|tx| Op::DeleteMany { keys, reply: tx })
    }

    /// Stores a peer's copy of a version found damaged here; true if it
    /// replaced the local version.
    pub fn repair(&self, key: String, copy: Version) -> Result<bool> {
        self.call(|tx| Op::Repair {
            key,
            copy,
            reply: tx,
        })
    }

    /// Ends the writer once every op queued before this call is committed.
    pub fn stop(&self) {
        let _ = self.tx.send(Op::Stop);
    }

    /// Removes versions that are still current; returns how many.
    pub fn drop_versions(&self, versions: Vec<(String, Stamp)>) -> Result<usize> {
        self.call(|tx| Op::Drop {
            versions,
            reply: tx,
        })
    }

    /// Purges tombstones older than the horizon; returns how many.
    pub fn purge(&self, horizon_ms: u64) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.call(|tx| Op::Purge {
                horizon_ms,
                reply: tx,
            })?;
            total += n;
            if n < PURGE_BATCH {
                return Ok(total);
            }
        }
    }
}

/// Threads that answer committed client writes, so that writing responses
/// to sockets never delays the next commit.
const RESPONDERS: usize = 2;

/// Answers of one committed batch.
type Answers = Vec<(ClientReply, std::result::Result<Written, WriteError>)>;

/// Starts the writer thread (and its responders). It ends after
/// [`WriterHandle::stop`], or when every handle is dropped, once every
/// committed write has been answered.
pub fn start(store: Arc<Store>, hooks: Hooks) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_OPS);
    let (answers_tx, answers_rx) = mpsc::channel::<Answers>();
    let answers_rx = Arc::new(std::sync::Mutex::new(answers_rx));
    let mut responders: Vec<JoinHandle<()>> = Vec::with_capacity(RESPONDERS);
    for i in 0..RESPONDERS {
        let rx = answers_rx.clone();
        responders.push(
            std::thread::Builder::new()
                .name(format!("respond-{i}"))
                .spawn(move || responder_loop(&rx))?,
        );
    }
    // Should this fail, the closure (and with it `answers_tx`) is dropped,
    // so the responders end.
    let thread = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            writer_loop(&store, &hooks, rx, &answers_tx);
            drop(answers_tx);
            for r in responders {
                let _ = r.join();
            }
        })?;
    Ok((WriterHandle { tx }, thread))
}

/// A responder: answer committed writes until the writer is gone.
fn responder_loop(rx: &std::sync::Mutex<Receiver<Answers>>) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match next {
            Ok(answers) => {
                for (reply, outcome) in answers {
                    reply(outcome);
                }
            }
            Err(_) => return,
        }
    }
}

/// The result of one op inside a transaction, before it is answered.
enum Outcome {
    Client(std::result::Result<Written, WriteError>),
    Remote(RemoteReport),
    Resolve(bool),
    Purge(usize),
    Batch(Vec<Stamp>),
}

/// Everything a committed transaction produced.
#[derive(Default)]
struct Effects {
    touched: Touched,
    /// The commit index after the transaction.
    index: u64,
    local: Vec<(String, Version)>,
    conflicts: Vec<ConflictFound>,
}

/// The writer thread: take what is waiting, commit it together, answer.
fn writer_loop(store: &Store, hooks: &Hooks, rx: Receiver<Op>, answers: &mpsc::Sender<Answers>) {
    let mut stopping = false;
    while let Ok(first) = rx.recv() {
        if matches!(first, Op::Stop) {
            break;
        }
        let mut bytes = first.data_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(Op::Stop) => {
                    stopping = true;
                    break;
                }
                Ok(op) => {
                    bytes += op.data_len();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        let n = batch.len();
        let started = std::time::Instant::now();
        match apply(store, &batch) {
            Ok((outcomes, effects)) => finish(hooks, answers, batch, outcomes, effects),
            Err(StoreError::MapFull) if n > 1 => {
                // One by one, so that what fits is still written.
                for op in batch {
                    let one = [op];
                    match apply(store, &one) {
                        Ok((outcomes, effects)) => {
                            finish(hooks, answers, Vec::from(one), outcomes, effects)
                        }
                        Err(e) => {
                            let [op] = one;
                            op.fail(&e);
                        }
                    }
                }
            }
            Err(e) => {
                log::error!("write transaction failed: {e}");
                for op in batch {
                    op.fail(&e);
                }
            }
        }
        (hooks.on_commit)(n, started.elapsed());
        if stopping {
            break;
        }
    }
    log::debug!("writer stopped");
}

/// Answers the ops of a committed transaction and tells the node.
fn finish(
    hooks: &Hooks,
    answers: &mpsc::Sender<Answers>,
    batch: Vec<Op>,
    outcomes: Vec<Outcome>,
    effects: Effects,
) {
    if !effects.touched.keys.is_empty() {
        (hooks.on_changed)(effects.index, &effects.touched.keys);
    }
    if !effects.local.is_empty() {
        (hooks.on_local)(&effects.local);
    }
    if !effects.conflicts.is_empty() {
        (hooks.on_conflict)(effects.conflicts);
    }
    let mut client_answers = Vec::new();
    for (op, outcome) in batch.into_iter().zip(outcomes) {
        match (op, outcome) {
            (Op::Client { reply, .. }, Outcome::Client(r)) => client_answers.push((reply, r)),
            (Op::Remote { reply: Some(r), .. }, Outcome::Remote(report)) => {
                let _ = r.send(Ok(report));
            }
            (Op::Resolve { reply: Some(r), .. }, Outcome::Resolve(changed))
            | (Op::Repair { reply: r, .. }, Outcome::Resolve(changed)) => {
                let _ = r.send(Ok(changed));
            }
            (Op::Batch { reply, .. }, Outcome::Batch(stamps)) => {
                let _ = reply.send(Ok(stamps));
            }
            (Op::Purge { reply, .. }, Outcome::Purge(n))
            | (Op::Drop { reply, .. }, Outcome::Purge(n))
            | (Op::DeleteMany { reply, .. }, Outcome::Purge(n))
            | (Op::Expire { reply, .. }, Outcome::Purge(n))
            | (Op::Meta { reply, .. }, Outcome::Purge(n)) => {
                let _ = reply.send(Ok(n));
            }
            _ => {}
        }
    }
    if !client_answers.is_empty() {
        if let Err(mpsc::SendError(left)) = answers.send(client_answers) {
            // No responder left (cannot happen while the writer runs):
            // answer here rather than drop the requests.
            for (reply, outcome) in left {
                reply(outcome);
            }
        }
    }
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

/// Applies a batch in one transaction and commits it.
fn apply(store: &Store, batch: &[Op]) -> Result<(Vec<Outcome>, Effects)> {
    let mut tx = Tx {
        store,
        txn: store.write_txn()?,
        effects: Effects::default(),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for op in batch {
        outcomes.push(tx.apply(op)?);
    }
    let Tx {
        txn, mut effects, ..
    } = tx;
    effects.index = store.commit(txn, &effects.touched)?;
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
            Op::Resolve { key, winner, .. } => Outcome::Resolve(self.resolve(key, winner)?),
            Op::Batch { ops, .. } => Outcome::Batch(self.batch(ops)?),
            Op::DeleteMany { keys, .. } => Outcome::Purge(self.delete_many(keys)?),
            Op::Repair { key, copy, .. } => Outcome::Resolve(self.repair(key, copy)?),
            Op::Meta { name, value, .. } => {
                self.store
                    .meta_set_in(&mut self.txn, name, value.as_deref())?;
                Outcome::Purge(1)
            }
            Op::Expire { now_ms, .. } => Outcome::Purge(self.store.expire_in(
                &mut self.txn,
                *now_ms,
                EXPIRE_BATCH,
                &mut self.effects.touched,
            )?),
            Op::Drop { versions, .. } => Outcome::Purge(self.drop_versions(versions)?),
            Op::Purge { horizon_ms, .. } => Outcome::Purge(self.purge(*horizon_ms)?),
            Op::Stop => Outcome::Purge(0),
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
            let old = self.stamp(key)?;
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

    /// A peer's copy of a version damaged here (see [`Op::Repair`]).
    fn repair(&mut self, key: &str, copy: &Version) -> Result<bool> {
        let old = self.stamp(key)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::version;
    use std::sync::Mutex;

    /// What `on_changed` saw: (last index, keys) per commit.
    type Commits = Vec<(u64, Vec<String>)>;

    struct Harness {
        writer: WriterHandle,
        thread: Option<JoinHandle<()>>,
        store: Arc<Store>,
        local: Arc<Mutex<Vec<String>>>,
        conflicts: Arc<Mutex<Vec<ConflictFound>>>,
        commits: Arc<Mutex<usize>>,
        changed: Arc<Mutex<Commits>>,
        dir: std::path::PathBuf,
    }

    impl Harness {
        fn new() -> Harness {
            let dir = std::env::temp_dir().join(format!(
                "kvs-writer-test-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            let store = Arc::new(Store::open(&dir, 64).unwrap());
            let local = Arc::new(Mutex::new(Vec::new()));
            let conflicts = Arc::new(Mutex::new(Vec::new()));
            let commits = Arc::new(Mutex::new(0));
            let changed = Arc::new(Mutex::new(Vec::new()));
            let (l, c, n, ch) = (
                local.clone(),
                conflicts.clone(),
                commits.clone(),
                changed.clone(),
            );
            let hooks = Hooks {
                on_local: Box::new(move |v| {
                    l.lock().unwrap().extend(v.iter().map(|(k, _)| k.clone()))
                }),
                on_conflict: Box::new(move |found| c.lock().unwrap().extend(found)),
                on_commit: Box::new(move |_, _| *n.lock().unwrap() += 1),
                on_changed: Box::new(move |index, keys| {
                    ch.lock().unwrap().push((index, keys.to_vec()))
                }),
            };
            let (writer, thread) = start(store.clone(), hooks).unwrap();
            Harness {
                writer,
                thread: Some(thread),
                store,
                local,
                conflicts,
                commits,
                changed,
                dir,
            }
        }

        /// A client write, waiting for its answer.
        fn client(
            &self,
            key: &str,
            data: Option<&str>,
            condition: Condition,
        ) -> std::result::Result<Written, WriteError> {
            let (tx, rx) = mpsc::channel();
            self.writer
                .submit(Op::Client {
                    key: key.to_string(),
                    data: data.map(|d| d.as_bytes().to_vec()),
                    ttl_ms: None,
                    condition,
                    reply: Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                })
                .unwrap();
            rx.recv().unwrap()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.writer.stop();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn client_writes_commit_in_order_with_growing_timestamps() {
        let h = Harness::new();
        let a = h.client("k", Some("1"), Condition::default()).unwrap();
        let b = h.client("k", Some("2"), Condition::default()).unwrap();
        assert!(b.stamp.timestamp > a.stamp.timestamp);
        assert_eq!(h.store.get("k").unwrap().unwrap().data, b"2");
        let d = h.client("k", None, Condition::default()).unwrap();
        assert!(d.stamp.deleted && d.stamp.timestamp > b.stamp.timestamp);
        assert_eq!(*h.local.lock().unwrap(), ["k", "k", "k"]);
    }

    #[test]
    fn metadata_goes_through_the_writer_and_gives_no_index() {
        let h = Harness::new();
        let base = h.store.commit_index();
        h.writer.meta_put("known_addresses", b"{}").unwrap();
        assert_eq!(
            h.store.meta_get("known_addresses").unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(h.store.commit_index(), base, "metadata is not a version");
    }

    #[test]
    fn every_committed_version_gets_the_next_commit_index() {
        let h = Harness::new();
        let base = h.store.commit_index();
        h.client("a", Some("1"), Condition::default()).unwrap();
        h.client("b", None, Condition::default()).unwrap();
        // A failed condition commits nothing.
        let never = Condition {
            if_match: Some(crate::store::condition::Tags::parse("\"nope\"")),
            if_none_match: None,
        };
        assert!(h.client("a", Some("2"), never).is_err());
        let report = h
            .writer
            .apply_remote(vec![("c".into(), version(5, Some("3")))])
            .unwrap();
        assert_eq!(report.applied, 1);
        assert_eq!(h.store.commit_index(), base + 3);
        let changed = h.changed.lock().unwrap().clone();
        let flat: Vec<(u64, String)> = changed
            .iter()
            .flat_map(|(last, keys)| {
                let first = last + 1 - keys.len() as u64;
                keys.iter()
                    .enumerate()
                    .map(move |(i, k)| (first + i as u64, k.clone()))
            })
            .collect();
        assert_eq!(
            flat,
            vec![
                (base + 1, "a".to_string()),
                (base + 2, "b".to_string()),
                (base + 3, "c".to_string())
            ]
        );
    }

    #[test]
    fn many_concurrent_writes_share_commits_and_all_land() {
        let h = Harness::new();
        let mut waits = Vec::new();
        for i in 0..500 {
            let (tx, rx) = mpsc::channel();
            h.writer
                .submit(Op::Client {
                    key: format!("c/{i}"),
                    data: Some(i.to_string().into_bytes()),
                    ttl_ms: None,
                    condition: Condition::default(),
                    reply: Box::new(move |r| {
                        let _ = tx.send(r.is_ok());
                    }),
                })
                .unwrap();
            waits.push(rx);
        }
        assert!(waits.into_iter().all(|rx| rx.recv().unwrap()));
        assert_eq!(h.store.counts().unwrap().0, 500);
        let commits = *h.commits.lock().unwrap();
        assert!(commits < 500, "{commits} commits for 500 queued writes");
        assert!(h.store.verify_tree().unwrap());
    }

    #[test]
    fn conditions_are_checked_against_the_current_version() {
        let h = Harness::new();
        assert!(h
            .client(
                "c",
                Some("1"),
                Condition {
                    if_none_match: Some(crate::store::condition::Tags::Any),
                    if_match: None
                }
            )
            .is_ok());
        assert!(matches!(
            h.client(
                "c",
                Some("2"),
                Condition {
                    if_none_match: Some(crate::store::condition::Tags::Any),
                    if_match: None
                }
            ),
            Err(WriteError::PreconditionFailed(Some(_)))
        ));
        let current = h.store.get("c").unwrap().unwrap().stamp.uuid;
        assert!(h
            .client(
                "c",
                Some("3"),
                Condition {
                    if_match: Some(crate::store::condition::Tags::List(vec![(false, current)])),
                    if_none_match: None
                }
            )
            .is_ok());
        assert!(h
            .client(
                "c",
                Some("4"),
                Condition {
                    if_match: Some(crate::store::condition::Tags::List(vec![(false, current)])),
                    if_none_match: None
                }
            )
            .is_err());
        assert!(h
            .client(
                "gone",
                Some("1"),
                Condition {
                    if_match: Some(crate::store::condition::Tags::Any),
                    if_none_match: None
                }
            )
            .is_err());
        assert_eq!(h.store.get("c").unwrap().unwrap().data, b"3");
        assert!(h.store.get("gone").unwrap().is_none());
    }

    #[test]
    fn a_batch_is_one_commit_in_order() {
        let h = Harness::new();
        // The commit hook runs after the answer: wait for it to count.
        let commits_reach = |n: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while *h.commits.lock().unwrap() < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "commit {n} never counted"
                );
                std::thread::yield_now();
            }
        };
        h.client("b/x", Some("0"), Condition::default()).unwrap();
        commits_reach(1);
        let stamps = h
            .writer
            .batch(vec![
                ("b/x".into(), Some(b"1".to_vec())),
                ("b/x".into(), Some(b"2".to_vec())),
                ("b/y".into(), Some(b"[3]".to_vec())),
                ("b/x".into(), None),
            ])
            .unwrap();
        assert_eq!(stamps.len(), 4);
        assert!(stamps[1].timestamp > stamps[0].timestamp);
        assert!(stamps[3].timestamp > stamps[1].timestamp && stamps[3].deleted);
        commits_reach(2);
        assert_eq!(*h.commits.lock().unwrap(), 2, "the batch is one commit");
        assert!(h.store.get("b/x").unwrap().unwrap().stamp.deleted);
        assert_eq!(h.store.get("b/y").unwrap().unwrap().data, b"[3]");
    }

    #[test]
    fn delete_many_makes_tombstones_for_live_keys_only() {
        let h = Harness::new();
        for k in ["p/a", "p/b", "p/c"] {
            h.client(k, Some("1"), Condition::default()).unwrap();
        }
        h.client("p/b", None, Condition::default()).unwrap();
        h.local.lock().unwrap().clear();
        let n = h
            .writer
            .delete_many(vec![
                "p/a".into(),
                "p/b".into(),
                "p/c".into(),
                "p/none".into(),
            ])
            .unwrap();
        assert_eq!(n, 2, "p/b was already deleted, p/none never existed");
        for k in ["p/a", "p/b", "p/c"] {
            assert!(h.store.get(k).unwrap().unwrap().stamp.deleted, "{k}");
        }
        assert!(h.store.get("p/none").unwrap().is_none());
        // The new tombstones replicate like client deletes.
        assert_eq!(
            *h.local.lock().unwrap(),
            vec!["p/a".to_string(), "p/c".to_string()]
        );
    }

    #[test]
    fn remote_versions_go_through_the_merge_rule() {
        let h = Harness::new();
        let mine = h
            .client("r", Some("\"mine\""), Condition::default())
            .unwrap();
        let ts = mine.stamp.timestamp;
        let report = h
            .writer
            .apply_remote(vec![
                ("r".into(), version(ts - 5, Some("\"older\""))),
                ("new".into(), version(7, Some("\"new\""))),
            ])
            .unwrap();
        assert_eq!(
            report,
            RemoteReport {
                applied: 1,
                ignored: 1,
                conflicts: 0
            }
        );
        assert_eq!(h.store.get("r").unwrap().unwrap().data, b"\"mine\"");
        let rival = version(ts, Some("\"rival\""));
        let report = h
            .writer
            .apply_remote(vec![("r".into(), rival.clone())])
            .unwrap();
        assert_eq!(report.conflicts, 1);
        assert_eq!(
            h.store.get("r").unwrap().unwrap().data,
            b"\"mine\"",
            "kept until resolved"
        );
        let found = h.conflicts.lock().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].incoming, rival);
        drop(found);
        // The winner replaces the local version at the same timestamp.
        assert!(h.writer.resolve("r".into(), rival.clone()).unwrap());
        assert_eq!(h.store.get("r").unwrap().unwrap(), rival);
        // Remote versions are not pushed on.
        assert_eq!(*h.local.lock().unwrap(), ["r"]);
    }

    #[test]
    fn the_purge_removes_only_old_tombstones() {
        let h = Harness::new();
        h.writer
            .apply_remote(vec![
                ("t-old".into(), version(100, None)),
                ("t-new".into(), version(10_000, None)),
                ("v-old".into(), version(100, Some("1"))),
            ])
            .unwrap();
        assert_eq!(h.writer.purge(5_000).unwrap(), 1);
        assert!(h.store.get("t-old").unwrap().is_none());
        assert!(h.store.get("t-new").unwrap().is_some());
        assert!(h.store.get("v-old").unwrap().is_some());
        assert!(h.store.verify_tree().unwrap());
    }

    #[test]
    fn a_purge_of_more_than_one_batch_removes_them_all() {
        let h = Harness::new();
        let n = PURGE_BATCH * 2 + 17;
        for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
            let versions = chunk
                .iter()
                .map(|i| (format!("t/{i:06}"), version(100 + *i as u64, None)))
                .collect();
            h.writer.apply_remote(versions).unwrap();
        }
        h.writer
            .apply_remote(vec![("t/young".into(), version(1_000_000, None))])
            .unwrap();
        assert_eq!(h.store.counts().unwrap(), (n as u64 + 1, n as u64 + 1));
        assert_eq!(h.writer.purge(500_000).unwrap(), n);
        assert_eq!(h.store.counts().unwrap(), (1, 1), "only the young one left");
        assert!(h.store.verify_tree().unwrap());
    }
}
