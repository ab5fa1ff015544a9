//! Test helpers for the cluster layer: a fake peer on 127.0.0.1 whose
//! answers a test decides, and a whole [`Cluster`] around a temporary
//! store, with a running writer, whose members are such fake peers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::conflict::ConflictQueue;
use super::gc::Reconcile;
use super::membership::{MemberEntry, MemberTable};
use super::peer::PeerClient;
use super::replicate::Replicator;
use super::sync::SyncState;
use super::{Cluster, Members, Mode, State, Stopper};
use crate::config::{Config, RawConfig};
use crate::metrics::Metrics;
use crate::store::tests::TempStore;
use crate::store::writer::{self, Hooks};

/// One request a fake peer received.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET /internal/version?key=k`, as on the request line.
    pub line: String,
    pub body: Vec<u8>,
}

/// Decides a fake peer's answer: (status, JSON body).
pub type Answer = Box<dyn Fn(&Request) -> (u16, String) + Send + Sync>;

/// A peer that answers every request with what `answer` says and keeps
/// every request it got.
pub struct FakePeer {
    pub address: String,
    pub calls: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl FakePeer {
    pub fn start(answer: Answer) -> FakePeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let calls = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let (c, r) = (calls.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (c, r, a) = (c.clone(), r.clone(), answer.clone());
                std::thread::spawn(move || while serve_one(&conn, &a, &c, &r) {});
            }
        });
        FakePeer {
            address,
            calls,
            requests,
        }
    }

    /// The requests received so far whose request line starts with `start`.
    pub fn received(&self, start: &str) -> Vec<Request> {
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|r| r.line.starts_with(start))
            .cloned()
            .collect()
    }
}

/// Reads one request from `conn` and answers it; false once the
/// connection is closed.
fn serve_one(
    conn: &TcpStream,
    answer: &Answer,
    calls: &AtomicUsize,
    requests: &Mutex<Vec<Request>>,
) -> bool {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return false;
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return false;
        }
        let header = header.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return false;
    }
    let request = Request {
        line: line.trim_end().to_string(),
        body,
    };
    calls.fetch_add(1, Ordering::SeqCst);
    let (status, reply) = answer(&request);
    requests.lock().unwrap().push(request);
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
        reply.len()
    )
    .is_ok()
}

/// A member entry for tests.
pub fn entry(id: &str, address: &str, joined_timestamp: u64) -> MemberEntry {
    MemberEntry {
        id: id.into(),
        address: address.into(),
        joined_timestamp,
        generation: 1,
        heartbeat: 0,
        suspect: false,
        left: false,
    }
}

/// A member table of "me" and `peers` (id, address, joined), all healthy.
pub fn members(peers: &[(&str, &str, u64)]) -> Arc<Members> {
    let table = MemberTable::new(
        entry("me", "127.0.0.1:1", 100),
        Duration::from_secs(60),
        Duration::from_secs(120),
        64,
    );
    let members = Arc::new(Members::new(table, &[], Default::default()));
    let entries: Vec<MemberEntry> = peers
        .iter()
        .map(|(id, address, joined)| entry(id, address, *joined))
        .collect();
    members.merge(&entries);
    for (id, _, _) in peers {
        assert!(members.is_healthy(id), "{id} is not a healthy member");
    }
    members
}

/// A cluster context named "me" over a temporary store with its writer
/// running; the writer's hooks do nothing. Call [`TestCluster::stop`].
pub struct TestCluster {
    pub cluster: Arc<Cluster>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    _temp: TempStore,
}

impl TestCluster {
    pub fn new(peers: &[(&str, &str, u64)]) -> TestCluster {
        let mut temp = TempStore::new();
        let store = Arc::new(temp.store.take().unwrap());
        let mut raw = RawConfig::default();
        raw.set("node_id", "me").unwrap();
        let config = Arc::new(Config::from_raw(raw).unwrap());
        let hooks = Hooks {
            on_local: Box::new(|_| {}),
            on_conflict: Box::new(|_| {}),
            on_changed: Box::new(|_, _| {}),
            on_commit: Box::new(|_, _| {}),
        };
        let (writer, writer_thread) = writer::start(store.clone(), hooks).unwrap();
        let members = members(peers);
        let metrics = Arc::new(Metrics::new());
        let stopper = Arc::new(Stopper::new());
        let peer = PeerClient::new("");
        let replicator = Replicator::new(
            "me".into(),
            members.clone(),
            store.clone(),
            peer.clone(),
            metrics.clone(),
            stopper.clone(),
            Duration::ZERO,
        );
        let cluster = Arc::new(Cluster {
            config,
            store,
            writer,
            metrics,
            members,
            peer,
            replicator,
            conflicts: Arc::new(ConflictQueue::new()),
            stopper,
            reconcile: Reconcile::at_start(false, 0, None, Duration::from_secs(3600)),
            sync: SyncState::default(),
            state: State::new(Mode::Normal),
            on_fatal: Box::new(|m| panic!("fatal: {m}")),
        });
        TestCluster {
            cluster,
            writer_thread: Some(writer_thread),
            _temp: temp,
        }
    }

    pub fn stop(mut self) {
        self.cluster.stopper.stop();
        self.cluster.replicator.stop();
        self.cluster.writer.stop();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}
