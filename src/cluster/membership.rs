//! The member table: who is in the cluster, and who is alive. Pure state,
//! no I/O, so every rule here is tested without sockets.
//!
//! Protocol, in prose. Every node owns one entry about itself:
//! `(id, address, joined_timestamp, generation, heartbeat, suspect, left)`.
//! The generation is fixed at process start and grows across restarts. The
//! heartbeat is the node's incarnation: it grows only when the node refutes
//! a suspicion about itself, or leaves. Merging keeps, per member, the entry
//! with the larger `(generation, heartbeat, suspect)`, so a suspicion beats
//! the alive entry it doubts, and only the member itself can beat the
//! suspicion (with a larger heartbeat).
//!
//! Liveness is found by probing, not by spreading heartbeats (SWIM): every
//! gossip exchange is a probe of its target. When a probe gets no answer,
//! the prober marks the target `suspect` and that news spreads as a rumor.
//! A member that hears it is suspected answers with a larger heartbeat,
//! which clears the suspicion everywhere. A suspicion not cleared within
//! `failure_timeout` (timed on each node's own monotonic clock, never by
//! comparing clocks) makes the member unhealthy: kept, shown, but left out
//! of votes, syncs and pushes. Within `removal_timeout` of the suspicion:
//! dropped. A leaving node sends an entry with `left` set, and peers drop it
//! at once. Nothing changes while all is well, so an idle cluster has no
//! news to spread: two nodes compare a digest of their tables and exchange
//! whole tables only when the digests differ.
//!
//! News (a new member, a suspicion, a refutation, a leave) is a rumor: it
//! rides on the next gossip exchanges, a bounded number of times (a few
//! times log2 N), which reaches every member in about log N rounds.
//!
//! Dropped and left members leave a tombstone (their last generation and
//! heartbeat) for a while, so that stale gossip from a slower peer cannot
//! bring them back. A member that really comes back has a fresher entry
//! (a new heartbeat, or a new generation after a restart) and is re-added;
//! an entry that comes straight from its member (the sender's own entry in
//! a gossip exchange or a join) is proof of life and passes the tombstone,
//! and the member is told it was doubted so that it refutes everywhere.

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
    /// The node's incarnation: grows only when it refutes a suspicion of
    /// itself or leaves (liveness comes from probes, not from this).
    pub heartbeat: u64,
    /// Some node could not reach it and doubts it is alive.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspect: bool,
    /// The node has left the cluster.
    #[serde(default)]
    pub left: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl MemberEntry {
    fn freshness(&self) -> (u64, u64) {
        (self.generation, self.heartbeat)
    }

    /// The order in which news about one member replaces older news.
    fn rank(&self) -> (u64, u64, bool) {
        (self.generation, self.heartbeat, self.suspect)
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
    /// When a fresher entry or the member itself last reached this node
    /// (this node's monotonic clock).
    heard: Instant,
    /// The same moment on the wall clock, for display.
    heard_ms: u64,
    health: Health,
    /// Since when this node has known the member as suspect.
    suspected: Option<Instant>,
}

/// Something that changed in the table, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Joined(String),
    Recovered(String),
    Unhealthy(String),
    Removed(String),
    Left(String),
    /// A probe failed, or a rumor says one did elsewhere.
    Suspected(String),
    /// This node heard it was suspected, and answered with a larger
    /// heartbeat.
    Refuted,
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
    /// News to pass on, by member id, with how many more times to send it.
    rumors: HashMap<String, (MemberEntry, u32)>,
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
            rumors: HashMap::new(),
        }
    }

    /// How many times a rumor is sent: enough to reach every member of a
    /// cluster this size with a wide margin (push-pull gossip spreads news
    /// to N members in about log2 N exchanges).
    fn transmissions(&self) -> u32 {
        let n = self.members.len() + 1;
        let log2 = usize::BITS - n.leading_zeros();
        3 * log2.max(1) + 2
    }

    /// Queues news about one member; newer news replaces older.
    fn spread(&mut self, e: &MemberEntry) {
        if self.rumors.len() >= self.max_members && !self.rumors.contains_key(&e.id) {
            return;
        }
        let times = self.transmissions();
        self.rumors.insert(e.id.clone(), (e.clone(), times));
    }

    pub fn has_rumors(&self) -> bool {
        !self.rumors.is_empty()
    }

    /// Up to `max` rumors for one gossip message, those sent least first;
    /// each is sent a bounded number of times, then forgotten.
    pub fn take_rumors(&mut self, max: usize) -> Vec<MemberEntry> {
        let mut ids: Vec<(u32, String)> = self
            .rumors
            .iter()
            .map(|(id, (_, left))| (*left, id.clone()))
            .collect();
        ids.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut out = Vec::new();
        for (_, id) in ids.into_iter().take(max) {
            if let Some((e, left)) = self.rumors.get_mut(&id) {
                out.push(e.clone());
                *left -= 1;
                if *left == 0 {
                    self.rumors.remove(&id);
                }
            }
        }
        out
    }

    /// A digest of what this node knows: every member's entry, this node's
    /// included (FNV-1a over the entries in id order). Two nodes with the
    /// same digest agree; an idle exchange sends only this.
    pub fn digest(&self) -> u64 {
        let mut entries: Vec<&MemberEntry> = self.members.values().map(|m| &m.entry).collect();
        entries.push(&self.me);
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for e in entries {
            eat(e.id.as_bytes());
            eat(&[0]);
            eat(e.address.as_bytes());
            eat(&[0]);
            eat(&e.joined_timestamp.to_le_bytes());
            eat(&e.generation.to_le_bytes());
            eat(&e.heartbeat.to_le_bytes());
            eat(&[u8::from(e.suspect), u8::from(e.left)]);
        }
        h
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

    /// Marks this node as leaving; its entry now says so.
    pub fn leave(&mut self) -> MemberEntry {
        self.me.left = true;
        self.me.heartbeat += 1;
        self.me.clone()
    }

    /// A probe of a member got no answer: suspect it, and spread that.
    pub fn suspect(&mut self, id: &str, now: Instant) -> Option<Change> {
        let m = self.members.get_mut(id)?;
        if m.entry.suspect {
            return None;
        }
        m.entry.suspect = true;
        m.suspected.get_or_insert(now);
        let e = m.entry.clone();
        self.spread(&e);
        Some(Change::Suspected(id.to_string()))
    }

    /// A member answered this node, or called it: it is alive right now
    /// (for `last_seen`; only its own larger heartbeat clears a suspicion).
    pub fn contact(&mut self, id: &str, now: Instant, now_ms: u64) {
        if let Some(m) = self.members.get_mut(id) {
            m.heard = now;
            m.heard_ms = now_ms;
        }
    }

    /// The entry this node holds against a member that says `e` about
    /// itself: a suspicion (or a removal) at least as fresh as `e`. Sent
    /// back to the member, so that it refutes with a larger heartbeat.
    pub fn doubt_about(&self, e: &MemberEntry) -> Option<MemberEntry> {
        if let Some(m) = self.members.get(&e.id) {
            if m.entry.suspect && m.entry.freshness() >= e.freshness() {
                return Some(m.entry.clone());
            }
            return None;
        }
        match self.gone.get(&e.id) {
            Some(((generation, heartbeat), _))
                if *generation == e.generation && *heartbeat >= e.heartbeat =>
            {
                Some(MemberEntry {
                    heartbeat: *heartbeat,
                    suspect: true,
                    left: false,
                    ..e.clone()
                })
            }
            _ => None,
        }
    }

    /// The suspicion this node holds about a member, if any.
    pub fn suspicion_of(&self, id: &str) -> Option<MemberEntry> {
        self.members
            .get(id)
            .filter(|m| m.entry.suspect)
            .map(|m| m.entry.clone())
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
            if let Some(c) = self.merge_one(e, false, now, now_ms) {
                changes.push(c);
            }
        }
        changes
    }

    /// Merges an entry that came straight from its member (its own entry
    /// in a gossip exchange or a join): proof of life, so a tombstone does
    /// not hold it back.
    pub fn merge_direct(&mut self, e: &MemberEntry, now: Instant, now_ms: u64) -> Vec<Change> {
        let change = self.merge_one(e, true, now, now_ms);
        self.contact(&e.id, now, now_ms);
        change.into_iter().collect()
    }

    fn merge_one(
        &mut self,
        e: &MemberEntry,
        direct: bool,
        now: Instant,
        now_ms: u64,
    ) -> Option<Change> {
        if e.validate().is_err() {
            return None;
        }
        if e.id == self.me.id {
            return self.refute(e);
        }
        if let Some((freshness, _)) = self.gone.get(&e.id) {
            let proof_of_life = direct && !e.left;
            if e.freshness() <= *freshness && !proof_of_life {
                return None;
            }
        }
        if e.left {
            self.bury(&e.id, e.freshness(), now);
            self.spread(e);
            return self
                .members
                .remove(&e.id)
                .map(|_| Change::Left(e.id.clone()));
        }
        match self.members.get_mut(&e.id) {
            Some(m) if e.rank() > m.entry.rank() => {
                m.entry = e.clone();
                let change = if e.suspect {
                    m.suspected.get_or_insert(now);
                    Some(Change::Suspected(e.id.clone()))
                } else {
                    m.heard = now;
                    m.heard_ms = now_ms;
                    m.suspected = None;
                    if m.health == Health::Unhealthy {
                        m.health = Health::Alive;
                        Some(Change::Recovered(e.id.clone()))
                    } else {
                        None
                    }
                };
                self.spread(e);
                change
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
                        suspected: e.suspect.then_some(now),
                    },
                );
                self.spread(e);
                Some(Change::Joined(e.id.clone()))
            }
        }
    }

    /// News about this node from elsewhere: a suspicion (or a leave it did
    /// not send) of its current generation is answered with a larger
    /// heartbeat, which beats the doubt wherever it spread.
    fn refute(&mut self, e: &MemberEntry) -> Option<Change> {
        if self.me.left
            || e.generation != self.me.generation
            || !(e.suspect || e.left)
            || e.heartbeat < self.me.heartbeat
        {
            return None;
        }
        self.me.heartbeat = e.heartbeat + 1;
        let me = self.me.clone();
        self.spread(&me);
        Some(Change::Refuted)
    }

    /// Applies the failure and removal timeouts to suspected members.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut removed = Vec::new();
        for (id, m) in self.members.iter_mut() {
            let Some(since) = m.suspected else { continue };
            let doubted = now.saturating_duration_since(since);
            if doubted >= self.removal_timeout {
                removed.push(id.clone());
            } else if doubted >= self.failure_timeout && m.health == Health::Alive {
                m.health = Health::Unhealthy;
                changes.push(Change::Unhealthy(id.clone()));
            }
        }
        for id in removed {
            if let Some(m) = self.members.remove(&id) {
                self.bury(&id, m.entry.freshness(), now);
                self.rumors.remove(&id);
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

    /// The whole table as entries, this node first: what a join reply and
    /// a gossip exchange between disagreeing nodes carry.
    pub fn entries(&self) -> Vec<MemberEntry> {
        let mut out = vec![self.me.clone()];
        out.extend(self.members.values().map(|m| m.entry.clone()));
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
mod tests;
