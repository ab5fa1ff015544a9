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
//! An error that belongs to one op (a damaged record of its key) fails that
//! op alone: the group is applied again without it, and after a few such
//! ops (or when the batch does not fit in the map, LMDB's MapFull) op by op,
//! so that every other write still commits. An error of the environment
//! (a full disk, an I/O failure) fails the whole group honestly.
//!
//! Every op is answered exactly once: with its outcome after the commit, or
//! with the error that stopped it. A client write's reply answers even when
//! it is dropped unanswered (a `503`, never tiny_http's empty `500`).
//!
//! `tx` holds what each op does inside the transaction.

mod tx;

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use super::condition::Condition;
use super::version::{Stamp, Version};
use super::{Result, Store, StoreError};
use tx::{apply, Effects, Failed, Outcome};

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
/// Ops of one group set aside for their own errors before the rest of the
/// group is applied op by op (each retry applies the whole group again).
const MAX_SET_ASIDE: usize = 4;
/// Committed groups waiting for a responder at most; beyond it the writer
/// waits before its next commit, so a client that reads its answers slowly
/// slows writes down instead of growing memory.
const ANSWERS_QUEUED: usize = 64;

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

/// The outcome of a client write.
pub type WriteOutcome = std::result::Result<Written, WriteError>;

/// Called once with the outcome of a client write, after commit. Dropped
/// without being called (the writer stopped with the op queued, or a bug),
/// it answers [`StoreError::WriterStopped`], so the request behind it is
/// always answered.
pub struct ClientReply(Option<Box<dyn FnOnce(WriteOutcome) + Send>>);

impl ClientReply {
    pub fn new(f: impl FnOnce(WriteOutcome) + Send + 'static) -> ClientReply {
        ClientReply(Some(Box::new(f)))
    }

    /// Answers the write.
    pub fn send(mut self, outcome: WriteOutcome) {
        if let Some(f) = self.0.take() {
            f(outcome);
        }
    }
}

impl Drop for ClientReply {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(WriteError::Store(StoreError::WriterStopped)));
        }
    }
}

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

/// One op of a transaction (`POST /batch` with checks, reads or
/// conditions): what it does to `key`, if `condition` holds for the key's
/// live version before the transaction.
#[derive(Debug)]
pub struct TxnOp {
    pub key: String,
    pub kind: TxnKind,
    pub condition: Option<Condition>,
}

#[derive(Debug)]
pub enum TxnKind {
    Put(Vec<u8>),
    Delete,
    /// Only the condition.
    Check,
    /// Reads the key as it is before the transaction's writes.
    Get,
}

/// What a transaction did.
#[derive(Debug)]
pub enum TxnAnswer {
    /// Every condition held: each op's result, in order.
    Done(Vec<TxnResult>),
    /// The condition of op `index` failed: the key's live version then
    /// (None: no live value). Nothing was applied.
    Failed {
        index: usize,
        current: Option<Stamp>,
    },
    /// The values its gets read came to more than the read limit; nothing
    /// was applied.
    TooMuchRead { limit: usize },
}

#[derive(Debug)]
pub enum TxnResult {
    Written(Stamp),
    Checked,
    /// The live value before the transaction (None: absent).
    Read(Option<Version>),
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
    /// A client transaction: every condition checked, reads and writes
    /// in one transaction; nothing applied if a condition fails.
    Txn {
        ops: Vec<TxnOp>,
        /// Bytes of values its gets may read together.
        read_limit: usize,
        reply: SyncSender<Result<TxnAnswer>>,
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
            Op::Txn { ops, .. } => ops
                .iter()
                .map(|o| match &o.kind {
                    TxnKind::Put(d) => d.len(),
                    _ => 0,
                })
                .sum(),
            Op::Purge { .. }
            | Op::Drop { .. }
            | Op::DeleteMany { .. }
            | Op::Expire { .. }
            | Op::Stop => 0,
        }
    }

    /// Answers the op with a store error (used when it, or its group,
    /// failed).
    fn fail(self, e: &StoreError) {
        let copy = || e.clone();
        match self {
            Op::Client { reply, .. } => reply.send(Err(WriteError::Store(copy()))),
            Op::Remote { reply: Some(r), .. } => {
                let _ = r.send(Err(copy()));
            }
            Op::Resolve { reply: Some(r), .. } | Op::Repair { reply: r, .. } => {
                let _ = r.send(Err(copy()));
            }
            Op::Purge { reply, .. }
            | Op::Drop { reply, .. }
            | Op::Expire { reply, .. }
            | Op::Meta { reply, .. }
            | Op::DeleteMany { reply, .. } => {
                let _ = reply.send(Err(copy()));
            }
            Op::Batch { reply, .. } => {
                let _ = reply.send(Err(copy()));
            }
            Op::Txn { reply, .. } => {
                let _ = reply.send(Err(copy()));
            }
            // Nobody waits for these.
            Op::Remote { reply: None, .. } | Op::Resolve { reply: None, .. } | Op::Stop => {}
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

    /// Applies a client transaction in one commit (nothing of it if a
    /// condition fails).
    pub fn txn(&self, ops: Vec<TxnOp>, read_limit: usize) -> Result<TxnAnswer> {
        self.call(|tx| Op::Txn {
            ops,
            read_limit,
            reply: tx,
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
type Answers = Vec<(ClientReply, WriteOutcome)>;

/// Starts the writer thread (and its responders). It ends after
/// [`WriterHandle::stop`], or when every handle is dropped, once every
/// committed write has been answered.
pub fn start(store: Arc<Store>, hooks: Hooks) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_OPS);
    let (answers_tx, answers_rx) = mpsc::sync_channel::<Answers>(ANSWERS_QUEUED);
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
                    reply.send(outcome);
                }
            }
            Err(_) => return,
        }
    }
}

/// The writer thread: take what is waiting, commit it together, answer.
fn writer_loop(
    store: &Store,
    hooks: &Hooks,
    rx: Receiver<Op>,
    answers: &mpsc::SyncSender<Answers>,
) {
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
        commit_group(store, hooks, answers, batch);
        (hooks.on_commit)(n, started.elapsed());
        if stopping {
            break;
        }
    }
    log::debug!("writer stopped");
}

/// Commits a group of ops, answering every one of them: ops whose own
/// error stopped the transaction are set aside (answered with it) and the
/// rest is applied again; past [`MAX_SET_ASIDE`] of them, or when the
/// group does not fit in the map, the rest goes op by op. An error of the
/// environment fails every op of the group.
fn commit_group(
    store: &Store,
    hooks: &Hooks,
    answers: &mpsc::SyncSender<Answers>,
    mut batch: Vec<Op>,
) {
    let mut set_aside = 0;
    loop {
        match apply(store, &batch) {
            Ok((outcomes, effects)) => return finish(hooks, answers, batch, outcomes, effects),
            Err(Failed { at: Some(i), error })
                if error.belongs_to_op() && set_aside < MAX_SET_ASIDE && batch.len() > 1 =>
            {
                log::warn!(
                    "a write failed on its own ({error}); the {} other(s) of its group \
                     are committed without it",
                    batch.len() - 1
                );
                batch.remove(i).fail(&error);
                set_aside += 1;
            }
            Err(Failed { error, .. })
                if batch.len() > 1
                    && (error.belongs_to_op() || matches!(error, StoreError::MapFull)) =>
            {
                return one_by_one(store, hooks, answers, batch);
            }
            Err(Failed { error, .. }) => {
                if !error.belongs_to_op() {
                    log::error!("write transaction failed: {error}");
                }
                for op in batch {
                    op.fail(&error);
                }
                return;
            }
        }
    }
}

/// Commits each op in its own transaction, so that only the ops that fail
/// (their own error, or no room in the map) are refused.
fn one_by_one(store: &Store, hooks: &Hooks, answers: &mpsc::SyncSender<Answers>, batch: Vec<Op>) {
    for op in batch {
        let one = [op];
        match apply(store, &one) {
            Ok((outcomes, effects)) => finish(hooks, answers, Vec::from(one), outcomes, effects),
            Err(Failed { error, .. }) => {
                let [op] = one;
                op.fail(&error);
            }
        }
    }
}

/// Answers the ops of a committed transaction and tells the node.
fn finish(
    hooks: &Hooks,
    answers: &mpsc::SyncSender<Answers>,
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
            (Op::Resolve { reply: Some(r), .. }, Outcome::Changed(changed))
            | (Op::Repair { reply: r, .. }, Outcome::Changed(changed)) => {
                let _ = r.send(Ok(changed));
            }
            (Op::Batch { reply, .. }, Outcome::Batch(stamps)) => {
                let _ = reply.send(Ok(stamps));
            }
            (Op::Txn { reply, .. }, Outcome::Txn(answer)) => {
                let _ = reply.send(Ok(answer));
            }
            (Op::Purge { reply, .. }, Outcome::Count(n))
            | (Op::Drop { reply, .. }, Outcome::Count(n))
            | (Op::DeleteMany { reply, .. }, Outcome::Count(n))
            | (Op::Expire { reply, .. }, Outcome::Count(n))
            | (Op::Meta { reply, .. }, Outcome::Count(n)) => {
                let _ = reply.send(Ok(n));
            }
            // Nobody waits for these.
            (Op::Remote { reply: None, .. }, Outcome::Remote(_))
            | (Op::Resolve { reply: None, .. }, Outcome::Changed(_))
            | (Op::Stop, Outcome::Nothing) => {}
            // `Tx::apply` gives each op its own kind of outcome; should
            // that ever break, the op still gets an answer (a 503 for a
            // client), and the tests fail here.
            (op, outcome) => {
                debug_assert!(false, "the writer produced {outcome:?} for another op");
                op.fail(&StoreError::WriterStopped);
            }
        }
    }
    if !client_answers.is_empty() {
        // Waits while ANSWERS_QUEUED groups are queued for the responders.
        if let Err(mpsc::SendError(left)) = answers.send(client_answers) {
            // No responder left (cannot happen while the writer runs):
            // answer here rather than drop the requests.
            for (reply, outcome) in left {
                reply.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests;
