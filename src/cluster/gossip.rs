//! Joining, gossip rounds and leaving: the I/O around the member table.
//!
//! - Join: a node posts its entry to `/members/join` of a seed (or of any
//!   address it has known) and merges the member list it gets back. While
//!   nobody answers it retries, with a backoff up to `JOIN_BACKOFF_MAX`.
//! - Gossip: every random interval in [gossip_interval_min, max] the node
//!   bumps its heartbeat, applies the failure and removal timeouts, and
//!   exchanges member lists with 1–3 random healthy peers
//!   (`/internal/gossip`, push-pull). Now and then it also tries an
//!   unhealthy peer (to notice recovery) and a known address that is not a
//!   member (to heal a partition in which both sides dropped each other).
//! - Leave: the node's entry, marked `left`, goes to every healthy peer
//!   (`/members/leave`), which drop it at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::membership::MemberEntry;
use crate::node::Node;
use crate::peer::{self, PeerError};

/// Longest wait between join attempts while no seed answers.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// First wait between join attempts.
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Known addresses unreachable for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Meta entry holding the known addresses.
pub const META_KNOWN: &str = "known_addresses";

/// `POST /members/join` reply, and `/internal/gossip` body and reply.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MemberList {
    pub members: Vec<MemberEntry>,
}

/// The gossip thread: join, then gossip until the node stops or leaves.
pub fn gossip_loop(node: Arc<Node>) {
    let cluster = &node.cluster;
    let mut backoff = JOIN_BACKOFF_MIN;
    let mut next_join = Instant::now();
    let mut round: u64 = 0;
    let mut warned_alone = false;
    let mut known_saved = cluster.members.known_addresses();
    let mut contact_saved = 0u64;
    loop {
        if cluster.has_left() || cluster.stopper.is_stopped() {
            return;
        }
        cluster.members.beat();
        cluster.members.tick();
        let peers = cluster.members.healthy_peers();
        let candidates = cluster.members.rejoin_candidates();
        let mut wait = node.config.gossip_wait();
        if peers.is_empty() {
            if !candidates.is_empty() && Instant::now() >= next_join {
                match join_any(&node, &candidates) {
                    Ok(true) => {
                        backoff = JOIN_BACKOFF_MIN;
                        warned_alone = false;
                    }
                    Ok(false) => {
                        if !warned_alone {
                            log::warn!(
                                "no seed or known member answered ({}); retrying",
                                candidates.join(", ")
                            );
                            warned_alone = true;
                        }
                        next_join = Instant::now() + backoff;
                        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
                    }
                    Err(refusal) => {
                        node.fatal(&format!("joining the cluster was refused: {refusal}"));
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
            gossip_round(&node, &peers, round);
            if round % 5 == 4 && !candidates.is_empty() {
                // Look for members on the other side of a healed partition.
                let a = &candidates[fastrand::usize(..candidates.len())];
                let _ = join_one(&node, a);
            }
        }
        round += 1;
        if round.is_multiple_of(20) {
            cluster
                .members
                .forget_stale(&node.config.seed_nodes, FORGET_AFTER);
        }
        let known = cluster.members.known_addresses();
        if known.keys().ne(known_saved.keys()) {
            if let Ok(bytes) = serde_json::to_vec(&known) {
                let _ = node.store.meta_put(META_KNOWN, &bytes);
            }
            known_saved = known;
        }
        if !cluster.is_stale() {
            contact_saved = crate::node::save_last_contact(&node, contact_saved, false);
        }
        if cluster.stopper.wait(wait) {
            return;
        }
    }
}

/// One gossip round with 1–3 random healthy peers (and sometimes one
/// unhealthy one).
fn gossip_round(node: &Node, peers: &[super::membership::Peer], round: u64) {
    let mut targets: Vec<&super::membership::Peer> = peers.iter().collect();
    fastrand::shuffle(&mut targets);
    let fanout = 1 + fastrand::usize(..3);
    targets.truncate(fanout);
    let unhealthy = node.cluster.members.unhealthy_peers();
    let extra = if round % 3 == 2 && !unhealthy.is_empty() {
        Some(unhealthy[fastrand::usize(..unhealthy.len())].clone())
    } else {
        None
    };
    let body = MemberList {
        members: node.cluster.members.entries(),
    };
    for p in targets.into_iter().chain(extra.as_ref()) {
        match node.cluster.peer.post::<_, MemberList>(
            &p.address,
            "/internal/gossip",
            &body,
            peer::QUICK,
            None,
        ) {
            Ok(reply) => {
                node.cluster.members.reached(&p.address);
                node.cluster.members.merge(&reply.members);
            }
            Err(e) => log::debug!("gossip with {} ({}): {e}", p.id, p.address),
        }
    }
    node.metrics.gossip_rounds.fetch_add(1, Ordering::Relaxed);
}

/// Tries every candidate address until one accepts the join. Ok(false):
/// nobody answered. Err: a member refused this node (a duplicate id).
fn join_any(node: &Node, candidates: &[String]) -> Result<bool, String> {
    let mut order: Vec<&String> = candidates.iter().collect();
    // Seeds first, in the configured order; other known addresses after.
    order.sort_by_key(|a| {
        node.config
            .seed_nodes
            .iter()
            .position(|s| s == *a)
            .unwrap_or(usize::MAX)
    });
    for address in order {
        match join_one(node, address) {
            Ok(()) => return Ok(true),
            Err(PeerError::Status(409, msg)) => return Err(format!("{address}: {msg}")),
            Err(e) => log::debug!("join via {address}: {e}"),
        }
    }
    Ok(false)
}

/// Joins through one address.
fn join_one(node: &Node, address: &str) -> Result<(), PeerError> {
    let me = node.cluster.members.me();
    let reply: MemberList =
        node.cluster
            .peer
            .post(address, "/members/join", &me, peer::QUICK, None)?;
    if reply
        .members
        .first()
        .is_some_and(|m| m.id == me.id && m.generation == me.generation)
    {
        // Our own address answered (a seed list that names this node).
        node.cluster.members.forget(address);
        return Err(PeerError::BadReply("that address is this node".into()));
    }
    node.cluster.members.reached(address);
    node.cluster.members.merge(&reply.members);
    log::info!(
        "joined the cluster via {address}: {} members healthy",
        node.cluster.members.healthy_count()
    );
    Ok(())
}

/// Tells every healthy peer that this node leaves; peers drop it at once.
pub fn announce_leave(node: &Node) {
    let entry = node.cluster.members.leave();
    let peers = node.cluster.members.healthy_peers();
    let mut told = 0;
    for p in &peers {
        match node.cluster.peer.post::<_, serde_json::Value>(
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
    node.cluster.members.forget_peers();
    log::info!("left the cluster: told {told} of {} peers", peers.len());
}
