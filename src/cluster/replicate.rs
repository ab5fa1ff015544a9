//! Push on write: after each commit, new local versions go to every healthy
//! peer within milliseconds.
//!
//! Each peer has its own bounded queue; a small pool of sender threads
//! (`SENDERS_MAX`, started as needed) serves the peers whose queues have
//! work, one peer per sender at a time, so a peer's versions arrive in
//! order. The writer hands versions over without waiting, and a queue that
//! is full, or a push that fails, drops the versions and leaves a mark
//! instead ("resend from timestamp T"); a peer that fails backs off without
//! holding a sender. When the peer answers again, senders page through the
//! local time index from T, one page per turn, and push what it missed. A version waiting for several peers is
//! held once, shared by their queues, and all queues together are bounded
//! too (`TOTAL_MAX_*`), so the memory push takes does not grow with the
//! number of members; neither does the number of sender threads. Versions that reached this node from other
//! peers are not pushed again: every node pushes its own writes to
//! everyone, and the syncs cover the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::acks::Acks;
use super::wire::WireVersion;
use super::{Members, Stopper};
use crate::cluster::peer::{self, PeerClient};
use crate::metrics::Metrics;
use crate::store::{Store, Version};

/// Versions waiting for one peer at most; beyond, the peer needs a resend.
pub const QUEUE_MAX_VERSIONS: usize = 20_000;
/// Data bytes waiting for one peer at most.
pub const QUEUE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Versions waiting in all queues together at most (each queue counted).
pub const TOTAL_MAX_VERSIONS: usize = 100_000;
/// Data bytes waiting in all queues together at most (each queue counted,
/// though a version waiting for several peers is held once).
pub const TOTAL_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Versions in one push request at most.
pub const PUSH_MAX_VERSIONS: usize = 1000;
/// Data bytes in one push request at most (one larger version still goes).
pub const PUSH_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Wait after a failed push, doubled per failure up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a sender waits for more versions before a push.
const PUSH_LINGER: Duration = Duration::from_millis(2);
/// Sender threads at most, shared by all peers (a frozen peer holds one
/// for at most a push timeout, then backs off).
pub const SENDERS_MAX: usize = 16;
/// How often senders look for peers that wait for a resend or a retry.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);

/// `POST /internal/push`: versions written on the sender.
#[derive(Debug, Serialize, Deserialize)]
pub struct PushRequest {
    /// The sending node's id.
    pub from: String,
    pub versions: Vec<WireVersion>,
}

/// The reply to a push: what the merge rule did with it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PushReply {
    pub applied: usize,
    pub ignored: usize,
    pub conflicts: usize,
}

struct Queued {
    /// The key and version, shared by every queue it waits in.
    item: Arc<(String, Version)>,
    committed: Instant,
    /// The commit it came from: a push takes a commit's versions whole
    /// when they fit, so that a peer applies a batch in one commit too.
    group: u64,
}

impl Queued {
    fn key(&self) -> &str {
        &self.item.0
    }

    fn version(&self) -> &Version {
        &self.item.1
    }
}

/// What all queues hold together.
#[derive(Default)]
struct Totals {
    versions: AtomicUsize,
    bytes: AtomicUsize,
}

impl Totals {
    fn add(&self, versions: usize, bytes: usize) {
        self.versions.fetch_add(versions, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, versions: usize, bytes: usize) {
        self.versions.fetch_sub(versions, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn would_overflow(&self, versions: usize, bytes: usize) -> bool {
        self.versions.load(Ordering::Relaxed) + versions > TOTAL_MAX_VERSIONS
            || self.bytes.load(Ordering::Relaxed) + bytes > TOTAL_MAX_BYTES
    }
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Queued>,
    bytes: usize,
    /// Versions from this timestamp on may be missing on the peer.
    resend_from: Option<u64>,
    /// Within `resend_from`'s timestamp, the last key already resent.
    resend_after: Option<String>,
    /// Listed for a sender, or being served by one: no second sender may
    /// take the peer, so its versions arrive in order.
    scheduled: bool,
    /// Pushes failed in a row, and no retry before this.
    failures: u32,
    not_before: Option<Instant>,
    closed: bool,
}

impl QueueState {
    /// Claims the peer for a sender unless one has it or it backs off.
    fn claim(&mut self, now: Instant) -> bool {
        if self.scheduled || self.closed || self.not_before.is_some_and(|t| now < t) {
            return false;
        }
        self.scheduled = true;
        true
    }
}

/// One peer's queue.
struct PeerQueue {
    peer_id: String,
    address: Mutex<String>,
    state: Mutex<QueueState>,
    cv: Condvar,
}

impl PeerQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bounds of a queue, as pure logic: would adding `n` versions of `bytes`
/// overflow it?
pub fn overflows(queued: usize, queued_bytes: usize, n: usize, bytes: usize) -> bool {
    queued + n > QUEUE_MAX_VERSIONS || queued_bytes + bytes > QUEUE_MAX_BYTES
}

/// Takes the next push batch from the front of a queue: at most
/// `PUSH_MAX_VERSIONS` versions and `PUSH_MAX_BYTES` of data, at least one,
/// and whole commits: a commit's versions go in one push unless they alone
/// are over the limits (then they are split at the limits).
fn take_batch(items: &mut VecDeque<Queued>, bytes: &mut usize) -> Vec<Queued> {
    let mut out = Vec::new();
    let mut size = 0;
    while let Some(front) = items.front() {
        let group = front.group;
        let (n, len) = items
            .iter()
            .take_while(|q| q.group == group)
            .fold((0, 0), |(n, l), q| (n + 1, l + q.version().data.len()));
        let fits = out.len() + n <= PUSH_MAX_VERSIONS && size + len <= PUSH_MAX_BYTES;
        if !fits && !out.is_empty() {
            break;
        }
        for _ in 0..n {
            let len = items.front().map_or(0, |q| q.version().data.len());
            if !out.is_empty() && (out.len() >= PUSH_MAX_VERSIONS || size + len > PUSH_MAX_BYTES) {
                // A commit larger than one push: split at the limits.
                return out;
            }
            size += len;
            *bytes -= len;
            out.push(items.pop_front().expect("front exists"));
        }
    }
    out
}

/// The peers with work waiting, each listed at most once, and the sender
/// threads that take them.
#[derive(Default)]
struct Ready {
    peers: VecDeque<Arc<PeerQueue>>,
    /// Sender threads started, and those waiting for a peer.
    senders: usize,
    idle: usize,
    /// When a sender last scanned the queues (one scan per interval for
    /// all senders together).
    last_scan: Option<Instant>,
}

/// What a sender did with a peer it took.
enum Turn {
    /// Nothing left to do for now.
    Done,
    /// More to push: list the peer again.
    More,
    /// The peer did not answer: back off, then resend from there.
    Failed(u64),
    /// The peer is no longer a member: its queue is gone.
    Gone,
}

/// The push side of replication.
pub struct Replicator {
    me: String,
    queues: Mutex<HashMap<String, Arc<PeerQueue>>>,
    totals: Totals,
    ready: Mutex<Ready>,
    ready_cv: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    members: Arc<Members>,
    store: Arc<Store>,
    peer: PeerClient,
    metrics: Arc<Metrics>,
    stopper: Arc<Stopper>,
    throttle: Duration,
    /// Writes waiting for acknowledgements (`?w=`), told of every push
    /// a peer answered.
    pub acks: Arc<Acks>,
    /// Numbers the commits handed to `enqueue`.
    groups: std::sync::atomic::AtomicU64,
    this: Weak<Replicator>,
}

impl Replicator {
    pub fn new(
        me: String,
        members: Arc<Members>,
        store: Arc<Store>,
        peer: PeerClient,
        metrics: Arc<Metrics>,
        stopper: Arc<Stopper>,
        throttle: Duration,
    ) -> Arc<Replicator> {
        Arc::new_cyclic(|this| Replicator {
            me,
            queues: Mutex::new(HashMap::new()),
            totals: Totals::default(),
            ready: Mutex::new(Ready::default()),
            ready_cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            members,
            store,
            peer,
            metrics,
            stopper,
            throttle,
            acks: Acks::new(),
            groups: std::sync::atomic::AtomicU64::new(0),
            this: this.clone(),
        })
    }

    /// Hands committed local versions to every peer's queue. Never blocks
    /// on the network; called by the writer thread after each commit.
    pub fn enqueue(&self, versions: &[(String, Version)]) {
        if versions.is_empty() || self.stopper.is_stopped() {
            return;
        }
        let now = Instant::now();
        let group = self.groups.fetch_add(1, Ordering::Relaxed);
        let bytes: usize = versions.iter().map(|(_, v)| v.data.len()).sum();
        let oldest = versions
            .iter()
            .map(|(_, v)| v.stamp.timestamp)
            .min()
            .unwrap_or(0);
        let shared: Vec<Arc<(String, Version)>> = versions
            .iter()
            .map(|(k, v)| Arc::new((k.clone(), v.clone())))
            .collect();
        let healthy = self.members.healthy_peers();
        let unhealthy = self.members.unhealthy_peers();
        let mut to_schedule = Vec::new();
        {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            for p in healthy {
                let q = queues
                    .entry(p.id.clone())
                    .or_insert_with(|| {
                        Arc::new(PeerQueue {
                            peer_id: p.id.clone(),
                            address: Mutex::new(p.address.clone()),
                            state: Mutex::new(QueueState::default()),
                            cv: Condvar::new(),
                        })
                    })
                    .clone();
                *q.address.lock().unwrap_or_else(|e| e.into_inner()) = p.address;
                let mut s = q.lock();
                if overflows(s.items.len(), s.bytes, versions.len(), bytes)
                    || self.totals.would_overflow(versions.len(), bytes)
                {
                    s.resend_from = Some(s.resend_from.map_or(oldest, |r| r.min(oldest)));
                    self.metrics
                        .push_dropped
                        .fetch_add(versions.len() as u64, Ordering::Relaxed);
                } else {
                    for item in &shared {
                        s.items.push_back(Queued {
                            item: item.clone(),
                            committed: now,
                            group,
                        });
                    }
                    s.bytes += bytes;
                    self.totals.add(versions.len(), bytes);
                }
                q.cv.notify_one();
                if s.claim(now) {
                    to_schedule.push(q.clone());
                }
            }
            // An unhealthy peer gets nothing now, and everything once it is
            // back (the senders' scan lists it again).
            for p in unhealthy {
                if let Some(q) = queues.get(&p.id) {
                    let mut s = q.lock();
                    s.resend_from = Some(s.resend_from.map_or(oldest, |r| r.min(oldest)));
                }
            }
        }
        for q in to_schedule {
            self.schedule(q);
        }
    }

    /// Versions waiting in all queues (for /metrics).
    pub fn queue_depth(&self) -> usize {
        self.totals.versions.load(Ordering::Relaxed)
    }

    /// Lists a peer (already claimed) for a sender, starting one if none
    /// is idle and fewer than `SENDERS_MAX` run.
    fn schedule(&self, q: Arc<PeerQueue>) {
        let start = {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.peers.push_back(q);
            let start = ready.idle == 0 && ready.senders < SENDERS_MAX;
            if start {
                ready.senders += 1;
            }
            start
        };
        self.ready_cv.notify_one();
        if start {
            self.spawn_sender();
        }
    }

    fn spawn_sender(&self) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        match std::thread::Builder::new()
            .name("push".into())
            .spawn(move || this.sender_loop())
        {
            Ok(handle) => {
                let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
                threads.retain(|t| !t.is_finished());
                threads.push(handle);
            }
            Err(e) => {
                self.ready.lock().unwrap_or_else(|e| e.into_inner()).senders -= 1;
                log::error!("cannot start a push thread: {e}");
            }
        }
    }

    /// Every peer queue, copied out of the lock.
    fn queue_snapshot(&self) -> Vec<Arc<PeerQueue>> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Wakes every sender thread and waits for them (at shutdown).
    pub fn stop(&self) {
        self.ready_cv.notify_all();
        let queues = self.queue_snapshot();
        for q in queues {
            q.lock().closed = true;
            q.cv.notify_all();
        }
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    /// Lists again the peers that wait for nothing but time: a resend once
    /// they are healthy, a retry once their backoff is over. Drops the
    /// queues of peers that are no longer members.
    fn scan(&self) {
        let now = Instant::now();
        let queues = self.queue_snapshot();
        for q in queues {
            if !self.members.is_member(&q.peer_id) {
                self.drop_queue(&q);
                continue;
            }
            let healthy = self.members.is_healthy(&q.peer_id);
            let due = {
                let mut s = q.lock();
                let work = !s.items.is_empty() || (healthy && s.resend_from.is_some());
                work && s.claim(now)
            };
            if due {
                self.schedule(q);
            }
        }
    }

    fn drop_queue(&self, q: &PeerQueue) {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&q.peer_id);
        let mut s = q.lock();
        self.totals.sub(s.items.len(), s.bytes);
        s.items.clear();
        s.bytes = 0;
        log::debug!("push queue for {} dropped: no longer a member", q.peer_id);
    }

    /// One sender thread: take a listed peer, give it one turn (a batch or
    /// a page of a resend), list it again if it has more; every
    /// `SCAN_INTERVAL` look for peers that wait for nothing but time.
    fn sender_loop(&self) {
        loop {
            if self.stopper.is_stopped() {
                return;
            }
            let scan_due = {
                let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                let due = ready.last_scan.is_none_or(|t| t.elapsed() >= SCAN_INTERVAL);
                if due {
                    ready.last_scan = Some(Instant::now());
                }
                due
            };
            if scan_due {
                self.scan();
            }
            let q = {
                let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                match ready.peers.pop_front() {
                    Some(q) => q,
                    None => {
                        ready.idle += 1;
                        let (mut ready, _) = self
                            .ready_cv
                            .wait_timeout(ready, SCAN_INTERVAL)
                            .unwrap_or_else(|e| e.into_inner());
                        ready.idle -= 1;
                        match ready.peers.pop_front() {
                            Some(q) => q,
                            None => continue,
                        }
                    }
                }
            };
            match self.turn(&q) {
                Turn::More => self.schedule(q),
                Turn::Done | Turn::Gone => q.lock().scheduled = false,
                Turn::Failed(from) => {
                    let mut s = q.lock();
                    s.resend_from = Some(s.resend_from.map_or(from, |r| r.min(from)));
                    s.failures = s.failures.saturating_add(1);
                    let wait = RETRY_MIN
                        .saturating_mul(1 << s.failures.min(6))
                        .min(RETRY_MAX);
                    s.not_before = Some(Instant::now() + wait);
                    s.scheduled = false;
                }
            }
        }
    }

    /// One turn for one peer: a batch of queued versions, or one page of a
    /// resend from the local time index.
    fn turn(&self, q: &PeerQueue) -> Turn {
        if !self.members.is_member(&q.peer_id) {
            self.drop_queue(q);
            return Turn::Gone;
        }
        let healthy = self.members.is_healthy(&q.peer_id);
        let address = q.address.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (batch, resend) = {
            let mut s = q.lock();
            if s.closed {
                return Turn::Done;
            }
            // Versions committed a moment ago may be followed by more: wait
            // for them, so that the peer commits them in one transaction
            // rather than several (a little replication lag buys the peers,
            // and the cores they share, a lot of work). Versions that
            // already waited for a sender go at once.
            // A write waiting for acknowledgements does not wait for
            // company: its client does.
            let newest = s.items.back().map(|b| b.committed.elapsed());
            let linger = self.acks.waiting() == 0;
            if let Some(age) = newest.filter(|age| linger && *age < PUSH_LINGER) {
                if s.items.len() < PUSH_MAX_VERSIONS {
                    s =
                        q.cv.wait_timeout(s, PUSH_LINGER - age)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                }
            }
            let batch = {
                let QueueState { items, bytes, .. } = &mut *s;
                let before = *bytes;
                let batch = take_batch(items, bytes);
                self.totals.sub(batch.len(), before - *bytes);
                batch
            };
            let resend = if batch.is_empty() && healthy {
                s.resend_from
                    .take()
                    .map(|from| (from, s.resend_after.take()))
            } else {
                None
            };
            (batch, resend)
        };
        let result = if !batch.is_empty() {
            self.push_batch(&q.peer_id, &address, &batch).map(|()| None)
        } else if let Some((from, after_key)) = resend {
            self.resend_page(&address, q, from, after_key)
        } else {
            return Turn::Done;
        };
        match result {
            Err(from) => Turn::Failed(from),
            Ok(next) => {
                let mut s = q.lock();
                s.failures = 0;
                if let Some((ts, key)) = next {
                    // The resend goes on from here, unless something older
                    // was dropped meanwhile.
                    match s.resend_from {
                        Some(r) if r < ts => {}
                        _ => {
                            s.resend_from = Some(ts);
                            s.resend_after = Some(key);
                        }
                    }
                }
                let more = !s.items.is_empty() || (healthy && s.resend_from.is_some());
                if more {
                    Turn::More
                } else {
                    Turn::Done
                }
            }
        }
    }

    /// Pushes one batch; on failure returns the timestamp to resend from.
    fn push_batch(&self, peer_id: &str, address: &str, batch: &[Queued]) -> Result<(), u64> {
        let oldest = batch
            .iter()
            .map(|b| b.version().stamp.timestamp)
            .min()
            .unwrap_or(0);
        let versions = batch
            .iter()
            .filter_map(|b| WireVersion::from_version(b.key(), b.version()))
            .collect();
        match self.send(address, versions) {
            Ok(()) => {
                self.acks.acked(
                    peer_id,
                    batch.iter().map(|b| (b.key(), b.version().stamp.uuid)),
                );
                let now = Instant::now();
                for b in batch {
                    self.metrics
                        .replication_lag
                        .observe(now.duration_since(b.committed));
                }
                self.metrics
                    .pushed_versions
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(()) => {
                self.metrics
                    .push_dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Err(oldest)
            }
        }
    }

    fn send(&self, address: &str, versions: Vec<WireVersion>) -> Result<(), ()> {
        match push(&self.peer, &self.me, address, versions, peer::NORMAL, None) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.metrics.push_failures.fetch_add(1, Ordering::Relaxed);
                log::debug!("push to {address} failed: {e}");
                Err(())
            }
        }
    }

    /// Pushes one page of the local time index from `(from, after_key)` on
    /// (after pausing `throttle_delay_ms` if it is not the first page).
    /// Returns where the next page starts, `None` when the resend is done,
    /// or the timestamp to resend from on failure.
    fn resend_page(
        &self,
        address: &str,
        q: &PeerQueue,
        from: u64,
        after_key: Option<String>,
    ) -> Result<Option<(u64, String)>, u64> {
        if after_key.is_none() {
            log::info!("resending versions since {from} to {}", q.peer_id);
        } else if self.stopper.wait(self.throttle) {
            return Ok(None);
        }
        let page = self
            .store
            .since(
                from,
                after_key.as_deref(),
                PUSH_MAX_VERSIONS,
                PUSH_MAX_BYTES,
            )
            .map_err(|e| {
                log::error!("reading versions to resend: {e}");
                from
            })?;
        if !page.versions.is_empty() {
            let versions = page
                .versions
                .iter()
                .filter_map(|(k, v)| WireVersion::from_version(k, v))
                .collect();
            self.send(address, versions).map_err(|_| from)?;
            self.acks.acked(
                &q.peer_id,
                page.versions
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.stamp.uuid)),
            );
        }
        if page.next.is_none() {
            log::info!("resend to {} done", q.peer_id);
        }
        Ok(page.next)
    }
}

/// The sending half of a push, for every sender (replication, anti-entropy,
/// conflict winners): `versions` of this node (`me`) to the peer at
/// `address`.
pub fn push(
    client: &peer::PeerClient,
    me: &str,
    address: &str,
    versions: Vec<WireVersion>,
    timeout: Duration,
    traffic: Option<&peer::Traffic>,
) -> Result<PushReply, super::ClusterError> {
    let request = PushRequest {
        from: me.to_string(),
        versions,
    };
    client.post(address, "/internal/push", &request, timeout, traffic)
}

/// The receiving half of a push (`POST /internal/push`): every version is
/// checked, then all go through the merge rule in one commit.
pub fn receive(
    cluster: &super::Cluster,
    push: PushRequest,
) -> Result<PushReply, super::ClusterError> {
    let n = push.versions.len();
    let versions = super::wire::decode_versions(push.versions, cluster.config.max_value_bytes)
        .map_err(|e| {
            super::ClusterError::Invalid(format!("bad version from {}: {e}", push.from))
        })?;
    let report = cluster.writer.apply_remote(versions)?;
    cluster
        .metrics
        .received_versions
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(PushReply {
        applied: report.applied,
        ignored: report.ignored,
        conflicts: report.conflicts,
    })
}

#[cfg(test)]
mod tests;
