//! Conflict resolution: two versions of a key with equal timestamps and
//! different uuids.
//!
//! The rules, exactly as implemented:
//!
//! 1. The node that meets a conflict asks every healthy member which version
//!    of the key it holds (`GET /internal/version`). If any member holds a
//!    newer version, that one wins by the ordinary rule.
//! 2. Otherwise every member (this node included) that holds a version with
//!    the conflicting timestamp casts one vote for it. The version with the
//!    most votes wins. On a tie, of the tied versions, the one held by the
//!    oldest member (earliest `joined_timestamp`, then smallest id) wins.
//! 3. When no vote can be taken (no other member answered), or when the same
//!    key and timestamp come back in conflict after a vote here (two votes
//!    saw different member lists), the larger uuid wins. Every node computes
//!    that alike, so from then on the key cannot flip back and forth.
//! 4. A losing node stores the winner with its uuid and timestamp unchanged,
//!    and the resolving node pushes the winner to every voter that held
//!    another version.
//!
//! Every resolution is logged at info and counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::membership::Peer;
use super::replicate;
use super::wire::WireVersion;
use super::Cluster;
use crate::cluster::peer;
use crate::store::writer::ConflictFound;
use crate::store::{Version, VersionId};

/// Conflicts waiting for the resolver at most; more are dropped and found
/// again by the next sync or anti-entropy round.
const QUEUE_MAX: usize = 10_000;
/// Remembered resolutions (key, timestamp) before the memory is reset.
const REMEMBER_MAX: usize = 100_000;

/// `GET /internal/version?key=K` reply: the version this node holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VersionReply {
    pub version: Option<WireVersion>,
}

/// One member's vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ballot {
    pub member: String,
    pub joined_timestamp: u64,
    /// The uuid it holds at the conflicting timestamp, if any.
    pub uuid: Option<VersionId>,
}

/// How a conflict was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The version with the most votes.
    Majority(VersionId),
    /// A tie, settled by the oldest member holding one of the tied versions.
    OldestMember(VersionId),
    /// No vote possible (or a repeat): the larger uuid.
    LargerUuid(VersionId),
}

impl Decision {
    pub fn winner(&self) -> VersionId {
        match *self {
            Decision::Majority(u) | Decision::OldestMember(u) | Decision::LargerUuid(u) => u,
        }
    }

    fn how(&self) -> &'static str {
        match self {
            Decision::Majority(_) => "majority vote",
            Decision::OldestMember(_) => "tie settled by the oldest member",
            Decision::LargerUuid(_) => "larger uuid rule",
        }
    }
}

/// Counts the ballots. `me` is this node's id; `candidates` are the
/// conflicting versions known here. Without a ballot from another member,
/// no vote can be taken and the larger candidate uuid wins.
pub fn decide(me: &str, ballots: &[Ballot], candidates: &[VersionId]) -> Decision {
    let larger = || {
        Decision::LargerUuid(
            crate::store::merge::rule_winner(candidates.iter().copied())
                .unwrap_or(VersionId([0; 16])),
        )
    };
    if !ballots.iter().any(|b| b.member != me && b.uuid.is_some()) {
        return larger();
    }
    let mut counts: HashMap<VersionId, usize> = HashMap::new();
    for b in ballots {
        if let Some(u) = b.uuid {
            *counts.entry(u).or_default() += 1;
        }
    }
    let top = counts.values().copied().max().unwrap_or(0);
    let tied: HashSet<VersionId> = counts
        .iter()
        .filter(|(_, &c)| c == top)
        .map(|(u, _)| *u)
        .collect();
    if tied.len() == 1 {
        return Decision::Majority(*tied.iter().next().expect("one entry"));
    }
    ballots
        .iter()
        .filter(|b| b.uuid.is_some_and(|u| tied.contains(&u)))
        .min_by(|a, b| (a.joined_timestamp, &a.member).cmp(&(b.joined_timestamp, &b.member)))
        .and_then(|b| b.uuid)
        .map(Decision::OldestMember)
        .unwrap_or_else(larger)
}

/// Conflicts waiting to be resolved, one entry per key.
pub struct ConflictQueue {
    tx: SyncSender<ConflictFound>,
    rx: Mutex<Option<Receiver<ConflictFound>>>,
    pending: Mutex<HashSet<String>>,
    /// (key, timestamp) pairs resolved here before.
    resolved: Mutex<HashSet<(String, u64)>>,
}

impl Default for ConflictQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl ConflictQueue {
    pub fn new() -> ConflictQueue {
        let (tx, rx) = mpsc::sync_channel(QUEUE_MAX);
        ConflictQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashSet::new()),
            resolved: Mutex::new(HashSet::new()),
        }
    }

    /// Queues conflicts found by the writer; never blocks.
    pub fn push(&self, found: Vec<ConflictFound>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for c in found {
            if pending.insert(c.key.clone()) {
                let key = c.key.clone();
                if self.tx.try_send(c).is_err() {
                    pending.remove(&key);
                }
            }
        }
    }

    fn done(&self, key: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// True if this key and timestamp were settled here before; records it.
    fn seen_before(&self, key: &str, ts: u64) -> bool {
        let mut r = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= REMEMBER_MAX {
            r.clear();
        }
        !r.insert((key.to_string(), ts))
    }
}

/// The resolver thread.
pub fn resolver_loop(cluster: Arc<Cluster>) {
    let Some(rx) = cluster
        .conflicts
        .rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(c) => {
                let key = c.key.clone();
                resolve(&cluster, c);
                cluster.conflicts.done(&key);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if cluster.stopper.is_stopped() {
            return;
        }
    }
}

/// Settles one conflict (see the module comment for the rules): asks the
/// healthy peers, decides, stores the winner and tells the voters that
/// hold another version.
fn resolve(cluster: &Cluster, c: ConflictFound) {
    cluster
        .metrics
        .conflicts_detected
        .fetch_add(1, Ordering::Relaxed);
    let key = c.key;
    let ts = c.local.timestamp;
    let local = match cluster.store.get(&key) {
        Ok(Some(v)) if v.stamp.timestamp == ts => v,
        // Gone, or a newer version arrived meanwhile: nothing to settle.
        Ok(_) => return,
        Err(e) => {
            log::error!("conflict on {key}: cannot read it: {e}");
            return;
        }
    };
    // Every version known with this timestamp, by uuid.
    let mut known: HashMap<VersionId, Version> = HashMap::new();
    known.insert(local.stamp.uuid, local.clone());
    known.insert(c.incoming.stamp.uuid, c.incoming.clone());

    let me = cluster.config.node_id.clone();
    let mut ballots = vec![Ballot {
        member: me.clone(),
        joined_timestamp: cluster.members.me().joined_timestamp,
        uuid: Some(local.stamp.uuid),
    }];
    let peers = cluster.members.healthy_peers();
    let mut newer: Option<Version> = None;
    if !cluster.conflicts.seen_before(&key, ts) {
        for p in &peers {
            let Some(held) = ask(cluster, &key, p) else {
                continue;
            };
            ballots.push(Ballot {
                member: p.id.clone(),
                joined_timestamp: p.joined_timestamp,
                uuid: count(held, ts, &mut known, &mut newer),
            });
        }
    }
    if let Some(v) = newer {
        log::info!(
            "conflict on {key} at {ts}: a member holds a newer version ({}); taking it",
            v.stamp.uuid
        );
        if let Err(e) = cluster.writer.apply_remote(vec![(key.clone(), v)]) {
            log::error!("conflict on {key}: storing the newer version failed: {e}");
        }
        return;
    }
    let mut candidates: Vec<VersionId> = known.keys().copied().collect();
    candidates.sort();
    let decision = decide(&me, &ballots, &candidates);
    let winner_id = decision.winner();
    let Some(winner) = known.get(&winner_id).cloned() else {
        log::error!("conflict on {key}: the winning version {winner_id} is not at hand");
        return;
    };
    log::info!(
        "conflict on {key} at {ts}: {} -> {winner_id} wins by {}",
        tally(&candidates, &ballots, &known),
        decision.how()
    );
    let counter = match decision {
        Decision::LargerUuid(_) => &cluster.metrics.conflicts_resolved_rule,
        _ => &cluster.metrics.conflicts_resolved_vote,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if winner_id != local.stamp.uuid {
        if let Err(e) = cluster.writer.resolve(key.clone(), winner.clone()) {
            log::error!("conflict on {key}: storing the winner failed: {e}");
            return;
        }
    }
    tell_voters(cluster, &key, &winner, &ballots, &peers);
}

/// A peer's version of `key`: `Some(None)` when it holds none, `None`
/// when it could not be asked or sent something invalid (no ballot).
fn ask(cluster: &Cluster, key: &str, p: &Peer) -> Option<Option<Version>> {
    let path = format!(
        "/internal/version?key={}",
        crate::escape::percent_encode(key)
    );
    let reply: VersionReply = match cluster.peer.get(&p.address, &path, peer::QUICK, None) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("conflict on {key}: no vote from {}: {e}", p.id);
            return None;
        }
    };
    match reply
        .version
        .map(|w| w.into_version(cluster.config.max_value_bytes))
    {
        Some(Ok((_, v))) => Some(Some(v)),
        Some(Err(e)) => {
            log::warn!("conflict on {key}: {} sent a bad version: {e}", p.id);
            None
        }
        None => Some(None),
    }
}

/// What a peer's version counts for in a conflict at `ts`: a vote for it
/// when it has that timestamp (and it joins the candidates); no vote when
/// it is older, absent, or newer (the newest such version is kept, and
/// then wins without a vote).
fn count(
    held: Option<Version>,
    ts: u64,
    known: &mut HashMap<VersionId, Version>,
    newer: &mut Option<Version>,
) -> Option<VersionId> {
    match held {
        Some(v) if v.stamp.timestamp == ts => {
            let u = v.stamp.uuid;
            known.entry(u).or_insert(v);
            Some(u)
        }
        Some(v) if v.stamp.timestamp > ts => {
            let beats = newer
                .as_ref()
                .is_none_or(|n| crate::store::merge::settles_over(&v.stamp, &n.stamp));
            if beats {
                *newer = Some(v);
            }
            None
        }
        _ => None,
    }
}

/// The candidates with their votes, for the log.
fn tally(
    candidates: &[VersionId],
    ballots: &[Ballot],
    known: &HashMap<VersionId, Version>,
) -> String {
    candidates
        .iter()
        .map(|u| {
            let votes = ballots.iter().filter(|b| b.uuid == Some(*u)).count();
            let tomb = known.get(u).is_some_and(|v| v.stamp.deleted);
            format!(
                "{u} ({votes} votes{})",
                if tomb { ", tombstone" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pushes the winner to the voters that hold another version.
fn tell_voters(cluster: &Cluster, key: &str, winner: &Version, ballots: &[Ballot], peers: &[Peer]) {
    let versions: Vec<WireVersion> = WireVersion::from_version(key, winner).into_iter().collect();
    let winner_id = winner.stamp.uuid;
    for b in ballots
        .iter()
        .filter(|b| b.uuid.is_some_and(|u| u != winner_id))
    {
        if let Some(p) = peers.iter().find(|p| p.id == b.member) {
            if let Err(e) = replicate::push(
                &cluster.peer,
                &cluster.config.node_id,
                &p.address,
                versions.clone(),
                peer::QUICK,
                None,
            ) {
                log::debug!("conflict on {key}: telling {} the winner failed: {e}", p.id);
            }
        }
    }
}

/// The serving half of a vote or a repair (`GET /internal/version`): the
/// version this node holds for `key`, if any.
pub fn serve_version(cluster: &Cluster, key: &str) -> Result<VersionReply, super::ClusterError> {
    let version = cluster
        .store
        .get(key)?
        .and_then(|v| WireVersion::from_version(key, &v));
    Ok(VersionReply { version })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> VersionId {
        VersionId([n; 16])
    }

    fn at(ts: u64, n: u8) -> Version {
        Version {
            stamp: crate::store::Stamp {
                timestamp: ts,
                uuid: id(n),
                deleted: false,
            },
            data: b"1".to_vec(),
            expires: None,
        }
    }

    #[test]
    fn a_peer_votes_only_for_a_version_at_the_conflicting_timestamp() {
        let mut known = HashMap::new();
        let mut newer = None;
        // Same timestamp: a vote, and a candidate.
        assert_eq!(
            count(Some(at(50, 3)), 50, &mut known, &mut newer),
            Some(id(3))
        );
        assert!(known.contains_key(&id(3)));
        // Older, or none: no vote.
        assert_eq!(count(Some(at(40, 4)), 50, &mut known, &mut newer), None);
        assert_eq!(count(None, 50, &mut known, &mut newer), None);
        assert!(newer.is_none());
        // Newer: no vote, and the newest of them is kept.
        assert_eq!(count(Some(at(60, 5)), 50, &mut known, &mut newer), None);
        assert_eq!(count(Some(at(70, 1)), 50, &mut known, &mut newer), None);
        assert_eq!(count(Some(at(70, 0)), 50, &mut known, &mut newer), None);
        assert_eq!(
            newer.map(|v| v.stamp.uuid),
            Some(id(1)),
            "70 beats 60; at 70, the larger uuid"
        );
        assert_eq!(known.len(), 1);
    }

    fn ballot(member: &str, joined: u64, uuid: Option<u8>) -> Ballot {
        Ballot {
            member: member.into(),
            joined_timestamp: joined,
            uuid: uuid.map(id),
        }
    }

    #[test]
    fn the_majority_wins() {
        let b = [
            ballot("a", 1, Some(1)),
            ballot("b", 2, Some(2)),
            ballot("c", 3, Some(2)),
        ];
        assert_eq!(decide("a", &b, &[id(1), id(2)]), Decision::Majority(id(2)));
    }

    #[test]
    fn a_tie_goes_to_the_oldest_member_holding_a_tied_version() {
        let b = [ballot("a", 30, Some(1)), ballot("b", 10, Some(2))];
        assert_eq!(
            decide("a", &b, &[id(1), id(2)]),
            Decision::OldestMember(id(2))
        );
        // Three versions, one each: the oldest member's.
        let b = [
            ballot("a", 30, Some(3)),
            ballot("b", 20, Some(1)),
            ballot("c", 25, Some(2)),
        ];
        assert_eq!(
            decide("c", &b, &[id(1), id(2), id(3)]),
            Decision::OldestMember(id(1))
        );
        // The oldest member overall holds nothing at this timestamp: the
        // oldest among the holders of the tied versions decides.
        let b = [
            ballot("old", 1, None),
            ballot("a", 30, Some(1)),
            ballot("b", 20, Some(2)),
        ];
        assert_eq!(
            decide("a", &b, &[id(1), id(2)]),
            Decision::OldestMember(id(2))
        );
        // Equal join times fall back to the smaller id.
        let b = [ballot("b", 5, Some(1)), ballot("a", 5, Some(2))];
        assert_eq!(
            decide("b", &b, &[id(1), id(2)]),
            Decision::OldestMember(id(2))
        );
    }

    #[test]
    fn no_vote_means_the_larger_uuid() {
        // Alone: only this node's ballot.
        let b = [ballot("a", 1, Some(1))];
        assert_eq!(
            decide("a", &b, &[id(1), id(7)]),
            Decision::LargerUuid(id(7))
        );
        // Members answered but hold nothing at that timestamp (or died mid-vote).
        let b = [ballot("a", 1, Some(1)), ballot("b", 0, None)];
        assert_eq!(
            decide("a", &b, &[id(1), id(7)]),
            Decision::LargerUuid(id(7))
        );
    }

    #[test]
    fn a_missing_ballot_changes_only_the_count() {
        // c died mid-vote: a and b still decide, by the tie rule.
        let b = [ballot("a", 2, Some(1)), ballot("b", 1, Some(2))];
        assert_eq!(
            decide("a", &b, &[id(1), id(2)]),
            Decision::OldestMember(id(2))
        );
    }

    #[test]
    fn every_node_decides_alike_from_the_same_ballots() {
        let ballots = [
            ballot("a", 3, Some(1)),
            ballot("b", 1, Some(2)),
            ballot("c", 2, Some(3)),
        ];
        let from_a = decide("a", &ballots, &[id(1), id(2), id(3)]);
        let mut reversed = ballots.clone();
        reversed.reverse();
        let from_c = decide("c", &reversed, &[id(3), id(2), id(1)]);
        assert_eq!(from_a.winner(), from_c.winner());
    }

    #[test]
    fn a_repeat_is_remembered() {
        let q = ConflictQueue::new();
        assert!(!q.seen_before("k", 5));
        assert!(q.seen_before("k", 5));
        assert!(!q.seen_before("k", 6));
    }

    /// A fake peer that holds `held` for every key and accepts pushes.
    fn holder(held: Option<Version>) -> crate::cluster::testing::FakePeer {
        crate::cluster::testing::FakePeer::start(Box::new(move |rq| {
            if rq.line.starts_with("GET /internal/version") {
                let version = held
                    .as_ref()
                    .and_then(|v| WireVersion::from_version("k", v));
                (
                    200,
                    serde_json::to_string(&VersionReply { version }).unwrap(),
                )
            } else {
                (200, r#"{"applied":1,"ignored":0,"conflicts":0}"#.into())
            }
        }))
    }

    /// The uuids of the versions pushed to a fake peer.
    fn pushed(p: &crate::cluster::testing::FakePeer) -> Vec<String> {
        p.received("POST /internal/push")
            .iter()
            .flat_map(|rq| {
                let push: replicate::PushRequest = serde_json::from_slice(&rq.body).unwrap();
                push.versions.into_iter().map(|v| v.uuid)
            })
            .collect()
    }

    /// Runs `resolve` on a conflict between `local` (stored here) and
    /// `incoming`, with peers holding what `held` says; returns the version
    /// stored here after, the vote and rule counters, and the peers.
    fn settle(
        local: Version,
        incoming: Version,
        held: &[Option<Version>],
    ) -> (Version, (u64, u64), Vec<crate::cluster::testing::FakePeer>) {
        let fakes: Vec<_> = held.iter().map(|h| holder(h.clone())).collect();
        let ids: Vec<String> = (0..fakes.len()).map(|i| format!("p{i}")).collect();
        let peers: Vec<(&str, &str, u64)> = fakes
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (f, id))| (id.as_str(), f.address.as_str(), 200 + i as u64))
            .collect();
        let t = crate::cluster::testing::TestCluster::new(&peers);
        let cluster = &t.cluster;
        cluster
            .store
            .write_versions(&[("k".to_string(), local.clone())])
            .unwrap();
        resolve(
            cluster,
            ConflictFound {
                key: "k".into(),
                local: local.stamp,
                incoming,
            },
        );
        let now = cluster.store.get("k").unwrap().unwrap();
        let m = &cluster.metrics;
        let counts = (
            m.conflicts_resolved_vote.load(Ordering::Relaxed),
            m.conflicts_resolved_rule.load(Ordering::Relaxed),
        );
        t.stop();
        (now, counts, fakes)
    }

    #[test]
    fn resolve_takes_the_majority_version_and_tells_only_the_others() {
        let (a, b) = (at(50, 1), at(50, 2));
        // Here a; the two peers b: b wins 2 to 1, nobody needs telling.
        let (now, counts, fakes) =
            settle(a.clone(), b.clone(), &[Some(b.clone()), Some(b.clone())]);
        assert_eq!(now.stamp.uuid, b.stamp.uuid);
        assert_eq!(counts, (1, 0));
        assert!(fakes.iter().all(|f| pushed(f).is_empty()));

        // Here a, one peer a, one peer b: a wins, only the b-holder is told.
        let (now, counts, fakes) = settle(a.clone(), b.clone(), &[Some(a.clone()), Some(b)]);
        assert_eq!(now.stamp.uuid, a.stamp.uuid);
        assert_eq!(counts, (1, 0));
        assert!(pushed(&fakes[0]).is_empty());
        assert_eq!(pushed(&fakes[1]), vec![a.stamp.uuid.to_string()]);
    }

    #[test]
    fn resolve_takes_a_newer_version_without_a_vote() {
        let (a, b, newer) = (at(50, 1), at(50, 2), at(60, 3));
        let (now, counts, fakes) = settle(a, b.clone(), &[Some(newer.clone()), Some(b)]);
        assert_eq!(now.stamp.uuid, newer.stamp.uuid);
        assert_eq!(counts, (0, 0));
        assert!(fakes.iter().all(|f| pushed(f).is_empty()));
    }

    #[test]
    fn resolve_without_a_peer_falls_back_to_the_larger_uuid() {
        let (a, b) = (at(50, 1), at(50, 2));
        let (now, counts, _) = settle(a, b.clone(), &[]);
        assert_eq!(now.stamp.uuid, b.stamp.uuid);
        assert_eq!(counts, (0, 1));
    }
}
