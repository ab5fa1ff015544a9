//! A running node: owns the store, the writer, the HTTP server and the
//! cluster threads; starts them in order and stops them in reverse.
//!
//! Every thread of a node, in the order `run` starts them:
//!
//! | thread | count | started by | what it does |
//! |---|---|---|---|
//! | `writer` (+ `respond-0..1`) | 1 (+2) | `store::writer::start` | every write transaction; responders answer committed client writes |
//! | `push` | ≤ 16, started as writes need them | `cluster::replicate` | push senders, shared by all peers |
//! | HTTP connection threads | ≤ `max_connections` | vendored tiny_http | read each request whole |
//! | `http-N` | `http_threads` | `http::start` | answer requests (after stop, `http-closed` answers 503) |
//! | `gossip` (+ `gossip-call`) | 1 (+ one per call of a round) | here | joins, gossip rounds (probes), leaves |
//! | `sync` | 1 | here | regular sync, catch-up, bootstrap, tombstone purge |
//! | `antientropy` | 1 | here | Merkle exchanges |
//! | `conflict` | 1 | here | votes on equal-timestamp conflicts |
//! | `scrub` | 1 | here | checksums of every stored version, repairs |
//! | `expiry` | 1 | here | ttl expiries through the time index |
//! | `watch` (+ `watch-answer-0..1`) | 1 (+2) | `watch::start` | wakes and answers parked blocking queries |
//! | `backup` | ≤ 1 | `http::backup` | LMDB's copy into the response's pipe |
//! | signals | 1 | `watch_signals` | SIGTERM, SIGINT, SIGHUP |
//!
//! Stop (SIGTERM/SIGINT), one log line per step: stop accepting; answer the
//! parked blocking queries (watch thread ends); answer what was received
//! (HTTP workers end); tell peers this node leaves; stop the cluster
//! threads (gossip, sync, anti-entropy, conflict, scrub, expiry) and the
//! push senders; let the writer commit what is queued (writer ends); close
//! LMDB.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock;
use crate::cluster::conflict::ConflictQueue;
use crate::cluster::gc::Reconcile;
use crate::cluster::membership::{MemberEntry, MemberTable};
use crate::cluster::replicate::Replicator;
use crate::cluster::sync::SyncState;
use crate::cluster::{antientropy, conflict, gossip, scrub, sync, Members, Stopper};
use crate::config::Config;
use crate::logging;
use crate::metrics::Metrics;
use crate::peer::PeerClient;
use crate::store::schema::{
    BOOTSTRAPPED as META_BOOTSTRAPPED, BOOTSTRAP_PENDING as META_BOOTSTRAP_PENDING,
    GENERATION as META_GENERATION, JOINED as META_JOINED, KNOWN_ADDRESSES as META_KNOWN,
    LAST_CONTACT as META_LAST_CONTACT, NODE_ID as META_NODE_ID,
};
use crate::store::writer::{self, Hooks, WriterHandle};
use crate::store::Store;
use crate::watch::Watch;

/// Whether client writes are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal = 0,
    /// Bootstrapping: client writes get 503.
    Syncing = 1,
}

/// The cluster side of a node.
pub struct Cluster {
    pub members: Arc<Members>,
    pub peer: PeerClient,
    pub replicator: Arc<Replicator>,
    pub sync: SyncState,
    pub conflicts: Arc<ConflictQueue>,
    pub stopper: Arc<Stopper>,
    left: AtomicBool,
    /// Back from an absence longer than bootstrap_max_age_hours: see
    /// `cluster::gc`.
    pub reconcile: Reconcile,
    /// Why the last attempt to join failed (every seed and known address
    /// refused or did not answer); None once joined.
    join_error: std::sync::Mutex<Option<String>>,
}

impl Cluster {
    /// True once this node has left the cluster (it then works alone).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Relaxed)
    }

    /// Records why joining failed (None: it worked). True when the reason
    /// is new, so worth a log line.
    pub fn set_join_error(&self, reason: Option<String>) -> bool {
        let mut current = self.join_error.lock().unwrap_or_else(|e| e.into_inner());
        let new = *current != reason;
        *current = reason;
        new
    }

    pub fn join_error(&self) -> Option<String> {
        self.join_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends reconciling after a completed exchange with a witness.
    pub fn reconciled(&self) {
        self.reconcile.done();
        self.members.touch();
    }
}

/// Everything a node owns.
pub struct Node {
    pub config: Config,
    pub store: Arc<Store>,
    /// Recent changes and parked blocking queries.
    pub watch: Arc<Watch>,
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
    pub cluster: Cluster,
    mode: AtomicU8,
    stopping: AtomicBool,
    exit: Mutex<mpsc::Sender<i32>>,
}

impl Node {
    pub fn mode(&self) -> Mode {
        if self.mode.load(Ordering::Relaxed) == Mode::Syncing as u8 {
            Mode::Syncing
        } else {
            Mode::Normal
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Stops the node with exit code 1 after logging why.
    pub fn fatal(&self, message: &str) {
        log::error!("{message}");
        let _ = self.exit.lock().unwrap_or_else(|e| e.into_inner()).send(1);
    }

    /// Leaves the cluster: peers are told and drop this node; it keeps
    /// serving its own data, alone, until restarted.
    pub fn leave_cluster(&self) {
        if self.cluster.left.swap(true, Ordering::SeqCst) {
            return;
        }
        gossip::announce_leave(self);
    }

    /// The `/metrics` text.
    pub fn render_metrics(&self) -> String {
        let (versions, tombstones) = self.store.counts().unwrap_or((0, 0));
        let views = self.cluster.members.views();
        let alive = views
            .iter()
            .filter(|v| v.state == crate::cluster::membership::Health::Alive)
            .count();
        let gauges = [
            (
                "kvs_commit_index",
                "Versions this node has committed, ever (X-Kvs-Index).",
                String::new(),
                self.store.commit_index() as f64,
            ),
            (
                "kvs_parked_requests",
                "Blocking queries waiting for a change.",
                String::new(),
                self.watch.parked() as f64,
            ),
            (
                "kvs_keys",
                "Keys holding a value.",
                String::new(),
                versions.saturating_sub(tombstones) as f64,
            ),
            (
                "kvs_tombstones",
                "Deleted keys kept as tombstones.",
                String::new(),
                tombstones as f64,
            ),
            (
                "kvs_unrepaired_versions",
                "Damaged versions no peer could repair yet; not served.",
                String::new(),
                self.metrics.unrepaired.load(Ordering::Relaxed) as f64,
            ),
            (
                "kvs_replication_queue_depth",
                "Versions waiting to be pushed, all peers.",
                String::new(),
                self.cluster.replicator.queue_depth() as f64,
            ),
            (
                "kvs_members",
                "Members by state, this node included.",
                "state=\"alive\"".to_string(),
                alive as f64,
            ),
            (
                "kvs_members",
                "",
                "state=\"unhealthy\"".to_string(),
                (views.len() - alive) as f64,
            ),
            (
                "kvs_syncing",
                "1 while bootstrapping.",
                String::new(),
                (self.mode() == Mode::Syncing) as u8 as f64,
            ),
        ];
        self.metrics.render(&gauges)
    }
}

/// Persists the last contact time, if it moved by more than a minute since
/// `saved` (or `force`); returns what is now saved.
pub fn save_last_contact(node: &Node, saved: u64, force: bool) -> u64 {
    let last = node.cluster.members.last_contact();
    let due = last > saved && (force || last - saved >= 60_000);
    if due
        && node
            .writer
            .meta_put(META_LAST_CONTACT, last.to_string().as_bytes())
            .is_ok()
    {
        return last;
    }
    saved
}

fn meta_u64(store: &Store, name: &str) -> Option<u64> {
    store
        .meta_get(name)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}

/// Builds the configuration again (file and options), for SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, String> + Send>;

/// Runs a node until a signal or a fatal error; returns the exit code.
pub fn run(mut config: Config, reload: Reload) -> Result<i32, String> {
    let loaded = config.clone();
    let listener = TcpListener::bind((config.bind_address, config.port)).map_err(|e| {
        format!(
            "port: cannot listen on {}:{}: {e}",
            config.bind_address, config.port
        )
    })?;
    let store =
        Arc::new(Store::open(&config.data_dir, config.map_size_mb).map_err(|e| e.to_string())?);
    let (joined, generation) = identity(&store, &config)?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if config.port == 0 {
        config.port = local.port();
        if let Some(host) = config.advertise_address.strip_suffix(":0") {
            config.advertise_address = format!("{host}:{}", local.port());
        }
    }
    let (versions, _) = store.counts().map_err(|e| e.to_string())?;
    let syncing = starts_syncing(&store, &config, versions);
    let (node, writer_thread, exit_rx) =
        assemble(config, store, joined, generation, syncing, versions);

    let http = crate::http::start(node.clone(), listener)
        .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
    let threads = start_threads(&node)?;
    let watch_thread = crate::watch::start(node.clone())
        .map_err(|e| format!("cannot start the watch thread: {e}"))?;
    watch_signals(
        node.exit.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        loaded,
        reload,
    )?;
    log_start(&node, local, versions, syncing);

    let code = exit_rx.recv().unwrap_or(1);

    log::info!("stopping: no longer accepting connections");
    node.stopping.store(true, Ordering::SeqCst);
    // Parked blocking queries are answered (with what is current) first.
    node.watch.stop();
    let _ = watch_thread.join();
    http.stop();
    log::info!("stopping: in-flight requests answered");
    if !node.cluster.has_left() && node.cluster.members.healthy_count() > 1 {
        node.leave_cluster();
    }
    node.cluster.stopper.stop();
    node.cluster.replicator.stop();
    for t in threads {
        let _ = t.join();
    }
    if !node.cluster.reconcile.is_active() {
        save_last_contact(&node, 0, true);
    }
    log::info!("stopping: cluster threads stopped");
    node.writer.stop();
    let _ = writer_thread.join();
    log::info!("stopping: queued writes committed");
    match Arc::try_unwrap(node) {
        Ok(node) => {
            drop(node);
            log::info!("stopped: LMDB closed");
        }
        Err(_) => log::info!("stopped"),
    }
    Ok(code)
}

/// The node's identity in its data directory: `joined_timestamp` is set
/// once; the generation grows with every start, so this start's entries
/// beat any from before. Written directly: the writer does not run yet.
fn identity(store: &Store, config: &Config) -> Result<(u64, u64), String> {
    let now = clock::real_now_ms();
    let joined = match meta_u64(store, META_JOINED) {
        Some(j) => j,
        None => {
            store
                .meta_put(META_JOINED, now.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
            now
        }
    };
    let generation = now.max(meta_u64(store, META_GENERATION).map_or(0, |g| g + 1));
    store
        .meta_put(META_GENERATION, generation.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    if let Ok(Some(old)) = store.meta_get(META_NODE_ID) {
        if old != config.node_id.as_bytes() {
            log::warn!(
                "data_dir {} belonged to node {:?}; it now serves node {:?}",
                config.data_dir.display(),
                String::from_utf8_lossy(&old),
                config.node_id
            );
        }
    }
    store
        .meta_put(META_NODE_ID, config.node_id.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok((joined, generation))
}

/// Whether the node starts by bootstrapping (client writes 503 until it
/// has the cluster's history): a node with seeds and no data that never
/// completed a bootstrap, or one interrupted in the middle of it.
fn starts_syncing(store: &Store, config: &Config, versions: u64) -> bool {
    let pending = store
        .meta_get(META_BOOTSTRAP_PENDING)
        .ok()
        .flatten()
        .as_deref()
        == Some(b"1");
    let bootstrapped = store.meta_get(META_BOOTSTRAPPED).ok().flatten().is_some();
    !config.seed_nodes.is_empty() && ((versions == 0 && !bootstrapped) || pending)
}

/// Builds the node around its store: the member table, the replicator,
/// the changes history and the writer (started here, with its hooks).
fn assemble(
    config: Config,
    store: Arc<Store>,
    joined: u64,
    generation: u64,
    syncing: bool,
    versions: u64,
) -> (Arc<Node>, JoinHandle<()>, mpsc::Receiver<i32>) {
    let reconcile = Reconcile::at_start(
        syncing,
        versions,
        meta_u64(&store, META_LAST_CONTACT),
        config.bootstrap_max_age,
    );
    let metrics = Arc::new(Metrics::new());
    let stopper = Arc::new(Stopper::new());
    let me = MemberEntry {
        id: config.node_id.clone(),
        address: config.advertise_address.clone(),
        joined_timestamp: joined,
        generation,
        heartbeat: 0,
        suspect: false,
        left: false,
    };
    let known = store
        .meta_get(META_KNOWN)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let members = Arc::new(Members::new(
        MemberTable::new(
            me,
            config.failure_timeout,
            config.removal_timeout,
            config.max_members,
        ),
        &config.seed_nodes,
        known,
    ));
    let peer = PeerClient::new(&config.cluster_secret);
    let replicator = Replicator::new(
        config.node_id.clone(),
        members.clone(),
        store.clone(),
        peer.clone(),
        metrics.clone(),
        stopper.clone(),
        config.throttle_delay,
    );
    let conflicts = Arc::new(ConflictQueue::new());
    let watch = Arc::new(Watch::new(store.commit_index()));
    let hooks = {
        let rep = replicator.clone();
        let cq = conflicts.clone();
        let m1 = metrics.clone();
        let w = watch.clone();
        Hooks {
            on_local: Box::new(move |v| rep.enqueue(v)),
            on_conflict: Box::new(move |c| cq.push(c)),
            on_changed: Box::new(move |index, keys| w.record(index, keys)),
            on_commit: Box::new(move |n, took| {
                m1.commits.fetch_add(1, Ordering::Relaxed);
                m1.committed_ops.fetch_add(n as u64, Ordering::Relaxed);
                m1.commit_duration.observe(took);
            }),
        }
    };
    let (writer, writer_thread) = writer::start(store.clone(), hooks);
    let (exit_tx, exit_rx) = mpsc::channel();
    let node = Arc::new(Node {
        config,
        store,
        watch,
        writer,
        metrics,
        cluster: Cluster {
            members,
            peer,
            replicator,
            sync: SyncState::default(),
            conflicts,
            stopper,
            left: AtomicBool::new(false),
            reconcile,
            join_error: std::sync::Mutex::new(None),
        },
        mode: AtomicU8::new(if syncing { Mode::Syncing } else { Mode::Normal } as u8),
        stopping: AtomicBool::new(false),
        exit: Mutex::new(exit_tx),
    });
    (node, writer_thread, exit_rx)
}

/// The body of a cluster thread.
type ThreadLoop = fn(Arc<Node>);

/// Starts the cluster threads (see the table at the top of this file).
fn start_threads(node: &Arc<Node>) -> Result<Vec<JoinHandle<()>>, String> {
    let loops: [(&str, ThreadLoop); 6] = [
        ("gossip", gossip::gossip_loop),
        ("sync", sync::sync_loop),
        ("antientropy", antientropy::antientropy_loop),
        ("conflict", conflict::resolver_loop),
        ("scrub", scrub::scrub_loop),
        ("expiry", expiry_loop),
    ];
    let mut threads = Vec::with_capacity(loops.len());
    for (name, f) in loops {
        let n = node.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || f(n))
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
        threads.push(handle);
    }
    Ok(threads)
}

/// The start line, and the warning for an open internal API.
fn log_start(node: &Node, local: std::net::SocketAddr, versions: u64, syncing: bool) {
    let cfg = &node.config;
    log::info!(
        "kvs {} node {} listening on {} (peers dial {}), data in {} ({} keys), mode {}, {} seed(s)",
        env!("CARGO_PKG_VERSION"),
        cfg.node_id,
        local,
        cfg.advertise_address,
        cfg.data_dir.display(),
        versions,
        if syncing {
            "syncing"
        } else if cfg.read_only {
            "read-only"
        } else {
            "normal"
        },
        cfg.seed_nodes.len()
    );
    if cfg.cluster_secret.is_empty() && !local.ip().is_loopback() {
        log::warn!(
            "no cluster_secret while listening on {local}: anyone who can reach this port can \
             read every value through the internal API and rewrite the member list; \
             set cluster_secret unless this network is trusted"
        );
    }
}

/// SIGTERM and SIGINT ask the node to stop, with exit code 0.
fn watch_signals(exit: mpsc::Sender<i32>, loaded: Config, reload: Reload) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot watch signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut current = loaded;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    current = reload_config(current, &reload);
                    continue;
                }
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                log::info!("{name} received");
                let _ = exit.send(0);
                return;
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// How often the expiry thread looks at the time index at least: the
/// longest a value can outlive its expiry before it becomes a tombstone
/// (reads treat it as absent from its expiry on).
const EXPIRY_POLL: Duration = Duration::from_millis(250);

/// The expiry thread: when the earliest expiry of the time index comes,
/// the writer turns the values due into their expiry tombstones, the same
/// on every node (see `Version::expiry_tombstone`), so no vote is needed.
fn expiry_loop(node: Arc<Node>) {
    loop {
        let now = clock::now_ms();
        let wait = match node.store.next_expiry() {
            Ok(Some(at)) if at <= now => match node.writer.expire(now) {
                Ok(n) => {
                    node.metrics.expired.fetch_add(n as u64, Ordering::Relaxed);
                    Duration::ZERO
                }
                Err(e) => {
                    log::warn!("expiry: {e}");
                    EXPIRY_POLL
                }
            },
            Ok(Some(at)) => Duration::from_millis(at - now).min(EXPIRY_POLL),
            Ok(None) => EXPIRY_POLL,
            Err(e) => {
                log::warn!("expiry: cannot read the time index: {e}");
                EXPIRY_POLL
            }
        };
        if node.cluster.stopper.wait(wait) {
            return;
        }
    }
}

/// SIGHUP: reopens the log file (logrotate moved it) and reads the
/// configuration again. `log_level`, `log_file` and `log_format` take
/// effect at once; other changed keys are logged as waiting for a
/// restart. A configuration that does not load is logged and changes
/// nothing but the reopening.
fn reload_config(mut current: Config, reload: &Reload) -> Config {
    let new = match reload() {
        Ok(c) => c,
        Err(e) => {
            if let Err(e) = logging::reopen(current.log_file.as_deref(), current.log_json) {
                log::warn!("SIGHUP: {e}");
            }
            log::warn!("SIGHUP: the configuration was not reloaded: {e}");
            return current;
        }
    };
    match logging::reopen(new.log_file.as_deref(), new.log_json) {
        Ok(()) => {
            current.log_file = new.log_file.clone();
            current.log_json = new.log_json;
        }
        Err(e) => {
            let _ = logging::reopen(current.log_file.as_deref(), current.log_json);
            log::warn!("SIGHUP: {e}; the log stays where it was");
        }
    }
    let changed = current.changed_keys(&new);
    if changed.is_empty() {
        log::info!("SIGHUP: configuration reloaded, nothing changed");
        return current;
    }
    if new.log_level != current.log_level {
        log::set_max_level(new.log_level);
        current.log_level = new.log_level;
        log::info!(
            "SIGHUP: log_level is now {}",
            new.log_level.as_str().to_lowercase()
        );
    }
    let later: Vec<&str> = changed.into_iter().filter(|k| *k != "log_level").collect();
    if !later.is_empty() {
        log::warn!(
            "SIGHUP: {} changed; taking effect at the next restart",
            later.join(", ")
        );
    }
    // The running configuration, with what changed live.
    current
}
