//! Everything a node does with its peers. Each concern has its own file:
//!
//! - `membership`: the member table (pure state) and its rules;
//!   `members`: that table behind its lock, as the threads share it.
//! - `gossip`: joining, the gossip rounds, leaving (the I/O around the table).
//! - `replicate`: push on write, a small pool of senders over bounded
//!   per-peer queues.
//! - `sync`: pull: regular sync, catch-up, bootstrap (its thread also
//!   runs the purge of `gc`).
//! - `conflict`: settling equal-timestamp conflicts by vote or rule.
//! - `antientropy`: Merkle summary exchange that finds every difference.
//! - `gc`: tombstones and their purge, and the reconciling of a node back
//!   from an absence longer than they live: "a deleted key never comes
//!   back".
//! - `scrub`: the background check of every stored version, and the
//!   repair of damaged versions from a peer's copy.
//! - `peer`: the HTTP client for every call to another node.
//! - `wire`: versions as they travel.
//!
//! Here: [`Cluster`], what every cluster thread and receiver is given (no
//! thread of this module sees the whole node, and nothing here imports
//! `node`, `http` or `daemon`); [`ClusterError`], the layer's one error
//! type; the stop flag.
//!
//! Locks are never held across a network call: callers take a snapshot
//! (a list of peers, a page of versions), drop the lock, then talk.

pub mod acks;
pub mod antientropy;
pub mod calls;
pub mod conflict;
pub mod gc;
pub mod gossip;
pub mod members;
pub mod membership;
pub mod peer;
pub mod replicate;
pub mod scrub;
pub mod sync;
#[cfg(test)]
pub mod testing;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use conflict::ConflictQueue;
use gc::Reconcile;
use replicate::Replicator;
use sync::SyncState;

pub use members::Members;

use crate::cluster::peer::PeerClient;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::schema::LAST_CONTACT;
use crate::store::writer::WriterHandle;
use crate::store::{Store, StoreError};

/// Whether client writes are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal = 0,
    /// Bootstrapping: client writes get 503.
    Syncing = 1,
}

/// Stops the node, logging why (exit code 1).
pub type Fatal = Box<dyn Fn(&str) + Send + Sync>;

/// What the cluster threads and the receiving halves of the protocols
/// share: the parts of the node they use (configuration, store, writer,
/// counters) and the cluster's own state. Every cluster thread gets an
/// `Arc<Cluster>`, nothing more; the HTTP layer reaches it through the
/// node.
pub struct Cluster {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
    pub members: Arc<Members>,
    pub peer: PeerClient,
    pub replicator: Arc<Replicator>,
    pub sync: SyncState,
    pub conflicts: Arc<ConflictQueue>,
    pub stopper: Arc<Stopper>,
    /// Back from an absence longer than bootstrap_max_age_hours: see `gc`.
    pub reconcile: Reconcile,
    /// Mode, leaving and joining, changed through the methods below.
    pub state: State,
    /// Stops the node, logging why (exit code 1).
    pub on_fatal: Fatal,
}

/// The flags of a [`Cluster`] that its threads change.
pub struct State {
    mode: AtomicU8,
    left: AtomicBool,
    /// Why the last attempt to join failed (every seed and known address
    /// refused or did not answer); None once joined.
    join_error: Mutex<Option<String>>,
}

impl State {
    pub fn new(mode: Mode) -> State {
        State {
            mode: AtomicU8::new(mode as u8),
            left: AtomicBool::new(false),
            join_error: Mutex::new(None),
        }
    }
}

impl Cluster {
    pub fn mode(&self) -> Mode {
        if self.state.mode.load(Ordering::Relaxed) == Mode::Syncing as u8 {
            Mode::Syncing
        } else {
            Mode::Normal
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Stops the node with exit code 1 after logging why.
    pub fn fatal(&self, message: &str) {
        (self.on_fatal)(message)
    }

    /// True once this node has left the cluster (it then works alone).
    pub fn has_left(&self) -> bool {
        self.state.left.load(Ordering::Relaxed)
    }

    /// Leaves the cluster: peers are told and drop this node; it keeps
    /// serving its own data, alone, until restarted.
    pub fn leave(&self) {
        if self.state.left.swap(true, Ordering::SeqCst) {
            return;
        }
        gossip::announce_leave(self);
    }

    /// Records why joining failed (None: it worked). True when the reason
    /// is new, so worth a log line.
    pub fn set_join_error(&self, reason: Option<String>) -> bool {
        let mut current = self
            .state
            .join_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let new = *current != reason;
        *current = reason;
        new
    }

    pub fn join_error(&self) -> Option<String> {
        self.state
            .join_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends reconciling after a completed exchange with a witness.
    pub fn reconciled(&self) {
        self.reconcile.done();
        self.members.touch();
    }

    /// Persists the last contact time, if it moved by more than a minute
    /// since `saved` (or `force`); returns what is now saved.
    pub fn save_last_contact(&self, saved: u64, force: bool) -> u64 {
        let last = self.members.last_contact();
        let due = last > saved && (force || last - saved >= 60_000);
        if due
            && self
                .writer
                .meta_put(LAST_CONTACT, last.to_string().as_bytes())
                .is_ok()
        {
            return last;
        }
        saved
    }
}

/// What goes wrong in the cluster layer. Senders (calls to a peer) meet
/// the first four and the last; the receiving halves of the protocols
/// meet `Invalid` and `Store`, which the HTTP layer turns into a status.
#[derive(Debug)]
pub enum ClusterError {
    /// No answer: refused, timed out, connection broken.
    Unreachable(String),
    /// The peer answered with an error status and message.
    Status(u16, String),
    /// The peer answered something we cannot read.
    BadReply(String),
    /// The peer sent a version that breaks the rules.
    BadVersion(wire::WireError),
    /// A peer's request to this node is wrong (400).
    Invalid(String),
    /// This node's own store failed (not the peer's fault).
    Store(StoreError),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Unreachable(m) => write!(f, "unreachable: {m}"),
            ClusterError::Status(code, m) => write!(f, "answered {code}: {m}"),
            ClusterError::BadReply(m) => write!(f, "bad reply: {m}"),
            ClusterError::BadVersion(e) => write!(f, "bad version: {e}"),
            ClusterError::Invalid(m) => write!(f, "invalid request: {m}"),
            ClusterError::Store(e) => write!(f, "this node's store: {e}"),
        }
    }
}

impl From<StoreError> for ClusterError {
    fn from(e: StoreError) -> Self {
        ClusterError::Store(e)
    }
}

/// A stop flag that background loops wait on instead of sleeping, so a
/// shutdown never waits behind a long interval.
pub struct Stopper {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Default for Stopper {
    fn default() -> Self {
        Self::new()
    }
}

impl Stopper {
    pub fn new() -> Stopper {
        Stopper {
            stopped: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `d`; true when the node is stopping.
    pub fn wait(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = self
                .cv
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}
