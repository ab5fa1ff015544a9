//! Push on write: after each commit, new local versions go to every healthy
//! peer within milliseconds.
//!
//! Each peer has its own bounded queue and its own sender thread, so a slow
//! or dead peer only ever delays itself: the writer hands versions over
//! without waiting, and a queue that is full, or a push that fails, drops
//! the versions and leaves a mark instead ("resend from timestamp T"). When
//! the peer answers again, its thread pages through the local time index
//! from T and pushes what it missed. A version waiting for several peers is
//! held once, shared by their queues, and all queues together are bounded
//! too (`TOTAL_MAX_*`), so the memory push takes does not grow with the
//! number of members (the member table is bounded by `max_members`, and so
//! are the sender threads). Versions that reached this node from other
//! peers are not pushed again: every node pushes its own writes to
//! everyone, and the syncs cover the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::wire::WireVersion;
use super::{Members, Stopper};
use crate::metrics::Metrics;
use crate::peer::{self, PeerClient};
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
/// How often an idle sender thread checks that its peer is still a member.
const IDLE_CHECK: Duration = Duration::from_secs(1);

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
    closed: bool,
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

    fn mark_resend(&self, from: u64) {
        let mut s = self.lock();
        s.resend_from = Some(s.resend_from.map_or(from, |r| r.min(from)));
        self.cv.notify_one();
    }
}

/// Bounds of a queue, as pure logic: would adding `n` versions of `bytes`
/// overflow it?
pub fn overflows(queued: usize, queued_bytes: usize, n: usize, bytes: usize) -> bool {
    queued + n > QUEUE_MAX_VERSIONS || queued_bytes + bytes > QUEUE_MAX_BYTES
}

/// Takes the next push batch from the front of a queue: at most
/// `PUSH_MAX_VERSIONS` versions and `PUSH_MAX_BYTES` of data, at least one.
fn take_batch(items: &mut VecDeque<Queued>, bytes: &mut usize) -> Vec<Queued> {
    let mut out = Vec::new();
    let mut size = 0;
    while let Some(front) = items.front() {
        let len = front.version().data.len();
        if !out.is_empty() && (out.len() >= PUSH_MAX_VERSIONS || size + len > PUSH_MAX_BYTES) {
            break;
        }
        size += len;
        *bytes -= len;
        out.push(items.pop_front().expect("front exists"));
    }
    out
}

/// The push side of replication.
pub struct Replicator {
    me: String,
    queues: Mutex<HashMap<String, Arc<PeerQueue>>>,
    totals: Totals,
    threads: Mutex<Vec<JoinHandle<()>>>,
    members: Arc<Members>,
    store: Arc<Store>,
    peer: PeerClient,
    metrics: Arc<Metrics>,
    stopper: Arc<Stopper>,
    throttle: Duration,
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
            threads: Mutex::new(Vec::new()),
            members,
            store,
            peer,
            metrics,
            stopper,
            throttle,
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
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        for p in healthy {
            let q = match queues.get(&p.id) {
                Some(q) => q.clone(),
                None => {
                    let q = Arc::new(PeerQueue {
                        peer_id: p.id.clone(),
                        address: Mutex::new(p.address.clone()),
                        state: Mutex::new(QueueState::default()),
                        cv: Condvar::new(),
                    });
                    self.spawn_sender(q.clone());
                    queues.insert(p.id.clone(), q.clone());
                    q
                }
            };
            *q.address.lock().unwrap_or_else(|e| e.into_inner()) = p.address;
            let mut s = q.lock();
            if overflows(s.items.len(), s.bytes, versions.len(), bytes)
                || self.totals.would_overflow(versions.len(), bytes)
            {
                s.resend_from = Some(s.resend_from.map_or(oldest, |r| r.min(oldest)));
                self.metrics
                    .push_dropped
                    .fetch_add(versions.len() as u64, std::sync::atomic::Ordering::Relaxed);
            } else {
                for item in &shared {
                    s.items.push_back(Queued {
                        item: item.clone(),
                        committed: now,
                    });
                }
                s.bytes += bytes;
                self.totals.add(versions.len(), bytes);
            }
            q.cv.notify_one();
        }
        // An unhealthy peer gets nothing now, and everything once it is back.
        for p in unhealthy {
            if let Some(q) = queues.get(&p.id) {
                q.mark_resend(oldest);
            }
        }
    }

    /// Versions waiting in all queues (for /metrics).
    pub fn queue_depth(&self) -> usize {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.values().map(|q| q.lock().items.len()).sum()
    }

    fn spawn_sender(&self, q: Arc<PeerQueue>) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let name = format!("push-{}", q.peer_id);
        match std::thread::Builder::new()
            .name(name)
            .spawn(move || this.sender_loop(&q))
        {
            Ok(handle) => {
                let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
                threads.retain(|t| !t.is_finished());
                threads.push(handle);
            }
            Err(e) => log::error!("cannot start a push thread: {e}"),
        }
    }

    /// Wakes every sender thread and waits for them (at shutdown).
    pub fn stop(&self) {
        let queues: Vec<Arc<PeerQueue>> = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
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

    /// One peer's sender thread: push batches as they come, resend what
    /// was dropped once the peer answers, back off while it does not.
    fn sender_loop(&self, q: &PeerQueue) {
        let mut failures: u32 = 0;
        loop {
            if self.stopper.is_stopped() {
                return;
            }
            if !self.members.is_member(&q.peer_id) {
                self.queues
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&q.peer_id);
                let mut s = q.lock();
                self.totals.sub(s.items.len(), s.bytes);
                s.items.clear();
                s.bytes = 0;
                log::debug!("push thread for {} ends: no longer a member", q.peer_id);
                return;
            }
            let healthy = self.members.is_healthy(&q.peer_id);
            let address = q.address.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let (batch, resend) = {
                let mut s = q.lock();
                if s.items.is_empty() && (s.resend_from.is_none() || !healthy) && !s.closed {
                    s =
                        q.cv.wait_timeout(s, IDLE_CHECK)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                }
                if s.closed {
                    return;
                }
                // Wait a moment for more versions, so that the peer commits
                // them in one transaction rather than several: a little
                // replication lag buys the peers (and the cores they share)
                // a lot of work.
                if !s.items.is_empty() && s.items.len() < PUSH_MAX_VERSIONS {
                    s =
                        q.cv.wait_timeout(s, PUSH_LINGER)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                }
                let batch = {
                    let QueueState { items, bytes, .. } = &mut *s;
                    let before = *bytes;
                    let batch = take_batch(items, bytes);
                    self.totals.sub(batch.len(), before - *bytes);
                    batch
                };
                let resend = if batch.is_empty() && healthy {
                    s.resend_from.take()
                } else {
                    None
                };
                (batch, resend)
            };
            let result = if !batch.is_empty() {
                self.push_batch(&address, &batch)
            } else if let Some(from) = resend {
                self.resend(&address, q, from)
            } else {
                continue;
            };
            match result {
                Ok(()) => failures = 0,
                Err(from) => {
                    q.mark_resend(from);
                    failures = failures.saturating_add(1);
                    let wait = RETRY_MIN
                        .saturating_mul(1 << failures.min(6))
                        .min(RETRY_MAX);
                    if self.stopper.wait(wait) {
                        return;
                    }
                }
            }
        }
    }

    /// Pushes one batch; on failure returns the timestamp to resend from.
    fn push_batch(&self, address: &str, batch: &[Queued]) -> Result<(), u64> {
        let oldest = batch
            .iter()
            .map(|b| b.version().stamp.timestamp)
            .min()
            .unwrap_or(0);
        let request = PushRequest {
            from: self.me.clone(),
            versions: batch
                .iter()
                .filter_map(|b| WireVersion::from_version(b.key(), b.version()))
                .collect(),
        };
        match self.send(address, &request) {
            Ok(()) => {
                let now = Instant::now();
                for b in batch {
                    self.metrics
                        .replication_lag
                        .observe(now.duration_since(b.committed));
                }
                self.metrics
                    .pushed_versions
                    .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(()) => {
                self.metrics
                    .push_dropped
                    .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Err(oldest)
            }
        }
    }

    fn send(&self, address: &str, request: &PushRequest) -> Result<(), ()> {
        match self
            .peer
            .post::<_, PushReply>(address, "/internal/push", request, peer::NORMAL, None)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                self.metrics
                    .push_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::debug!("push to {address} failed: {e}");
                Err(())
            }
        }
    }

    /// Pushes everything in the local time index from `from` on, page by
    /// page, pausing `throttle_delay_ms` between pages.
    fn resend(&self, address: &str, q: &PeerQueue, from: u64) -> Result<(), u64> {
        log::info!("resending versions since {from} to {}", q.peer_id);
        let mut cursor: (u64, Option<String>) = (from, None);
        let mut sent = 0usize;
        loop {
            let page = self
                .store
                .since(
                    cursor.0,
                    cursor.1.as_deref(),
                    PUSH_MAX_VERSIONS,
                    PUSH_MAX_BYTES,
                )
                .map_err(|e| {
                    log::error!("reading versions to resend: {e}");
                    cursor.0
                })?;
            if !page.versions.is_empty() {
                let request = PushRequest {
                    from: self.me.clone(),
                    versions: page
                        .versions
                        .iter()
                        .filter_map(|(k, v)| WireVersion::from_version(k, v))
                        .collect(),
                };
                self.send(address, &request).map_err(|_| cursor.0)?;
                sent += page.versions.len();
            }
            match page.next {
                Some((ts, key)) => cursor = (ts, Some(key)),
                None => break,
            }
            if self.stopper.wait(self.throttle) {
                return Ok(());
            }
        }
        log::info!("resent {sent} versions to {}", q.peer_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Stamp, VersionId};

    fn queued(ts: u64, size: usize) -> Queued {
        Queued {
            item: Arc::new((
                format!("k{ts}"),
                Version {
                    stamp: Stamp {
                        timestamp: ts,
                        uuid: VersionId::new_random(),
                        deleted: false,
                    },
                    data: vec![b'1'; size],
                },
            )),
            committed: Instant::now(),
        }
    }

    #[test]
    fn queues_are_bounded_by_count_and_bytes() {
        assert!(!overflows(0, 0, 10, 100));
        assert!(overflows(QUEUE_MAX_VERSIONS - 5, 0, 10, 100));
        assert!(overflows(0, QUEUE_MAX_BYTES - 50, 1, 100));
        assert!(!overflows(QUEUE_MAX_VERSIONS - 10, 0, 10, 0));
    }

    #[test]
    fn all_queues_together_are_bounded() {
        let totals = Totals::default();
        assert!(!totals.would_overflow(10, 100));
        totals.add(TOTAL_MAX_VERSIONS - 5, 0);
        assert!(totals.would_overflow(10, 0));
        totals.sub(TOTAL_MAX_VERSIONS - 5, 0);
        totals.add(0, TOTAL_MAX_BYTES - 50);
        assert!(totals.would_overflow(1, 100));
        assert!(!totals.would_overflow(1, 50));
    }

    #[test]
    fn batches_respect_limits_but_always_take_one() {
        let mut items: VecDeque<Queued> = (0..2500).map(|i| queued(i, 10)).collect();
        let mut bytes = 25_000;
        let b = take_batch(&mut items, &mut bytes);
        assert_eq!(b.len(), PUSH_MAX_VERSIONS);
        assert_eq!(b[0].version().stamp.timestamp, 0);
        assert_eq!(items.len(), 1500);
        assert_eq!(bytes, 15_000);

        let mut items: VecDeque<Queued> = [queued(1, PUSH_MAX_BYTES + 1), queued(2, 5)].into();
        let mut bytes = PUSH_MAX_BYTES + 6;
        assert_eq!(take_batch(&mut items, &mut bytes).len(), 1);
        assert_eq!(take_batch(&mut items, &mut bytes).len(), 1);
        assert_eq!(bytes, 0);
        assert!(take_batch(&mut items, &mut bytes).is_empty());
    }
}
