//! The life of a node process: opens the store, builds the node, starts
//! every thread in order, and stops them in reverse.
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
//!
//! What each thread is given: the cluster threads and `expiry` an
//! `Arc<cluster::Cluster>`; the HTTP workers, the watch threads and
//! `backup` an `Arc<node::Node>` (they answer clients); the writer its
//! store and hooks; the push senders the replicator's queues.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::auth::Tokens;
use crate::clock;
use crate::cluster::conflict::ConflictQueue;
use crate::cluster::gc::Reconcile;
use crate::cluster::membership::{MemberEntry, MemberTable};
use crate::cluster::peer::PeerClient;
use crate::cluster::replicate::Replicator;
use crate::cluster::sync::SyncState;
use crate::cluster::{antientropy, conflict, gossip, scrub, sync};
use crate::cluster::{Cluster, Members, Mode, State, Stopper};
use crate::config::Config;
use crate::logging;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::store::schema::{
    BOOTSTRAPPED as META_BOOTSTRAPPED, BOOTSTRAP_PENDING as META_BOOTSTRAP_PENDING,
    GENERATION as META_GENERATION, JOINED as META_JOINED, KNOWN_ADDRESSES as META_KNOWN,
    LAST_CONTACT as META_LAST_CONTACT, NODE_ID as META_NODE_ID,
};
use crate::store::writer::{self, Hooks};
use crate::store::{Store, StoreError};
use crate::tls::Tls;
use crate::watch::Watch;

fn meta_u64(store: &Store, name: &str) -> Option<u64> {
    store
        .meta_get(name)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}

/// Why a node could not start.
#[derive(Debug)]
pub enum StartError {
    /// The port cannot be listened on (the address, why).
    Listen(String, std::io::Error),
    /// The data directory's store failed.
    Store(StoreError),
    /// A thread, the HTTP server or the signal handler could not be
    /// started (which, why).
    Start(String, std::io::Error),
    /// A TLS file cannot be read or does not fit (names the file).
    Tls(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Listen(at, e) => write!(f, "port: cannot listen on {at}: {e}"),
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Start(what, e) => write!(f, "cannot start {what}: {e}"),
            StartError::Tls(why) => write!(f, "{why}"),
        }
    }
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> Self {
        StartError::Store(e)
    }
}

/// `map_err` for a failed start of `what`.
fn starting(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |e| StartError::Start(what, e)
}

/// Builds the configuration again (file and options), for SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, String> + Send>;

/// Runs a node until a signal or a fatal error; returns the exit code.
pub fn run(mut config: Config, reload: Reload) -> Result<i32, StartError> {
    let loaded = config.clone();
    let tls = match &config.tls {
        Some(files) => Some(Tls::new(
            files.clone(),
            crate::tls::load(files).map_err(StartError::Tls)?,
        )),
        None => None,
    };
    let at = format!("{}:{}", config.bind_address, config.port);
    let (listener, local) = TcpListener::bind((config.bind_address, config.port))
        .and_then(|l| l.local_addr().map(|a| (l, a)))
        .map_err(|e| StartError::Listen(at, e))?;
    let store = Arc::new(Store::open(&config.data_dir, config.map_size_mb)?);
    let (joined, generation) = identity(&store, &config)?;
    if config.port == 0 {
        config.port = local.port();
        if let Some(host) = config.advertise_address.strip_suffix(":0") {
            config.advertise_address = format!("{host}:{}", local.port());
        }
    }
    let (versions, _) = store.counts()?;
    let syncing = starts_syncing(&store, &config, versions);
    let (exit_tx, exit_rx) = mpsc::channel();
    let (node, writer_thread) = assemble(
        config,
        tls,
        store,
        (joined, generation),
        syncing,
        versions,
        exit_tx.clone(),
    )?;

    let http = crate::http::start(node.clone(), listener).map_err(starting("the HTTP server"))?;
    let threads = start_threads(&node)?;
    let watch_thread = crate::watch::start(node.watch.clone(), node.clone())
        .map_err(starting("the watch thread"))?;
    watch_signals(exit_tx, loaded, reload, Live::of(&node))?;
    log_start(&node, local, versions, syncing);

    let code = exit_rx.recv().unwrap_or(1);

    log::info!("stopping: no longer accepting connections");
    node.begin_stop();
    // Parked blocking queries are answered (with what is current) first.
    node.watch.stop();
    let _ = watch_thread.join();
    http.stop();
    log::info!("stopping: in-flight requests answered");
    if !node.cluster.has_left() && node.cluster.members.healthy_count() > 1 {
        node.cluster.leave();
    }
    node.cluster.stopper.stop();
    node.cluster.replicator.stop();
    for t in threads {
        let _ = t.join();
    }
    if !node.cluster.reconcile.is_active() {
        node.cluster.save_last_contact(0, true);
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
fn identity(store: &Store, config: &Config) -> Result<(u64, u64), StoreError> {
    let now = clock::real_now_ms();
    let joined = match meta_u64(store, META_JOINED) {
        Some(j) => j,
        None => {
            store.meta_put(META_JOINED, now.to_string().as_bytes())?;
            now
        }
    };
    let generation = now.max(meta_u64(store, META_GENERATION).map_or(0, |g| g + 1));
    store.meta_put(META_GENERATION, generation.to_string().as_bytes())?;
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
    store.meta_put(META_NODE_ID, config.node_id.as_bytes())?;
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
    tls: Option<Arc<Tls>>,
    store: Arc<Store>,
    (joined, generation): (u64, u64),
    syncing: bool,
    versions: u64,
    exit: mpsc::Sender<i32>,
) -> Result<(Arc<Node>, JoinHandle<()>), StartError> {
    let reconcile = Reconcile::at_start(
        syncing,
        versions,
        meta_u64(&store, META_LAST_CONTACT),
        config.bootstrap_max_age,
    );
    let metrics = Arc::new(Metrics::new());
    let stopper = Arc::new(Stopper::new());
    let members = members_at_start(&config, &store, joined, generation);
    let peer = PeerClient::with_tls(
        &config.cluster_secret,
        tls.as_ref().map(|t| t.current().client.clone()),
    );
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
    let hooks = writer_hooks(&replicator, &conflicts, &watch, &metrics);
    let (writer, writer_thread) =
        writer::start(store.clone(), hooks).map_err(starting("the writer thread"))?;
    let fatal_tx = Mutex::new(exit);
    let config = Arc::new(config);
    let cluster = Arc::new(Cluster {
        config: config.clone(),
        store: store.clone(),
        writer: writer.clone(),
        metrics: metrics.clone(),
        members,
        peer,
        replicator,
        conflicts,
        stopper,
        reconcile,
        sync: SyncState::default(),
        state: State::new(if syncing { Mode::Syncing } else { Mode::Normal }),
        on_fatal: Box::new(move |message| {
            log::error!("{message}");
            let _ = fatal_tx.lock().unwrap_or_else(|e| e.into_inner()).send(1);
        }),
    });
    let node = Arc::new(Node::new(store, watch, writer, cluster, tls));
    Ok((node, writer_thread))
}

/// The member table at start: this node's entry (with this start's
/// generation), the seeds and the addresses known from earlier runs.
fn members_at_start(config: &Config, store: &Store, joined: u64, generation: u64) -> Arc<Members> {
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
    Arc::new(Members::new(
        MemberTable::new(
            me,
            config.failure_timeout,
            config.removal_timeout,
            config.max_members,
        ),
        &config.seed_nodes,
        known,
    ))
}

/// What the writer tells others after a commit: new local versions to
/// the push queues, conflicts to the vote queue, changed keys to the watch,
/// commit sizes and times to the counters.
fn writer_hooks(
    replicator: &Arc<Replicator>,
    conflicts: &Arc<ConflictQueue>,
    watch: &Arc<Watch<Node>>,
    metrics: &Arc<Metrics>,
) -> Hooks {
    let (rep, cq, w, m) = (
        replicator.clone(),
        conflicts.clone(),
        watch.clone(),
        metrics.clone(),
    );
    Hooks {
        on_local: Box::new(move |v| rep.enqueue(v)),
        on_conflict: Box::new(move |c| cq.push(c)),
        on_changed: Box::new(move |index, keys| w.record(index, keys)),
        on_commit: Box::new(move |n, took| {
            m.commits.fetch_add(1, Ordering::Relaxed);
            m.committed_ops.fetch_add(n as u64, Ordering::Relaxed);
            m.commit_duration.observe(took);
        }),
    }
}

/// The body of a cluster thread.
type ThreadLoop = fn(Arc<Cluster>);

/// Starts the cluster threads (see the table at the top of this file).
fn start_threads(node: &Arc<Node>) -> Result<Vec<JoinHandle<()>>, StartError> {
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
        let n = node.cluster.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || f(n))
            .map_err(starting(format!("the {name} thread")))?;
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
    if let Some(tls) = &node.tls {
        let material = tls.current();
        log::info!(
            "TLS: the port speaks HTTPS only; peers are dialled with https{}",
            match tls.files.client_auth {
                crate::tls::ClientAuth::None => "",
                crate::tls::ClientAuth::Peers => "; internal endpoints need a client certificate",
                crate::tls::ClientAuth::All => "; every connection needs a client certificate",
            }
        );
        crate::tls::warn_if_expiring(material.expires);
        let host = cfg
            .advertise_address
            .rsplit_once(':')
            .map_or(cfg.advertise_address.as_str(), |(h, _)| h);
        let named = crate::tls::own_certificate(&tls.files)
            .is_ok_and(|der| crate::tls::names_host(&der, host));
        if !named {
            log::warn!(
                "TLS: the certificate in tls_cert_file does not name {host} (advertise_address): \
                 peers that dial it will refuse it"
            );
        }
    }
    let secured = node
        .tls
        .as_ref()
        .is_some_and(|t| t.files.client_auth != crate::tls::ClientAuth::None);
    if cfg.cluster_secret.is_empty() && !secured && !local.ip().is_loopback() {
        log::warn!(
            "no cluster_secret while listening on {local}: anyone who can reach this port can \
             read every value through the internal API and rewrite the member list; \
             set cluster_secret unless this network is trusted"
        );
    }
}

/// SIGTERM and SIGINT ask the node to stop, with exit code 0.
fn watch_signals(
    exit: mpsc::Sender<i32>,
    loaded: Config,
    reload: Reload,
    live: Live,
) -> Result<(), StartError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(starting("watching signals"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut current = loaded;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    current = reload_config(current, &reload, &live);
                    continue;
                }
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                log::info!("{name} received");
                let _ = exit.send(0);
                return;
            }
        })
        .map_err(starting("the signal thread"))?;
    Ok(())
}

/// How often the expiry thread looks at the time index at least: the
/// longest a value can outlive its expiry before it becomes a tombstone
/// (reads treat it as absent from its expiry on).
const EXPIRY_POLL: Duration = Duration::from_millis(250);

/// The expiry thread: when the earliest expiry of the time index comes,
/// the writer turns the values due into their expiry tombstones, the same
/// on every node (see `Version::expiry_tombstone`), so no vote is needed.
fn expiry_loop(cluster: Arc<Cluster>) {
    loop {
        let now = clock::now_ms();
        let wait = match cluster.store.next_expiry() {
            Ok(Some(at)) if at <= now => match cluster.writer.expire(now) {
                Ok(n) => {
                    cluster
                        .metrics
                        .expired
                        .fetch_add(n as u64, Ordering::Relaxed);
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
        if cluster.stopper.wait(wait) {
            return;
        }
    }
}

/// SIGHUP: reopens the log file (logrotate moved it) and reads the
/// configuration again. `log_level`, `log_file`, `log_format` and
/// `client_tokens` take effect at once; other changed keys are logged as waiting for a
/// restart. A configuration that does not load is logged and changes
/// nothing but the reopening.
/// What SIGHUP changes in a running node.
struct Live {
    tokens: Arc<Tokens>,
    tls: Option<Arc<Tls>>,
    peer: PeerClient,
}

impl Live {
    fn of(node: &Node) -> Live {
        Live {
            tokens: node.tokens.clone(),
            tls: node.tls.clone(),
            peer: node.cluster.peer.clone(),
        }
    }

    /// Reads the TLS files again: new handshakes and peer connections use
    /// them; a bad file keeps the old set.
    fn reload_tls(&self) {
        let Some(tls) = &self.tls else { return };
        match tls.reload() {
            Ok(()) => {
                let material = tls.current();
                self.peer.set_tls(material.client.clone());
                log::info!("SIGHUP: TLS certificate, key and CA reloaded");
                crate::tls::warn_if_expiring(material.expires);
            }
            Err(e) => {
                log::warn!("SIGHUP: the TLS files were not reloaded ({e}); the old ones stay")
            }
        }
    }
}

fn reload_config(mut current: Config, reload: &Reload, live: &Live) -> Config {
    live.reload_tls();
    let tokens = &live.tokens;
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
    if new.client_tokens != current.client_tokens {
        tokens.replace(new.client_tokens.clone());
        log::info!(
            "SIGHUP: client_tokens reloaded ({} tokens)",
            new.client_tokens.len()
        );
        current.client_tokens = new.client_tokens.clone();
    }
    let live = ["log_level", "client_tokens"];
    let later: Vec<&str> = changed.into_iter().filter(|k| !live.contains(k)).collect();
    if !later.is_empty() {
        log::warn!(
            "SIGHUP: {} changed; taking effect at the next restart",
            later.join(", ")
        );
    }
    // The running configuration, with what changed live.
    current
}
