//! kvs patch: what protects a server from its clients, shared by every
//! connection: the limits, the connection slots (with the eviction of the
//! longest-waiting idle connection when all are taken), the memory budget
//! for request bodies, and the application's admission check, which sees a
//! request's head before its body is read.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::util::refined_tcp_stream::Closer;
use crate::{Header, Method};

/// A request refused from its head alone; the connection is closed after
/// the answer, and the body is not read.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`, ...).
    pub headers: Vec<(String, String)>,
    /// Sent as `application/json`.
    pub body: Vec<u8>,
}

/// Decides from a request's method, target and headers, and whether its
/// connection presented a verified client certificate, whether its body
/// may be read, and up to how many bytes.
pub type Admission =
    Arc<dyn Fn(&Method, &str, &[Header], bool) -> Result<usize, Refusal> + Send + Sync>;

/// kvs patch: what an upgrade made of an accepted connection.
pub struct Upgraded {
    /// The stream the connection's requests are read from and answered on.
    pub stream: Arc<dyn crate::util::refined_tcp_stream::SharedStream>,
    /// The client presented a certificate that was verified.
    pub client_certified: bool,
}

/// kvs patch: turns an accepted connection into the stream its requests
/// are read from (a TLS handshake), on the connection's own thread before
/// its first request, by the given deadline (the first request head's);
/// an error closes the connection.
pub type Upgrade = Arc<
    dyn Fn(crate::util::refined_tcp_stream::RawSocket, Instant) -> Result<Upgraded, String>
        + Send
        + Sync,
>;

/// Answers a request on the thread of its connection (it may also hand
/// the request to another thread, which answers it later); the connection
/// reads its next request only once this one is answered.
pub type Handler = Arc<dyn Fn(crate::Request) + Send + Sync>;

/// Limits applied to every accepted connection.
#[derive(Clone)]
pub struct ConnectionLimits {
    /// Connections open at once. When all are taken, the connection that
    /// has waited longest for its next request is closed to make room;
    /// without such a one, the accept loop waits (clients wait in the
    /// listen backlog).
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive within this
    /// long: from the accept for a new connection, from its first byte on a
    /// kept-alive one.
    pub head_timeout: Duration,
    /// A kept-alive connection with no new request is closed after this.
    pub idle_timeout: Duration,
    /// A whole request body must arrive within this long.
    pub body_timeout: Duration,
    /// A whole response must be taken by the client within this long,
    /// counted from its first byte.
    pub response_timeout: Duration,
    /// Request line (method, target, version) in bytes; longer: `414`.
    pub max_request_line: usize,
    /// One header line in bytes; longer: `431`.
    pub max_header_line: usize,
    /// Header lines per request; more: `431`.
    pub max_headers: usize,
    /// Request line and headers together in bytes; more: `431`.
    pub max_head_bytes: usize,
    /// A chunk-size line with its extensions, in bytes; longer: `400`.
    pub max_chunk_line: usize,
    /// Bytes of request bodies held in memory at once, by all connections;
    /// a body that does not fit waits up to `budget_wait`, then gets `503`.
    pub body_memory: usize,
    pub budget_wait: Duration,
    /// The largest body when no admission check is set.
    pub default_body_limit: usize,
    /// Bytes of a refused request's body read and thrown away before the
    /// connection is closed (so the client sees the answer).
    pub drain_limit: usize,
    /// Checks a request's head before its body is read.
    pub admission: Option<Admission>,
    /// Serves each request on its connection's thread, in sequence: read a
    /// request, call this, wait for the answer, read the next. None: the
    /// requests are queued for `Server::recv`.
    pub handler: Option<Handler>,
    /// kvs patch: upgrades each accepted connection (TLS) before its first
    /// request; None: plain HTTP.
    pub upgrade: Option<Upgrade>,
}

impl fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("max_connections", &self.max_connections)
            .field("head_timeout", &self.head_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("body_memory", &self.body_memory)
            .finish_non_exhaustive()
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 512,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(60),
            max_request_line: 8 * 1024,
            max_header_line: 8 * 1024,
            max_headers: 100,
            max_head_bytes: 32 * 1024,
            max_chunk_line: 4 * 1024,
            body_memory: 128 * 1024 * 1024,
            budget_wait: Duration::from_secs(5),
            default_body_limit: 1024 * 1024,
            drain_limit: 64 * 1024,
            admission: None,
            handler: None,
            upgrade: None,
        }
    }
}

/// Open connections, and those of them waiting for a request head.
pub(crate) struct Slots {
    table: Mutex<SlotTable>,
    freed: Condvar,
}

struct SlotTable {
    open: usize,
    next_id: u64,
    /// Connections waiting for the first byte of a request, since when.
    waiting: HashMap<u64, (Instant, Closer)>,
}

/// A connection's slot: freed on drop.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    closer: Closer,
}

/// A connection waiting for less than this is not closed to make room: it
/// may be a client about to send its next request.
const EVICT_MIN_WAIT: Duration = Duration::from_millis(500);

impl Slots {
    pub(crate) fn new() -> Arc<Slots> {
        Arc::new(Slots {
            table: Mutex::new(SlotTable {
                open: 0,
                next_id: 0,
                waiting: HashMap::new(),
            }),
            freed: Condvar::new(),
        })
    }

    /// Waits until a connection may be accepted: a slot is free, or the
    /// connection that has waited longest for a request is closed to free
    /// one. Returns false when `stop` says to stop waiting.
    pub(crate) fn wait_for_room(&self, max: usize, stop: &dyn Fn() -> bool) -> bool {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted_at: Option<Instant> = None;
        while table.open >= max {
            if stop() {
                return false;
            }
            // One eviction at a time: wait for the evicted thread to leave.
            let evicting = evicted_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1));
            if !evicting {
                let oldest = table
                    .waiting
                    .iter()
                    .filter(|(_, (since, _))| since.elapsed() >= EVICT_MIN_WAIT)
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(id, _)| *id);
                if let Some(id) = oldest {
                    if let Some((_, closer)) = table.waiting.remove(&id) {
                        closer.close();
                        evicted_at = Some(Instant::now());
                    }
                }
            }
            table = self
                .freed
                .wait_timeout(table, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        !stop()
    }

    /// Takes a slot for a new connection.
    pub(crate) fn take(self: &Arc<Self>, closer: Closer) -> Slot {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.open += 1;
        table.next_id += 1;
        Slot {
            slots: self.clone(),
            id: table.next_id,
            closer,
        }
    }
}

impl Slot {
    /// The connection waits for a request: it may be closed to make room.
    pub(crate) fn waiting(&self) {
        let mut table = self.slots.table.lock().unwrap_or_else(|e| e.into_inner());
        table
            .waiting
            .insert(self.id, (Instant::now(), self.closer.clone()));
    }

    /// A request is being read or answered: it is not closed to make room.
    pub(crate) fn busy(&self) {
        let mut table = self.slots.table.lock().unwrap_or_else(|e| e.into_inner());
        table.waiting.remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.slots.table.lock().unwrap_or_else(|e| e.into_inner());
        table.waiting.remove(&self.id);
        table.open -= 1;
        self.slots.freed.notify_all();
    }
}

/// The memory budget for request bodies held at once.
pub(crate) struct BodyBudget {
    total: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// Bytes of the budget held by one request body; given back on drop.
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    pub(crate) fn new(total: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            total,
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// An empty reservation, to grow.
    pub(crate) fn empty(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

impl Reservation {
    /// Grows the reservation by `more` bytes, waiting up to `wait` for
    /// others to give bytes back. False if they do not fit in time.
    pub(crate) fn grow(&mut self, more: usize, wait: Duration) -> bool {
        let budget = &self.budget;
        if more > budget.total {
            return false;
        }
        let until = Instant::now() + wait;
        let mut used = budget.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + more > budget.total {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            used = budget
                .freed
                .wait_timeout(used, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += more;
        self.bytes += more;
        true
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.empty();
        assert!(a.grow(60, Duration::ZERO));
        let mut b = budget.empty();
        assert!(!b.grow(50, Duration::from_millis(10)));
        assert!(b.grow(40, Duration::ZERO));
        assert!(!b.grow(101, Duration::ZERO));
        drop(a);
        assert!(b.grow(50, Duration::ZERO));
        assert_eq!(b.bytes(), 90);
    }
}
