//! Joining, gossip rounds and leaving: the I/O around the member table.
//!
//! - Join: a node posts its entry to `/members/join` of a seed (or of any
//!   address it has known) and merges the member list it gets back. While
//!   nobody answers it retries, with a backoff up to `JOIN_BACKOFF_MAX`.
//! - Gossip: every random interval in [gossip_interval_min, max] the node
//!   applies the failure and removal timeouts and exchanges a `Gossip`
//!   message (`/internal/gossip`, push-pull) with random healthy peers:
//!   1–3 of them, and, while it has news to spread, at least log2(N) in a
//!   cluster of N. Each message
//!   holds the sender's own entry, a digest of its table and the rumors it
//!   has to pass on; the whole table goes only when the digests differ,
//!   so an idle exchange between agreeing nodes costs the same at 5 members
//!   as at 1 000.
//! - Each exchange is also a probe: a target that does not answer within
//!   `gossip_timeout` is suspected (see `membership`); a target this node
//!   suspects is told so, and answers with a larger heartbeat if alive.
//!   Now and then the node also tries an unhealthy peer (to notice
//!   recovery) and a known address that is not a member (to heal a
//!   partition in which both sides dropped each other).
//! - A round's calls run in parallel on a small pool of long-lived threads
//!   (`calls`), each bounded by `gossip_timeout` (a quarter of
//!   `failure_timeout`, at most 2 s), so one frozen or dead peer delays
//!   nothing else.
//! - Leave: the node's entry, marked `left`, goes to every healthy peer
//!   (`/members/leave`), which drop it at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::calls::{self, CallPool};
use super::membership::MemberEntry;
use super::peer;
use super::Cluster;
use super::ClusterError;
use crate::store::schema::KNOWN_ADDRESSES as META_KNOWN;

/// Longest wait between join attempts while no seed answers.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// First wait between join attempts.
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Known addresses unreachable for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Threads that make a round's calls, at most: enough for log2 of the
/// largest cluster plus the extra probes, kept between rounds.
const CALL_THREADS: usize = 16;

/// Rumors one gossip message carries at most.
const RUMORS_PER_MESSAGE: usize = 32;

/// `POST /members/join` reply.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MemberList {
    pub members: Vec<MemberEntry>,
}

/// `/internal/gossip` body and reply. A message without a digest (from an
/// older node) is answered with the whole table.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Gossip {
    /// The sender's table digest, after it merged what it received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<u64>,
    /// The sender's own entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<MemberEntry>,
    /// News to pass on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rumors: Vec<MemberEntry>,
    /// The sender's whole table, when the digests differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberEntry>,
}

impl Gossip {
    /// Every entry the message holds.
    pub fn entries(&self) -> impl Iterator<Item = &MemberEntry> {
        self.from
            .iter()
            .chain(self.rumors.iter())
            .chain(self.members.iter())
    }
}

/// Merges a gossip message: the sender's own entry first (proof of life),
/// then its rumors and table.
fn absorb(cluster: &Cluster, msg: &Gossip) {
    let members = &cluster.members;
    if let Some(from) = &msg.from {
        members.merge_direct(from);
    }
    if !msg.rumors.is_empty() {
        members.merge(&msg.rumors);
    }
    if !msg.members.is_empty() {
        members.merge(&msg.members);
    }
}

/// Answers a gossip message (the `/internal/gossip` handler's work).
pub fn answer(cluster: &Cluster, msg: &Gossip) -> Gossip {
    let members = &cluster.members;
    // What this node holds against the sender, taken before its word
    // (which passes a tombstone) is merged.
    let doubt = msg.from.as_ref().and_then(|f| members.doubt_about(f));
    if !cluster.has_left() {
        absorb(cluster, msg);
        members.touch();
    }
    let mut rumors = members.take_rumors(RUMORS_PER_MESSAGE);
    rumors.extend(doubt);
    let digest = members.digest();
    let whole = msg.digest != Some(digest);
    Gossip {
        digest: Some(digest),
        from: Some(members.me()),
        rumors,
        members: if whole { members.entries() } else { Vec::new() },
    }
}

/// The gossip thread: join, then gossip until the node stops or leaves.
pub fn gossip_loop(cluster: Arc<Cluster>) {
    let mut backoff = JOIN_BACKOFF_MIN;
    let mut next_join = Instant::now();
    let mut round: u64 = 0;
    let mut pool = CallPool::new("gossip-call", CALL_THREADS);
    let traffic = Arc::new(peer::Traffic::default());
    let mut known_saved = cluster.members.known_addresses();
    let mut contact_saved = 0u64;
    loop {
        if cluster.has_left() || cluster.stopper.is_stopped() {
            return;
        }
        cluster.members.tick();
        let peers = cluster.members.healthy_peers();
        let candidates = cluster.members.rejoin_candidates();
        let mut wait = cluster.config.gossip_wait();
        if peers.is_empty() {
            if !candidates.is_empty() && Instant::now() >= next_join {
                match join_any(&cluster, &candidates) {
                    Ok(Ok(())) => {
                        backoff = JOIN_BACKOFF_MIN;
                        cluster.set_join_error(None);
                    }
                    Ok(Err(reasons)) => {
                        if cluster.set_join_error(Some(reasons.clone())) {
                            log::warn!("cannot join the cluster: {reasons}; retrying");
                        }
                        next_join = Instant::now() + backoff;
                        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
                    }
                    Err(refusal) => {
                        cluster.fatal(&format!("joining the cluster was refused: {refusal}"));
                        return;
                    }
                }
            }
            if !candidates.is_empty() {
                wait = wait.min(
                    next_join
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(50)),
                );
            }
        } else {
            let candidate = if round % 5 == 4 && !candidates.is_empty() {
                Some(&candidates[fastrand::usize(..candidates.len())])
            } else {
                None
            };
            gossip_round(&cluster, &mut pool, &traffic, &peers, round, candidate);
        }
        round += 1;
        if round.is_multiple_of(20) {
            cluster
                .members
                .forget_stale(&cluster.config.seed_nodes, FORGET_AFTER);
        }
        let known = cluster.members.known_addresses();
        if known.keys().ne(known_saved.keys()) {
            if let Ok(bytes) = serde_json::to_vec(&known) {
                let _ = cluster.writer.meta_put(META_KNOWN, &bytes);
            }
            known_saved = known;
        }
        if !cluster.reconcile.is_active() {
            contact_saved = cluster.save_last_contact(contact_saved, false);
        }
        if cluster.stopper.wait(wait) {
            return;
        }
    }
}

/// How many peers a round gossips with in a cluster of `members`
/// (this node included): 1–3 at random, and at least log2(members).
pub fn fanout(members: usize) -> usize {
    let log2 = (usize::BITS - members.max(1).leading_zeros()) as usize - 1;
    (1 + fastrand::usize(..3)).max(log2)
}

/// How long one gossip call may take: well below `failure_timeout`, so a
/// round with a frozen peer still ends well within it and the next round's
/// probes start on time.
pub fn gossip_timeout(failure_timeout: Duration) -> Duration {
    (failure_timeout / 4).clamp(Duration::from_millis(100), peer::QUICK)
}

/// One gossip round with `fanout` random healthy peers (and sometimes one
/// unhealthy peer, and one known address that is not a member), all called
/// at once.
fn gossip_round(
    cluster: &Arc<Cluster>,
    pool: &mut CallPool,
    traffic: &Arc<peer::Traffic>,
    peers: &[super::membership::Peer],
    round: u64,
    candidate: Option<&String>,
) {
    let mut targets: Vec<&super::membership::Peer> = peers.iter().collect();
    fastrand::shuffle(&mut targets);
    // Idle, 1–3 probes a round whatever N; with news to spread, at least
    // log2(N) exchanges, so that it reaches everyone in a few rounds.
    let calls = if cluster.members.has_rumors() {
        fanout(peers.len() + 1)
    } else {
        fanout(1)
    };
    targets.truncate(calls);
    let unhealthy = cluster.members.unhealthy_peers();
    let extra = if round % 3 == 2 && !unhealthy.is_empty() {
        Some(unhealthy[fastrand::usize(..unhealthy.len())].clone())
    } else {
        None
    };
    let timeout = gossip_timeout(cluster.config.failure_timeout);
    let mut jobs = Vec::new();
    for p in targets.into_iter().chain(extra.as_ref()) {
        let (cluster, p, traffic) = (cluster.clone(), p.clone(), traffic.clone());
        jobs.push(calls::job(move || {
            exchange(&cluster, &p, timeout, &traffic)
        }));
    }
    if let Some(address) = candidate {
        // Look for members on the other side of a healed partition.
        let (cluster, address) = (cluster.clone(), address.clone());
        jobs.push(calls::job(move || {
            let _ = join_one(&cluster, &address, timeout);
        }));
    }
    // An exchange makes at most two calls.
    let skipped = pool.run_all(jobs, calls::round_deadline(2, timeout));
    if skipped > 0 {
        log::debug!("gossip: {skipped} calls of this round skipped, every call thread busy");
    }
    cluster
        .metrics
        .gossip_rounds
        .fetch_add(1, Ordering::Relaxed);
    // Calls still under way at the deadline count in the next round.
    cluster
        .metrics
        .gossip_bytes
        .fetch_add(traffic.bytes.swap(0, Ordering::Relaxed), Ordering::Relaxed);
}

/// One gossip exchange with a peer, which is also a probe of it.
fn exchange(
    cluster: &Cluster,
    p: &super::membership::Peer,
    timeout: Duration,
    traffic: &peer::Traffic,
) {
    let members = &cluster.members;
    let mut rumors = members.take_rumors(RUMORS_PER_MESSAGE);
    // A peer this node suspects hears of it, and refutes if alive.
    rumors.extend(members.suspicion_of(&p.id));
    let msg = Gossip {
        digest: Some(members.digest()),
        from: Some(members.me()),
        rumors,
        members: Vec::new(),
    };
    let reply = match cluster.peer.post::<_, Gossip>(
        &p.address,
        "/internal/gossip",
        &msg,
        timeout,
        Some(traffic),
    ) {
        Ok(reply) => reply,
        Err(e) => {
            let text = e.to_string();
            if text.contains("certificate") {
                // A configuration problem, not a passing failure: say
                // which peer and why, once per gossip round with it.
                log::warn!("gossip with {} ({}): TLS refused: {text}", p.id, p.address);
            } else {
                log::debug!("gossip with {} ({}): {text}", p.id, p.address);
            }
            if !cluster.has_left() {
                members.suspect(&p.id);
            }
            return;
        }
    };
    if cluster.has_left() {
        return;
    }
    members.reached(&p.address);
    if reply.entries().any(|e| e.validate().is_err()) {
        log::debug!("gossip with {} ({}): a malformed entry", p.id, p.address);
        return;
    }
    absorb(cluster, &reply);
    let digest = members.digest();
    if !reply.members.is_empty() && reply.digest.is_some_and(|d| d != digest) {
        // The tables still differ after taking the peer's: it lacks
        // something this node knows. Send it the whole table once.
        let push = Gossip {
            digest: Some(digest),
            from: Some(members.me()),
            rumors: Vec::new(),
            members: members.entries(),
        };
        match cluster.peer.post::<_, Gossip>(
            &p.address,
            "/internal/gossip",
            &push,
            timeout,
            Some(traffic),
        ) {
            Ok(reply) => absorb(cluster, &reply),
            Err(e) => log::debug!("gossip push to {} ({}): {e}", p.id, p.address),
        }
    }
}

/// Tries every candidate address until one accepts the join. Ok(Err):
/// nobody did, and why (per address). Err: a member refused this node
/// (a duplicate id).
fn join_any(cluster: &Cluster, candidates: &[String]) -> Result<Result<(), String>, String> {
    let mut order: Vec<&String> = candidates.iter().collect();
    // Seeds first, in the configured order; other known addresses after.
    order.sort_by_key(|a| {
        cluster
            .config
            .seed_nodes
            .iter()
            .position(|s| s == *a)
            .unwrap_or(usize::MAX)
    });
    let mut reasons = Vec::new();
    for address in order {
        match join_one(cluster, address, peer::QUICK) {
            Ok(()) => return Ok(Ok(())),
            Err(ClusterError::Status(409, msg)) => return Err(format!("{address}: {msg}")),
            Err(e) => {
                log::debug!("join via {address}: {e}");
                reasons.push(format!("{address}: {}", join_failure(&e)));
            }
        }
    }
    Ok(Err(reasons.join("; ")))
}

/// Why a join call failed, in the operator's words.
pub fn join_failure(e: &ClusterError) -> String {
    match e {
        ClusterError::Status(401, _) => {
            "refused our credentials (401: is cluster_secret the same on both?)".into()
        }
        ClusterError::Status(code, msg) => format!("answered {code}: {msg}"),
        ClusterError::Unreachable(m) if m.contains("refused") => "connection refused".into(),
        ClusterError::Unreachable(m) if m.to_ascii_lowercase().contains("time") => "timeout".into(),
        ClusterError::Unreachable(m) => format!("unreachable ({m})"),
        ClusterError::BadReply(m) => format!("bad reply ({m})"),
        ClusterError::Store(e) => format!("this node's store failed ({e})"),
        ClusterError::BadVersion(e) => format!("bad reply ({e})"),
        ClusterError::Invalid(m) => format!("refused ({m})"),
    }
}

/// Joins through one address.
fn join_one(cluster: &Cluster, address: &str, timeout: Duration) -> Result<(), ClusterError> {
    let me = cluster.members.me();
    let reply: MemberList = cluster
        .peer
        .post(address, "/members/join", &me, timeout, None)?;
    if reply
        .members
        .first()
        .is_some_and(|m| m.id == me.id && m.generation == me.generation)
    {
        // Our own address answered (a seed list that names this node).
        cluster.members.forget(address);
        return Err(ClusterError::BadReply("that address is this node".into()));
    }
    cluster.members.reached(address);
    if let Some((first, rest)) = reply.members.split_first() {
        // The first entry is the answering member's own.
        cluster.members.merge_direct(first);
        cluster.members.merge(rest);
    }
    log::info!(
        "joined the cluster via {address}: {} members healthy",
        cluster.members.healthy_count()
    );
    Ok(())
}

/// Tells every healthy peer that this node leaves; peers drop it at once.
pub fn announce_leave(cluster: &Cluster) {
    let entry = cluster.members.leave();
    let peers = cluster.members.healthy_peers();
    let mut told = 0;
    for p in &peers {
        match cluster.peer.post::<_, serde_json::Value>(
            &p.address,
            "/members/leave",
            &entry,
            peer::QUICK,
            None,
        ) {
            Ok(_) => told += 1,
            Err(e) => log::debug!("telling {} that this node leaves: {e}", p.id),
        }
    }
    cluster.members.forget_peers();
    log::info!("left the cluster: told {told} of {} peers", peers.len());
}

/// Why a join was not accepted.
pub enum JoinAnswer {
    /// Accepted: the member list to send back.
    Members(MemberList),
    /// This node has left the cluster.
    Left,
    /// The id is taken (409).
    Taken(String),
}

/// The receiving half of a join (`POST /members/join`).
pub fn accept_join(cluster: &Cluster, entry: &MemberEntry) -> JoinAnswer {
    if cluster.has_left() {
        return JoinAnswer::Left;
    }
    let members = &cluster.members;
    let me = members.me();
    if entry.id == me.id && entry.generation == me.generation {
        // A seed list that names this node: answer so the caller can tell.
        return JoinAnswer::Members(MemberList { members: vec![me] });
    }
    if let Err(refused) = members.check_join(entry) {
        log::warn!(
            "refused a join from {} at {}: {}",
            entry.id,
            entry.address,
            refused.0
        );
        return JoinAnswer::Taken(refused.0);
    }
    // What this node holds against the joining node goes back to it (last:
    // the first entry is this node's own), so that it refutes.
    let doubt = members.doubt_about(entry);
    members.merge_direct(entry);
    members.reached(&entry.address);
    let mut list = members.entries();
    list.extend(doubt);
    JoinAnswer::Members(MemberList { members: list })
}

/// The receiving half of a leave announcement (`POST /members/leave` with
/// the leaving member's entry).
pub fn accept_leave(cluster: &Cluster, entry: &MemberEntry) -> Result<(), super::ClusterError> {
    if !entry.left {
        return Err(super::ClusterError::Invalid(
            "a leave announcement must have \"left\": true".into(),
        ));
    }
    cluster.members.merge(std::slice::from_ref(entry));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_grows_with_log_n() {
        for _ in 0..50 {
            let small = fanout(3);
            assert!((1..=3).contains(&small), "{small}");
            assert!(fanout(200) >= 7);
            assert!(fanout(1000) >= 9);
        }
        assert!((1..=3).contains(&fanout(0)));
    }

    #[test]
    fn gossip_calls_end_well_before_failure_timeout() {
        assert_eq!(
            gossip_timeout(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(gossip_timeout(Duration::from_secs(300)), peer::QUICK);
        assert_eq!(
            gossip_timeout(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
