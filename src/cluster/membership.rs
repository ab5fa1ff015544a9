//! The member table: who is in the cluster, and who is alive. Pure state,
//! no I/O, so every rule here is tested without sockets.
//!
//! Protocol, in prose. Every node owns one entry about itself:
//! `(id, address, joined_timestamp, generation, heartbeat, left)`. The
//! generation is fixed at process start and grows across restarts; the
//! heartbeat grows every gossip round. Entries travel in joins and gossip;
//! merging keeps, per member, the entry with the larger
//! `(generation, heartbeat)`. A node's own entry is only ever changed by
//! itself.
//!
//! Liveness never compares clocks across nodes: a member is "heard from"
//! when a fresher entry about it arrives, and the time of that is this
//! node's own monotonic clock. Unheard for `failure_timeout`: unhealthy
//! (kept, shown, but left out of votes, syncs and gossip payloads). Unheard
//! for `removal_timeout`: dropped. A leaving node sends an entry with `left`
//! set, and peers drop it at once.
//!
//! Dropped and left members leave a tombstone (their last generation and
//! heartbeat) for a while, so that stale gossip from a slower peer cannot
//! bring them back. A member that really comes back has a fresher entry
//! (a new heartbeat, or a new generation after a restart) and is re-added.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A member as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The node's unique id (its `node_id`).
    pub id: String,
    /// `host:port` to dial it at (its `advertise_address`).
    pub address: String,
    /// When it first joined a cluster (ms since the epoch); set once, kept
    /// across restarts. The oldest member wins tied conflict votes.
    pub joined_timestamp: u64,
    /// Grows with every restart of the node (ms at start, or more).
    pub generation: u64,
    /// Grows with every gossip round of the node.
    pub heartbeat: u64,
    /// The node has left the cluster.
    #[serde(default)]
    pub left: bool,
}

impl MemberEntry {
    fn freshness(&self) -> (u64, u64) {
        (self.generation, self.heartbeat)
    }

    /// Checks what a peer sent; the error names the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty()
            || self.id.len() > 128
            || self.id.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!("invalid member id {:?}", self.id));
        }
        crate::config::check_host_port("address", &self.address).map_err(|e| e.0)?;
        Ok(())
    }
}

/// Health of a member as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Alive,
    Unhealthy,
}

/// A member as `GET /members/` shows it: the original's four fields, then
/// ours.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub id: String,
    pub address: String,
    /// When this node last heard of it (ms since the epoch, this node's clock).
    pub last_seen: u64,
    pub joined_timestamp: u64,
    pub state: Health,
    pub heartbeat: u64,
    pub generation: u64,
    /// True for the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// A peer to talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    pub address: String,
    pub joined_timestamp: u64,
}

struct Member {
    entry: MemberEntry,
    /// When a fresher entry last arrived (this node's monotonic clock).
    heard: Instant,
    /// The same moment on the wall clock, for display.
    heard_ms: u64,
    health: Health,
}

/// Something that changed in the table, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Joined(String),
    Recovered(String),
    Unhealthy(String),
    Removed(String),
    Left(String),
    /// A new member refused: the table is full.
    Refused(String),
}

/// Why a join was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRefused(pub String);

/// The table. Owned by `cluster::Members`, which adds the lock.
pub struct MemberTable {
    me: MemberEntry,
    members: HashMap<String, Member>,
    /// Dropped or left members: their last freshness, and since when.
    gone: HashMap<String, ((u64, u64), Instant)>,
    failure_timeout: Duration,
    removal_timeout: Duration,
    /// Members, this node included, at most; as many tombstones again.
    max_members: usize,
}

impl MemberTable {
    pub fn new(
        me: MemberEntry,
        failure_timeout: Duration,
        removal_timeout: Duration,
        max_members: usize,
    ) -> MemberTable {
        MemberTable {
            me,
            members: HashMap::new(),
            gone: HashMap::new(),
            failure_timeout,
            removal_timeout,
            max_members,
        }
    }

    /// Remembers a dropped or left member, unless the tombstones are full
    /// (then stale gossip about it may bring it back until the timeouts
    /// drop it again: harmless, and bounded).
    fn bury(&mut self, id: &str, freshness: (u64, u64), now: Instant) {
        if self.gone.len() < self.max_members || self.gone.contains_key(id) {
            self.gone.insert(id.to_string(), (freshness, now));
        }
    }

    pub fn me(&self) -> &MemberEntry {
        &self.me
    }

    /// Advances this node's heartbeat (once per gossip round).
    pub fn beat(&mut self) {
        self.me.heartbeat += 1;
    }

    /// Marks this node as leaving; its entry now says so.
    pub fn leave(&mut self) -> MemberEntry {
        self.me.left = true;
        self.me.heartbeat += 1;
        self.me.clone()
    }

    /// Forgets every peer (this node has left and works alone).
    pub fn forget_peers(&mut self) {
        self.members.clear();
    }

    /// Would a join from this entry be accepted? Refuses an id that is
    /// this node's own or that a live member uses at another address.
    pub fn check_join(&self, e: &MemberEntry) -> Result<(), JoinRefused> {
        if e.id == self.me.id {
            return Err(JoinRefused(format!(
                "node id {:?} is already used by {}",
                e.id, self.me.address
            )));
        }
        if let Some(m) = self.members.get(&e.id) {
            if m.entry.address != e.address && m.health == Health::Alive && !m.entry.left {
                return Err(JoinRefused(format!(
                    "node id {:?} is already used by {}",
                    e.id, m.entry.address
                )));
            }
        }
        Ok(())
    }

    /// Merges entries from a join, gossip or leave. Returns what changed.
    pub fn merge(&mut self, entries: &[MemberEntry], now: Instant, now_ms: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        for e in entries {
            if let Some(c) = self.merge_one(e, now, now_ms) {
                changes.push(c);
            }
        }
        changes
    }

    fn merge_one(&mut self, e: &MemberEntry, now: Instant, now_ms: u64) -> Option<Change> {
        if e.id == self.me.id || e.validate().is_err() {
            return None;
        }
        if let Some((freshness, _)) = self.gone.get(&e.id) {
            if e.freshness() <= *freshness {
                return None;
            }
        }
        if e.left {
            self.bury(&e.id, e.freshness(), now);
            return self
                .members
                .remove(&e.id)
                .map(|_| Change::Left(e.id.clone()));
        }
        match self.members.get_mut(&e.id) {
            Some(m) if e.freshness() > m.entry.freshness() => {
                m.entry = e.clone();
                m.heard = now;
                m.heard_ms = now_ms;
                if m.health == Health::Unhealthy {
                    m.health = Health::Alive;
                    return Some(Change::Recovered(e.id.clone()));
                }
                None
            }
            Some(_) => None,
            None => {
                if self.members.len() + 1 >= self.max_members {
                    return Some(Change::Refused(e.id.clone()));
                }
                self.gone.remove(&e.id);
                // One address, one node: an older id at the same address is
                // a previous incarnation under another name.
                self.members.retain(|_, m| m.entry.address != e.address);
                self.members.insert(
                    e.id.clone(),
                    Member {
                        entry: e.clone(),
                        heard: now,
                        heard_ms: now_ms,
                        health: Health::Alive,
                    },
                );
                Some(Change::Joined(e.id.clone()))
            }
        }
    }

    /// Applies the failure and removal timeouts.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut removed = Vec::new();
        for (id, m) in self.members.iter_mut() {
            let silent = now.saturating_duration_since(m.heard);
            if silent >= self.removal_timeout {
                removed.push(id.clone());
            } else if silent >= self.failure_timeout && m.health == Health::Alive {
                m.health = Health::Unhealthy;
                changes.push(Change::Unhealthy(id.clone()));
            }
        }
        for id in removed {
            if let Some(m) = self.members.remove(&id) {
                self.bury(&id, m.entry.freshness(), now);
                changes.push(Change::Removed(id));
            }
        }
        // Tombstones outlive any stale gossip: every node drops a silent
        // member within removal_timeout of the others.
        let keep = self.removal_timeout * 3 + Duration::from_secs(60);
        self.gone
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < keep);
        changes
    }

    /// Entries to send in gossip and join replies: this node and every
    /// alive member (unhealthy ones are not spread further).
    pub fn entries(&self) -> Vec<MemberEntry> {
        let mut out = vec![self.me.clone()];
        out.extend(
            self.members
                .values()
                .filter(|m| m.health == Health::Alive)
                .map(|m| m.entry.clone()),
        );
        out
    }

    /// Alive peers (not this node).
    pub fn healthy_peers(&self) -> Vec<Peer> {
        self.peers_in(Health::Alive)
    }

    /// Unhealthy peers, still worth an occasional gossip to notice recovery.
    pub fn unhealthy_peers(&self) -> Vec<Peer> {
        self.peers_in(Health::Unhealthy)
    }

    /// Peers in one state, sorted by id.
    fn peers_in(&self, health: Health) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .members
            .values()
            .filter(|m| m.health == health)
            .map(|m| Peer {
                id: m.entry.id.clone(),
                address: m.entry.address.clone(),
                joined_timestamp: m.entry.joined_timestamp,
            })
            .collect();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        peers
    }

    /// Whether a peer is a member and healthy.
    pub fn is_healthy(&self, id: &str) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.health == Health::Alive)
    }

    /// Healthy members including this node.
    pub fn healthy_count(&self) -> usize {
        1 + self
            .members
            .values()
            .filter(|m| m.health == Health::Alive)
            .count()
    }

    pub fn is_member(&self, id: &str) -> bool {
        self.members.contains_key(id)
    }

    pub fn has_address(&self, address: &str) -> bool {
        self.me.address == address || self.members.values().any(|m| m.entry.address == address)
    }

    /// The table as `GET /members/` shows it, this node first.
    pub fn views(&self, now_ms: u64) -> Vec<MemberView> {
        let mut out = vec![MemberView {
            id: self.me.id.clone(),
            address: self.me.address.clone(),
            last_seen: now_ms,
            joined_timestamp: self.me.joined_timestamp,
            state: Health::Alive,
            heartbeat: self.me.heartbeat,
            generation: self.me.generation,
            is_self: true,
        }];
        let mut others: Vec<MemberView> = self
            .members
            .values()
            .map(|m| MemberView {
                id: m.entry.id.clone(),
                address: m.entry.address.clone(),
                last_seen: m.heard_ms,
                joined_timestamp: m.entry.joined_timestamp,
                state: m.health,
                heartbeat: m.entry.heartbeat,
                generation: m.entry.generation,
                is_self: false,
            })
            .collect();
        others.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(others);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: Duration = Duration::from_secs(5);
    const REMOVE: Duration = Duration::from_secs(10);

    fn entry(id: &str, port: u16, gen: u64, hb: u64) -> MemberEntry {
        MemberEntry {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            joined_timestamp: 1000 + port as u64,
            generation: gen,
            heartbeat: hb,
            left: false,
        }
    }

    fn table() -> MemberTable {
        MemberTable::new(entry("me", 1, 1, 0), FAIL, REMOVE, 16)
    }

    #[test]
    fn the_table_and_its_tombstones_are_bounded() {
        let t0 = Instant::now();
        let mut t = table();
        let flood: Vec<MemberEntry> = (0..1000)
            .map(|i| entry(&format!("f{i}"), 100 + i, 1, 1))
            .collect();
        let changes = t.merge(&flood, t0, 0);
        assert_eq!(t.views(0).len(), 16, "this node and 15 members");
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, Change::Refused(_)))
                .count(),
            1000 - 15
        );
        let leaves: Vec<MemberEntry> = (0..1000)
            .map(|i| {
                let mut e = entry(&format!("g{i}"), 3000 + i, 1, 1);
                e.left = true;
                e
            })
            .collect();
        t.merge(&leaves, t0, 0);
        assert!(t.gone.len() <= 16);
        // A member that leaves frees its place for a newcomer.
        let mut bye = entry("f0", 100, 1, 2);
        bye.left = true;
        t.merge(&[bye], t0, 0);
        assert_eq!(
            t.merge(&[entry("new", 99, 1, 1)], t0, 0),
            vec![Change::Joined("new".into())]
        );
    }

    #[test]
    fn fresher_entries_win_and_count_as_heard() {
        let t0 = Instant::now();
        let mut t = table();
        assert_eq!(
            t.merge(&[entry("a", 2, 1, 5)], t0, 0),
            vec![Change::Joined("a".into())]
        );
        // Older or equal news is ignored and does not refresh liveness.
        t.merge(&[entry("a", 2, 1, 4), entry("a", 2, 1, 5)], t0 + FAIL, 0);
        assert_eq!(t.tick(t0 + FAIL), vec![Change::Unhealthy("a".into())]);
        assert_eq!(t.healthy_count(), 1);
        // Fresher news makes it alive again.
        assert_eq!(
            t.merge(&[entry("a", 2, 1, 6)], t0 + FAIL, 0),
            vec![Change::Recovered("a".into())]
        );
        assert_eq!(t.healthy_count(), 2);
        assert_eq!(t.healthy_peers()[0].id, "a");
    }

    #[test]
    fn silent_members_become_unhealthy_then_removed() {
        let t0 = Instant::now();
        let mut t = table();
        t.merge(&[entry("a", 2, 1, 1), entry("b", 3, 1, 1)], t0, 0);
        assert!(t.tick(t0 + FAIL / 2).is_empty());
        t.merge(&[entry("b", 3, 1, 2)], t0 + FAIL / 2, 0);
        assert_eq!(t.tick(t0 + FAIL), vec![Change::Unhealthy("a".into())]);
        // Unhealthy members are not gossiped on.
        assert!(t.entries().iter().all(|e| e.id != "a"));
        assert_eq!(t.views(0).len(), 3);
        let changes = t.tick(t0 + REMOVE);
        assert!(changes.contains(&Change::Removed("a".into())));
        assert!(!t.is_member("a"));
        // Stale gossip about it does not bring it back...
        assert!(t.merge(&[entry("a", 2, 1, 1)], t0 + REMOVE, 0).is_empty());
        // ...but a fresh heartbeat does (it came back without a restart).
        assert_eq!(
            t.merge(&[entry("a", 2, 1, 2)], t0 + REMOVE, 0),
            vec![Change::Joined("a".into())]
        );
    }

    #[test]
    fn a_leave_is_final_until_a_newer_generation() {
        let t0 = Instant::now();
        let mut t = table();
        t.merge(&[entry("a", 2, 7, 3)], t0, 0);
        let mut bye = entry("a", 2, 7, 4);
        bye.left = true;
        assert_eq!(t.merge(&[bye], t0, 0), vec![Change::Left("a".into())]);
        assert!(!t.is_member("a"));
        // Stale gossip from before the leave is ignored.
        assert!(t.merge(&[entry("a", 2, 7, 3)], t0, 0).is_empty());
        assert!(t.merge(&[entry("a", 2, 7, 4)], t0, 0).is_empty());
        // A restart (new generation) rejoins.
        assert_eq!(
            t.merge(&[entry("a", 2, 8, 0)], t0, 0),
            vec![Change::Joined("a".into())]
        );
    }

    #[test]
    fn duplicate_ids_are_refused_at_join() {
        let t0 = Instant::now();
        let mut t = table();
        t.merge(&[entry("a", 2, 1, 1)], t0, 0);
        // Same id, other address, while the first is alive: refused.
        let e = t.check_join(&entry("a", 9, 2, 0)).unwrap_err();
        assert!(e.0.contains("127.0.0.1:2"), "{}", e.0);
        // This node's own id: refused.
        assert!(t.check_join(&entry("me", 9, 2, 0)).is_err());
        // A restart at the same address: accepted.
        assert!(t.check_join(&entry("a", 2, 2, 0)).is_ok());
        // Once the first is unhealthy, the id may move.
        t.tick(t0 + FAIL);
        assert!(t.check_join(&entry("a", 9, 2, 0)).is_ok());
    }

    #[test]
    fn one_address_holds_one_member() {
        let t0 = Instant::now();
        let mut t = table();
        t.merge(&[entry("old", 2, 1, 1)], t0, 0);
        t.merge(&[entry("new", 2, 1, 1)], t0, 0);
        assert!(!t.is_member("old"));
        assert!(t.is_member("new"));
        // This node never lists itself twice.
        t.merge(&[entry("me", 1, 99, 99)], t0, 0);
        assert_eq!(t.views(0).iter().filter(|v| v.id == "me").count(), 1);
    }

    #[test]
    fn malformed_entries_are_ignored() {
        let mut t = table();
        let mut bad = entry("x", 2, 1, 1);
        bad.address = "nowhere".into();
        assert!(t.merge(&[bad], Instant::now(), 0).is_empty());
        let mut bad = entry("has space", 2, 1, 1);
        bad.id = "has space".into();
        assert!(t.merge(&[bad], Instant::now(), 0).is_empty());
    }
}
