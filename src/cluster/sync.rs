//! Pull-based sync (compatible with the original): regular sync, catch-up
//! and bootstrap; the same thread runs the tombstone purge (`gc::purge`).
//!
//! - Regular sync: every `sync_interval`, ask a random healthy peer for its
//!   latest 15 versions and fetch those that are newer there or missing
//!   here.
//!   Finding any marks this node as behind.
//! - Catch-up: while behind, every `catchup_interval`, page through
//!   everything a peer has from a little before the point we are behind
//!   from, `throttle_delay_ms` between pages. A node that restarts with
//!   data starts behind (from its newest version).
//! - Bootstrap: a node that joins with an empty data directory is in
//!   `syncing` mode (client writes get 503) until it has paged through the
//!   last `bootstrap_max_age_hours` of a peer's history.
//! - Purge: tombstones older than `bootstrap_max_age_hours` are removed.
//!
//! Everything fetched goes through the writer's merge rule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::peer::{self, Traffic};
use super::wire::{decode_versions, WireVersion};
use super::ClusterError;
use super::{Cluster, Mode};
use crate::clock;
use crate::store::schema::{
    BOOTSTRAPPED as META_BOOTSTRAPPED, BOOTSTRAP_PENDING as META_BOOTSTRAP_PENDING,
};
use crate::store::{merge, Merge};

/// Versions compared by a regular sync (compatible).
pub const LATEST_N: usize = 15;
/// Versions per page of `/internal/since`, at most.
pub const PAGE_MAX_VERSIONS: usize = 1000;
/// Data bytes per page, about.
pub const PAGE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Keys per `/internal/fetch`, at most.
pub const FETCH_MAX_KEYS: usize = 1000;
/// A catch-up starts this far before the point we are behind from, for
/// versions that reached the peer late with older timestamps.
const CATCHUP_SLACK_MS: u64 = 60_000;
/// Wait between attempts while no peer is available.
const NO_PEER_RETRY: Duration = Duration::from_millis(250);

/// `GET /internal/since` reply: a page of full versions, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SinceReply {
    pub versions: Vec<WireVersion>,
    /// Where the next page starts; absent on the last page.
    #[serde(default)]
    pub next: Option<Cursor>,
}

/// A position in the time index: after this timestamp and key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub timestamp: u64,
    pub key: String,
}

/// `GET /internal/latest` reply: stamps (no data), newest first.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LatestReply {
    pub versions: Vec<WireVersion>,
}

/// `POST /internal/fetch` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct FetchRequest {
    pub keys: Vec<String>,
}

/// `POST /internal/fetch` reply: the versions held (tombstones included).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FetchReply {
    pub versions: Vec<WireVersion>,
}

/// Sync progress shared with `/health` and the other threads.
#[derive(Default)]
pub struct SyncState {
    keys_fetched: AtomicU64,
    /// Set while behind: the timestamp to catch up from.
    behind_from: Mutex<Option<u64>>,
}

impl SyncState {
    pub fn keys_fetched(&self) -> u64 {
        self.keys_fetched.load(Ordering::Relaxed)
    }

    /// Marks this node as behind from `ts` (keeps the earliest mark).
    pub fn mark_behind(&self, ts: u64) {
        let mut b = self.behind_from.lock().unwrap_or_else(|e| e.into_inner());
        *b = Some(b.map_or(ts, |old| old.min(ts)));
    }

    fn take_behind(&self) -> Option<u64> {
        self.behind_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub fn is_behind(&self) -> bool {
        self.behind_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// The sync thread.
pub fn sync_loop(cluster: Arc<Cluster>) {
    let cfg = &cluster.config;
    let stopper = cluster.stopper.clone();
    if cluster.mode() == Mode::Syncing {
        if !bootstrap(&cluster) {
            return;
        }
    } else if !cfg.seed_nodes.is_empty() || !cluster.members.rejoin_candidates().is_empty() {
        // Back from a stop: whatever was written meanwhile is missing here.
        if let Ok(Some(newest)) = cluster.store.newest_timestamp() {
            cluster.sync.mark_behind(newest);
        }
    }
    let purge_every =
        (cfg.bootstrap_max_age / 8).clamp(Duration::from_millis(500), Duration::from_secs(600));
    let now = Instant::now();
    let mut next_regular = now + cfg.sync_interval;
    let mut next_catchup = now;
    let mut next_purge = now + purge_every;
    // Every task that comes due gets its next time before the loop turns,
    // so the loop always waits between rounds.
    loop {
        if stopper.is_stopped() {
            return;
        }
        let now = Instant::now();
        let behind = cluster.sync.is_behind();
        let mut wake = next_regular.min(next_purge);
        if behind {
            wake = wake.min(next_catchup);
        }
        if wake > now {
            if stopper.wait(wake - now) {
                return;
            }
            continue;
        }
        // After leaving the cluster there is nobody to sync with.
        let alone = cluster.has_left();
        if behind && now >= next_catchup {
            next_catchup = if alone {
                now + cfg.catchup_interval
            } else {
                match catch_up(&cluster) {
                    CatchUp::Done | CatchUp::Failed => now + cfg.catchup_interval,
                    CatchUp::NoPeer => now + NO_PEER_RETRY.min(cfg.catchup_interval),
                }
            };
        }
        if now >= next_regular {
            if !alone {
                regular_sync(&cluster);
            }
            next_regular = Instant::now() + cfg.sync_interval;
        }
        if now >= next_purge {
            super::gc::purge(&cluster);
            next_purge = Instant::now() + purge_every;
        }
    }
}

fn random_peer(cluster: &Cluster) -> Option<crate::cluster::membership::Peer> {
    let peers = cluster.members.healthy_peers();
    if peers.is_empty() {
        None
    } else {
        Some(peers[fastrand::usize(..peers.len())].clone())
    }
}

/// Compares the latest versions with a random peer and fetches what is
/// newer there or missing here.
pub fn regular_sync(cluster: &Cluster) {
    let Some(p) = random_peer(cluster) else {
        return;
    };
    cluster.metrics.sync_runs.fetch_add(1, Ordering::Relaxed);
    let path = format!("/internal/latest?n={LATEST_N}");
    let reply: LatestReply = match cluster.peer.get(&p.address, &path, peer::NORMAL, None) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("regular sync with {}: {e}", p.id);
            return;
        }
    };
    let mut wanted = Vec::new();
    let Ok(rtxn) = cluster.store.read_txn() else {
        return;
    };
    for w in &reply.versions {
        let Ok(remote) = w.stamp() else {
            log::warn!("regular sync: {} sent a bad version of {:?}", p.id, w.key);
            return;
        };
        let local = cluster.store.stamp_in(&rtxn, &w.key).ok().flatten();
        if matches!(
            merge(local.as_ref(), &remote),
            Merge::TakeIncoming | Merge::Conflict
        ) {
            wanted.push((w.key.clone(), remote.timestamp));
        }
    }
    drop(rtxn);
    if wanted.is_empty() {
        return;
    }
    let oldest = wanted.iter().map(|(_, ts)| *ts).min().unwrap_or(0);
    let keys: Vec<String> = wanted.into_iter().map(|(k, _)| k).collect();
    if cluster.stopper.wait(cluster.config.fetch_delay) {
        return;
    }
    match fetch(cluster, &p.address, keys, None) {
        Ok(n) => {
            log::info!("regular sync with {}: fetched {n} newer versions", p.id);
            // What was missing among the latest may be missing further back.
            cluster.sync.mark_behind(oldest);
        }
        Err(e) => log::debug!("regular sync fetch from {}: {e}", p.id),
    }
}

/// Fetches versions of `keys` from a peer and applies them through the
/// merge rule, `fetch_delay_ms` between requests; returns how many were
/// fetched. `traffic` counts the bytes (anti-entropy reports its cost).
pub fn fetch(
    cluster: &Cluster,
    address: &str,
    keys: Vec<String>,
    traffic: Option<&Traffic>,
) -> Result<usize, ClusterError> {
    let mut total = 0;
    for (i, chunk) in keys.chunks(FETCH_MAX_KEYS).enumerate() {
        if i > 0 && cluster.stopper.wait(cluster.config.fetch_delay) {
            break;
        }
        let reply: FetchReply = cluster.peer.post(
            address,
            "/internal/fetch",
            &FetchRequest {
                keys: chunk.to_vec(),
            },
            peer::LONG,
            traffic,
        )?;
        let versions = decode_versions(reply.versions, cluster.config.max_value_bytes)
            .map_err(ClusterError::BadVersion)?;
        total += versions.len();
        cluster
            .metrics
            .sync_fetched
            .fetch_add(versions.len() as u64, Ordering::Relaxed);
        cluster
            .writer
            .apply_remote(versions)
            .map_err(ClusterError::Store)?;
    }
    Ok(total)
}

enum CatchUp {
    Done,
    Failed,
    NoPeer,
}

/// Pages through a peer's versions since the point we are behind from.
fn catch_up(cluster: &Cluster) -> CatchUp {
    let Some(from) = cluster.sync.take_behind() else {
        return CatchUp::Done;
    };
    let Some(p) = random_peer(cluster) else {
        cluster.sync.mark_behind(from);
        return CatchUp::NoPeer;
    };
    cluster.metrics.catchup_runs.fetch_add(1, Ordering::Relaxed);
    let start = from.saturating_sub(CATCHUP_SLACK_MS);
    let started = Instant::now();
    match page_through(cluster, &p.address, start, |_| {}) {
        Ok(n) => {
            if n > 0 {
                log::info!(
                    "catch-up from {}: {n} versions in {:.1}s",
                    p.id,
                    started.elapsed().as_secs_f64()
                );
            }
            CatchUp::Done
        }
        Err((at, e)) => {
            log::warn!("catch-up from {} stopped: {e}", p.id);
            cluster
                .sync
                .mark_behind(at.saturating_add(CATCHUP_SLACK_MS).max(from));
            CatchUp::Failed
        }
    }
}

/// Pages through everything a peer has from `start` on, applying each
/// page; `progress` hears the count after each page. On failure returns the
/// timestamp reached.
fn page_through(
    cluster: &Cluster,
    address: &str,
    start: u64,
    mut progress: impl FnMut(usize),
) -> Result<usize, (u64, ClusterError)> {
    let mut cursor = Cursor {
        timestamp: start,
        key: String::new(),
    };
    let mut first = true;
    let mut total = 0;
    loop {
        let mut path = format!(
            "/internal/since?after_ts={}&limit={PAGE_MAX_VERSIONS}",
            cursor.timestamp
        );
        if !first {
            path.push_str("&after_key=");
            path.push_str(&crate::escape::percent_encode(&cursor.key));
        }
        let reply: SinceReply = cluster
            .peer
            .get(address, &path, peer::NORMAL, None)
            .map_err(|e| (cursor.timestamp, e))?;
        let versions = decode_versions(reply.versions, cluster.config.max_value_bytes)
            .map_err(|e| (cursor.timestamp, ClusterError::BadVersion(e)))?;
        total += versions.len();
        cluster
            .metrics
            .sync_fetched
            .fetch_add(versions.len() as u64, Ordering::Relaxed);
        cluster
            .writer
            .apply_remote(versions)
            .map_err(|e| (cursor.timestamp, ClusterError::Store(e)))?;
        progress(total);
        match reply.next {
            Some(next)
                if next.timestamp > cursor.timestamp
                    || (next.timestamp == cursor.timestamp && next.key > cursor.key)
                    || first =>
            {
                cursor = next;
                first = false;
            }
            Some(_) => {
                return Err((
                    cursor.timestamp,
                    ClusterError::BadReply("the page cursor went backwards".into()),
                ))
            }
            None => return Ok(total),
        }
        if cluster.stopper.wait(cluster.config.throttle_delay) {
            return Ok(total);
        }
    }
}

/// Fetches the last `bootstrap_max_age_hours` of history from a peer, then
/// turns the node `normal`. Returns false if the node stopped first.
fn bootstrap(cluster: &Cluster) -> bool {
    let _ = cluster.writer.meta_put(META_BOOTSTRAP_PENDING, b"1");
    let start = clock::now_ms().saturating_sub(cluster.config.bootstrap_max_age.as_millis() as u64);
    let started = Instant::now();
    log::info!("bootstrap: syncing history since {start} before accepting client writes");
    let mut waiting_logged = false;
    loop {
        if cluster.stopper.is_stopped() {
            return false;
        }
        if cluster.has_left() {
            log::info!("bootstrap: abandoned, this node has left the cluster");
            break;
        }
        let Some(p) = random_peer(cluster) else {
            if started.elapsed() >= cluster.config.join_timeout
                && cluster.members.last_contact() == 0
            {
                let why = cluster
                    .join_error()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                log::warn!(
                    "bootstrap: no seed answered within join_timeout{why}; serving as a cluster \
                     of one, to merge with the cluster when a seed answers"
                );
                let _ = cluster.writer.meta_put(META_BOOTSTRAP_PENDING, b"0");
                cluster.set_mode(Mode::Normal);
                return true;
            }
            if !waiting_logged {
                log::info!("bootstrap: waiting for a peer to fetch history from");
                waiting_logged = true;
            }
            if cluster.stopper.wait(NO_PEER_RETRY) {
                return false;
            }
            continue;
        };
        cluster.metrics.catchup_runs.fetch_add(1, Ordering::Relaxed);
        let mut last_log = Instant::now();
        let before = cluster.sync.keys_fetched();
        let result = page_through(cluster, &p.address, start, |n| {
            cluster
                .sync
                .keys_fetched
                .store(before + n as u64, Ordering::Relaxed);
            if last_log.elapsed() >= Duration::from_secs(2) {
                log::info!(
                    "bootstrap: {} keys fetched from {}",
                    before + n as u64,
                    p.id
                );
                last_log = Instant::now();
            }
        });
        match result {
            Ok(_) if cluster.stopper.is_stopped() => return false,
            Ok(_) => break,
            Err((_, e)) => {
                log::warn!("bootstrap from {} interrupted: {e}; trying again", p.id);
                if cluster
                    .stopper
                    .wait(cluster.config.throttle_delay.max(NO_PEER_RETRY))
                {
                    return false;
                }
            }
        }
    }
    let _ = cluster.writer.meta_put(META_BOOTSTRAPPED, b"1");
    let _ = cluster.writer.meta_put(META_BOOTSTRAP_PENDING, b"0");
    cluster.set_mode(Mode::Normal);
    log::info!(
        "bootstrap complete: {} keys in {:.1}s; accepting client writes",
        cluster.sync.keys_fetched(),
        started.elapsed().as_secs_f64()
    );
    true
}

/// The serving half of a regular sync (`GET /internal/latest`): the `n`
/// newest stamps.
pub fn serve_latest(cluster: &Cluster, n: usize) -> Result<LatestReply, super::ClusterError> {
    let versions = cluster
        .store
        .latest(n)?
        .iter()
        .map(|(k, s)| WireVersion::from_stamp(k, s))
        .collect();
    Ok(LatestReply { versions })
}

/// The serving half of catch-up and bootstrap (`GET /internal/since`): a
/// page of versions from the time index after `(after_ts, after_key)`.
pub fn serve_since(
    cluster: &Cluster,
    after_ts: u64,
    after_key: Option<&str>,
    limit: usize,
) -> Result<SinceReply, super::ClusterError> {
    let page = cluster
        .store
        .since(after_ts, after_key, limit.max(1), PAGE_MAX_BYTES)?;
    Ok(SinceReply {
        versions: page
            .versions
            .iter()
            .filter_map(|(k, v)| WireVersion::from_version(k, v))
            .collect(),
        next: page.next.map(|(timestamp, key)| Cursor { timestamp, key }),
    })
}

/// The serving half of a fetch (`POST /internal/fetch`): the versions held
/// for the keys asked (at most `FETCH_MAX_KEYS`).
pub fn serve_fetch(
    cluster: &Cluster,
    req: &FetchRequest,
) -> Result<FetchReply, super::ClusterError> {
    if req.keys.len() > FETCH_MAX_KEYS {
        return Err(super::ClusterError::Invalid(format!(
            "at most {FETCH_MAX_KEYS} keys per fetch"
        )));
    }
    let rtxn = cluster.store.read_txn()?;
    let mut versions = Vec::with_capacity(req.keys.len());
    for key in &req.keys {
        if let Some(v) = cluster.store.get_in(&rtxn, key)? {
            versions.extend(WireVersion::from_version(key, &v));
        }
    }
    Ok(FetchReply { versions })
}
