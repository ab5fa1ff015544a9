//! Anti-entropy: find every difference with a peer, however old, by
//! comparing hash summaries (`store::merkle`), and repair it.
//!
//! An exchange, started every `antientropy_interval` with a random healthy
//! peer:
//! 1. Compare roots (`GET /internal/tree/root`): equal means done; this
//!    request is all an exchange costs when nothing differs.
//! 2. Descend: ask for the children of the differing nodes, level by level
//!    (`POST /internal/tree/children`), keeping only children that differ.
//! 3. For the differing leaf buckets, compare the stamps of their versions
//!    (`POST /internal/tree/buckets`, paged) with the local ones.
//! 4. Fetch what the peer has newer (or in conflict) through the merge rule,
//!    and push what this node has newer. Conflicts found this way go to
//!    conflict resolution like any other.
//!
//! The traffic is O(differences · depth), requests are paced by
//! `throttle_delay_ms`, and memory is bounded by the chunk sizes below.
//! Tombstones are versions like any other, so a delete that one side missed
//! is repaired like a write. A node back from an absence longer than
//! tombstones live drops what its witnesses no longer hold instead of
//! pushing it back (`gc`; the README's "Tombstones" and "Anti-entropy").

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::gc;
use super::membership::Peer;
use super::peer::{self, Traffic};
use super::replicate::{self, PUSH_MAX_BYTES, PUSH_MAX_VERSIONS};
use super::sync::fetch;
use super::wire::WireVersion;
use super::Cluster;
use super::ClusterError;
use crate::store::merkle::{differing_children, DEPTH, FANOUT};
use crate::store::{merge, Merge, Stamp};

/// Nodes asked about in one children request, at most.
pub const CHILDREN_MAX_NODES: usize = 4096;
/// Leaf buckets compared per round trip, at most.
pub const BUCKETS_PER_REQUEST: usize = 256;
/// Stamps in one buckets reply, at most.
pub const BUCKET_PAGE_ENTRIES: usize = 10_000;
/// Wait between reconciliation attempts of a node back from a long absence.
const STALE_RETRY: Duration = Duration::from_secs(1);

/// `GET /internal/tree/root` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct RootReply {
    /// Root hash, 16 hex digits.
    pub root: String,
}

/// `POST /internal/tree/children` body: nodes at `level` (0 is the root).
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildrenRequest {
    pub level: usize,
    pub nodes: Vec<usize>,
}

/// Reply: for each node asked, its 16 children's hashes as one string of
/// 16 × 16 hex digits.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildrenReply {
    pub children: Vec<String>,
}

/// `POST /internal/tree/buckets` body: leaf buckets, and where to go on.
#[derive(Debug, Serialize, Deserialize)]
pub struct BucketsRequest {
    pub leaves: Vec<u16>,
    #[serde(default)]
    pub after: Option<BucketCursor>,
}

/// A position in the bucket listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketCursor {
    pub leaf: u16,
    pub key: String,
}

/// Reply: stamps (no data) of the versions in those buckets.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BucketsReply {
    pub entries: Vec<WireVersion>,
    #[serde(default)]
    pub next: Option<BucketCursor>,
}

pub fn hex_hashes(hashes: &[u64]) -> String {
    hashes.iter().map(|h| format!("{h:016x}")).collect()
}

pub fn parse_hashes(text: &str) -> Option<Vec<u64>> {
    if !text.len().is_multiple_of(16) || !text.is_ascii() {
        return None;
    }
    (0..text.len() / 16)
        .map(|i| u64::from_str_radix(&text[i * 16..i * 16 + 16], 16).ok())
        .collect()
}

/// What one exchange did.
#[derive(Debug, Default)]
pub struct Report {
    pub leaves: usize,
    pub fetched: usize,
    pub pushed: usize,
    /// Keys dropped as deleted while this node was away (long absence).
    pub dropped: usize,
}

/// The anti-entropy thread. A node back from a long absence (stale)
/// exchanges at once, every second, until one exchange has completed.
pub fn antientropy_loop(cluster: Arc<Cluster>) {
    let started_at = Instant::now();
    loop {
        let wait = if cluster.reconcile.is_active() {
            STALE_RETRY
        } else {
            cluster.config.antientropy_interval
        };
        if cluster.stopper.wait(wait) {
            return;
        }
        if cluster.has_left() || cluster.mode() == super::Mode::Syncing {
            continue;
        }
        let Some(p) = partner(&cluster, started_at) else {
            continue;
        };
        let started = Instant::now();
        let traffic = Traffic::default();
        cluster
            .metrics
            .antientropy_rounds
            .fetch_add(1, Ordering::Relaxed);
        let result = exchange(&cluster, &p.address, &traffic);
        let requests = traffic.requests.load(Ordering::Relaxed);
        let bytes = traffic.bytes.load(Ordering::Relaxed);
        cluster
            .metrics
            .antientropy_requests
            .fetch_add(requests, Ordering::Relaxed);
        cluster
            .metrics
            .antientropy_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        match result {
            Ok(r) => {
                if cluster.reconcile.is_active() {
                    cluster.reconciled();
                    log::info!(
                        "reconciled with {} after a long absence: dropped {} keys deleted meanwhile, fetched {}",
                        p.id,
                        r.dropped,
                        r.fetched
                    );
                }
                if r.leaves == 0 {
                    log::debug!("anti-entropy with {}: in sync ({bytes} bytes)", p.id);
                    continue;
                }
                cluster
                    .metrics
                    .antientropy_repaired
                    .fetch_add((r.fetched + r.pushed + r.dropped) as u64, Ordering::Relaxed);
                log::info!(
                    "anti-entropy with {}: {} buckets differed; fetched {}, pushed {}, dropped {} ({requests} requests, {bytes} bytes, {:.2}s)",
                    p.id,
                    r.leaves,
                    r.fetched,
                    r.pushed,
                    r.dropped,
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => log::debug!("anti-entropy with {} failed: {e}", p.id),
        }
    }
}

/// A random healthy peer to exchange with; while reconciling, only a
/// witness (see `gc`). A node that finds no witness for as long as
/// `removal_timeout` ends reconciling and keeps its data.
fn partner(cluster: &Cluster, started_at: Instant) -> Option<Peer> {
    let mut peers = cluster.members.healthy_peers();
    if cluster.reconcile.is_active() {
        peers = gc::witnesses(peers, cluster.reconcile.last_contact());
        if peers.is_empty() && started_at.elapsed() >= cluster.config.removal_timeout {
            cluster.reconciled();
            log::warn!(
                "no member has been in the cluster since before this node's absence; keeping all its data"
            );
        }
    }
    if peers.is_empty() {
        return None;
    }
    Some(peers.swap_remove(fastrand::usize(..peers.len())))
}

/// One exchange with the peer at `address`.
pub fn exchange(
    cluster: &Cluster,
    address: &str,
    traffic: &Traffic,
) -> Result<Report, ClusterError> {
    let client = &cluster.peer;
    let root: RootReply =
        client.get(address, "/internal/tree/root", peer::NORMAL, Some(traffic))?;
    let remote_root = parse_hashes(&root.root)
        .and_then(|v| v.first().copied())
        .ok_or_else(|| ClusterError::BadReply("bad root hash".into()))?;
    if remote_root == cluster.store.tree_root() {
        return Ok(Report::default());
    }
    // Descend through the differing branches.
    let mut frontier = vec![0usize];
    for level in 0..DEPTH {
        let mut next = Vec::new();
        for chunk in frontier.chunks(CHILDREN_MAX_NODES) {
            if cluster.stopper.wait(cluster.config.throttle_delay) {
                return Ok(Report::default());
            }
            let reply: ChildrenReply = client.post(
                address,
                "/internal/tree/children",
                &ChildrenRequest {
                    level,
                    nodes: chunk.to_vec(),
                },
                peer::LONG,
                Some(traffic),
            )?;
            let local = cluster
                .store
                .tree_children(level, chunk)
                .map_err(ClusterError::Store)?
                .ok_or_else(|| ClusterError::BadReply("bad tree node".into()))?;
            if reply.children.len() != chunk.len() {
                return Err(ClusterError::BadReply(
                    "children count does not match".into(),
                ));
            }
            for ((n, remote), mine) in chunk.iter().zip(&reply.children).zip(&local) {
                let remote = parse_hashes(remote)
                    .filter(|h| h.len() == FANOUT)
                    .ok_or_else(|| ClusterError::BadReply("bad children hashes".into()))?;
                next.extend(differing_children(*n, mine, &remote));
            }
        }
        frontier = next;
        if frontier.is_empty() {
            // The trees met while we descended (writes in flight).
            return Ok(Report::default());
        }
    }
    let leaves: Vec<u16> = frontier.iter().map(|&l| l as u16).collect();
    let mut report = Report {
        leaves: leaves.len(),
        ..Report::default()
    };
    for chunk in leaves.chunks(BUCKETS_PER_REQUEST) {
        let plan = compare_buckets(cluster, address, chunk, traffic)?;
        if !plan.fetch.is_empty() {
            report.fetched += fetch(cluster, address, plan.fetch, Some(traffic))?;
        }
        if !plan.push.is_empty() {
            report.pushed += push_keys(cluster, address, &plan.push, traffic)?;
        }
        if !plan.drop.is_empty() {
            report.dropped += cluster
                .writer
                .drop_versions(plan.drop)
                .map_err(ClusterError::Store)?;
        }
    }
    Ok(report)
}

/// Compares the stamps in some leaf buckets; returns the keys to fetch from
/// the peer and the keys to push to it.
fn compare_buckets(
    cluster: &Cluster,
    address: &str,
    leaves: &[u16],
    traffic: &Traffic,
) -> Result<Plan, ClusterError> {
    let mut remote: HashMap<String, Stamp> = HashMap::new();
    let mut after: Option<BucketCursor> = None;
    loop {
        if cluster.stopper.wait(cluster.config.throttle_delay) {
            return Ok(Plan::default());
        }
        let reply: BucketsReply = cluster.peer.post(
            address,
            "/internal/tree/buckets",
            &BucketsRequest {
                leaves: leaves.to_vec(),
                after: after.clone(),
            },
            peer::LONG,
            Some(traffic),
        )?;
        for w in &reply.entries {
            let stamp = w.stamp().map_err(ClusterError::BadVersion)?;
            remote.insert(w.key.clone(), stamp);
        }
        match reply.next {
            Some(next) if Some(&next) != after.as_ref() => after = Some(next),
            Some(_) => return Err(ClusterError::BadReply("bucket cursor did not move".into())),
            None => break,
        }
    }
    let mut local: HashMap<String, Stamp> = HashMap::new();
    let mut cursor: Option<(u16, String)> = None;
    loop {
        let page = cluster
            .store
            .bucket_entries(
                leaves,
                cursor.as_ref().map(|(l, k)| (*l, k.as_str())),
                BUCKET_PAGE_ENTRIES,
            )
            .map_err(ClusterError::Store)?;
        for (_, key, stamp) in page.entries {
            local.insert(key, stamp);
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    Ok(plan(&local, &remote, cluster.reconcile.horizon()))
}

/// What an exchange does with the keys of the differing buckets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The peer's version wins or conflicts: fetch it (merge rule applies).
    pub fetch: Vec<String>,
    /// Ours wins, or the peer lacks the key: push ours.
    pub push: Vec<String>,
    /// Only after a long absence: keys the peer lacks whose version here is
    /// older than the tombstone purge horizon. They were deleted while this
    /// node was away and the tombstones are gone: drop them here.
    pub drop: Vec<(String, Stamp)>,
}

/// Compares the stamps of the same buckets on both sides. `drop_before` is
/// the purge horizon when this node is back from an absence longer than
/// `bootstrap_max_age_hours` (see `gc::Reconcile::horizon`). Each list is
/// sorted by key, for determinism.
pub fn plan(
    local: &HashMap<String, Stamp>,
    remote: &HashMap<String, Stamp>,
    drop_before: Option<u64>,
) -> Plan {
    let mut out = Plan::default();
    for (k, r) in remote {
        if matches!(
            merge(local.get(k), r),
            Merge::TakeIncoming | Merge::Conflict
        ) {
            out.fetch.push(k.clone());
        }
    }
    for (k, l) in local {
        let theirs = remote.get(k);
        match drop_before {
            Some(horizon) if theirs.is_none() && l.timestamp < horizon => {
                out.drop.push((k.clone(), *l))
            }
            _ if merge(theirs, l) == Merge::TakeIncoming => out.push.push(k.clone()),
            _ => {}
        }
    }
    out.fetch.sort();
    out.push.sort();
    out.drop.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Pushes the local versions of `keys` to the peer.
fn push_keys(
    cluster: &Cluster,
    address: &str,
    keys: &[String],
    traffic: &Traffic,
) -> Result<usize, ClusterError> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut pushed = 0;
    for key in keys {
        let Ok(Some(v)) = cluster.store.get(key) else {
            continue;
        };
        bytes += v.data.len();
        batch.extend(WireVersion::from_version(key, &v));
        if batch.len() >= PUSH_MAX_VERSIONS || bytes >= PUSH_MAX_BYTES {
            pushed += send_push(cluster, address, std::mem::take(&mut batch), traffic)?;
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        pushed += send_push(cluster, address, batch, traffic)?;
    }
    Ok(pushed)
}

fn send_push(
    cluster: &Cluster,
    address: &str,
    versions: Vec<WireVersion>,
    traffic: &Traffic,
) -> Result<usize, ClusterError> {
    if cluster.stopper.wait(cluster.config.throttle_delay) {
        return Ok(0);
    }
    let n = versions.len();
    replicate::push(
        &cluster.peer,
        &cluster.config.node_id,
        address,
        versions,
        peer::LONG,
        Some(traffic),
    )?;
    Ok(n)
}

/// The serving half of an exchange: the summary's root
/// (`GET /internal/tree/root`).
pub fn serve_root(cluster: &Cluster) -> RootReply {
    RootReply {
        root: hex_hashes(&[cluster.store.tree_root()]),
    }
}

/// The children of some nodes of one level (`POST /internal/tree/children`).
pub fn serve_children(
    cluster: &Cluster,
    req: &ChildrenRequest,
) -> Result<ChildrenReply, super::ClusterError> {
    if req.level >= crate::store::merkle::DEPTH || req.nodes.len() > CHILDREN_MAX_NODES {
        return Err(super::ClusterError::Invalid(format!(
            "level must be below {} and at most {CHILDREN_MAX_NODES} nodes asked",
            crate::store::merkle::DEPTH
        )));
    }
    let children = cluster
        .store
        .tree_children(req.level, &req.nodes)?
        .ok_or_else(|| super::ClusterError::Invalid("no such tree node".into()))?;
    Ok(ChildrenReply {
        children: children.iter().map(|c| hex_hashes(c)).collect(),
    })
}

/// A page of the stamps in some buckets (`POST /internal/tree/buckets`).
pub fn serve_buckets(
    cluster: &Cluster,
    req: &BucketsRequest,
) -> Result<BucketsReply, super::ClusterError> {
    if req.leaves.len() > BUCKETS_PER_REQUEST {
        return Err(super::ClusterError::Invalid(format!(
            "at most {BUCKETS_PER_REQUEST} buckets per request"
        )));
    }
    let page = cluster.store.bucket_entries(
        &req.leaves,
        req.after.as_ref().map(|c| (c.leaf, c.key.as_str())),
        BUCKET_PAGE_ENTRIES,
    )?;
    Ok(BucketsReply {
        entries: page
            .entries
            .iter()
            .map(|(_, k, s)| WireVersion::from_stamp(k, s))
            .collect(),
        next: page.next.map(|(leaf, key)| BucketCursor { leaf, key }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::VersionId;

    fn s(ts: u64, id: u8) -> Stamp {
        Stamp {
            timestamp: ts,
            uuid: VersionId([id; 16]),
            deleted: false,
        }
    }

    #[test]
    fn the_plan_fetches_newer_and_pushes_older() {
        let local: HashMap<String, Stamp> = [
            ("same".to_string(), s(5, 1)),
            ("ours-newer".to_string(), s(9, 1)),
            ("theirs-newer".to_string(), s(3, 1)),
            ("only-ours".to_string(), s(1, 1)),
            ("conflict".to_string(), s(4, 1)),
        ]
        .into();
        let remote: HashMap<String, Stamp> = [
            ("same".to_string(), s(5, 1)),
            ("ours-newer".to_string(), s(8, 2)),
            ("theirs-newer".to_string(), s(4, 2)),
            ("only-theirs".to_string(), s(1, 2)),
            ("conflict".to_string(), s(4, 2)),
        ]
        .into();
        let p = plan(&local, &remote, None);
        assert_eq!(p.fetch, vec!["conflict", "only-theirs", "theirs-newer"]);
        assert_eq!(p.push, vec!["only-ours", "ours-newer"]);
        assert!(p.drop.is_empty());
    }

    #[test]
    fn after_a_long_absence_old_keys_the_peer_lacks_are_dropped() {
        let local: HashMap<String, Stamp> = [
            ("deleted-meanwhile".to_string(), s(5, 1)),
            ("written-since".to_string(), s(50, 1)),
            ("ours-newer".to_string(), s(6, 1)),
        ]
        .into();
        let remote: HashMap<String, Stamp> = [("ours-newer".to_string(), s(4, 2))].into();
        let p = plan(&local, &remote, Some(10));
        assert_eq!(p.drop, vec![("deleted-meanwhile".to_string(), s(5, 1))]);
        // Newer than the purge horizon: the peer may just not have it yet.
        // Present on the peer: not a deletion, the merge rule decides.
        assert_eq!(p.push, vec!["ours-newer", "written-since"]);
    }

    #[test]
    fn hashes_travel_as_hex() {
        let h = [0u64, 1, u64::MAX, 0xdead_beef];
        let text = hex_hashes(&h);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_hashes(&text).unwrap(), h);
        assert!(parse_hashes("abc").is_none());
        assert!(parse_hashes("zzzzzzzzzzzzzzzz").is_none());
    }
}
