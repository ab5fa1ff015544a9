//! The member table behind its lock: what every thread shares of the
//! membership (the rules themselves, pure, are in `membership`), with a
//! log line for every change and the addresses this node may rejoin
//! through.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::membership::{Change, JoinRefused, MemberEntry, MemberTable, MemberView, Peer};
use crate::clock;

/// Known addresses kept at most (seeds and members seen; persisted).
const KNOWN_MAX: usize = 4096;

/// The member table behind its lock, with logging of every change and the
/// addresses this node may rejoin through.
///
/// Lock order: `table` and `known` are never held at the same time. Every
/// method takes one of them, copies what it needs and releases it before
/// it takes the other, so no two callers (HTTP workers serving gossip and
/// joins, the gossip thread, the writer) can wait on each other.
pub struct Members {
    table: Mutex<MemberTable>,
    /// Every address ever seen (seeds, members), with the last time a call
    /// to it succeeded (ms): where to look for the cluster when alone.
    known: Mutex<BTreeMap<String, u64>>,
    /// The last time (ms) this node heard from any peer.
    last_contact: std::sync::atomic::AtomicU64,
}

impl Members {
    pub fn new(table: MemberTable, seeds: &[String], known: BTreeMap<String, u64>) -> Members {
        let mut known = known;
        for s in seeds {
            known.entry(s.clone()).or_insert(0);
        }
        let me = table.me().address.clone();
        known.remove(&me);
        Members {
            table: Mutex::new(table),
            known: Mutex::new(known),
            last_contact: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn table(&self) -> MutexGuard<'_, MemberTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn me(&self) -> MemberEntry {
        self.table().me().clone()
    }

    pub fn healthy_peers(&self) -> Vec<Peer> {
        self.table().healthy_peers()
    }

    pub fn unhealthy_peers(&self) -> Vec<Peer> {
        self.table().unhealthy_peers()
    }

    pub fn healthy_count(&self) -> usize {
        self.table().healthy_count()
    }

    pub fn is_member(&self, id: &str) -> bool {
        self.table().is_member(id)
    }

    pub fn is_healthy(&self, id: &str) -> bool {
        self.table().is_healthy(id)
    }

    pub fn entries(&self) -> Vec<MemberEntry> {
        self.table().entries()
    }

    pub fn views(&self) -> Vec<MemberView> {
        self.table().views(clock::real_now_ms())
    }

    pub fn check_join(&self, e: &MemberEntry) -> Result<(), JoinRefused> {
        self.table().check_join(e)
    }

    /// Up to `max` rumors for one gossip message.
    pub fn take_rumors(&self, max: usize) -> Vec<MemberEntry> {
        self.table().take_rumors(max)
    }

    pub fn digest(&self) -> u64 {
        self.table().digest()
    }

    /// Whether this node has news to pass on.
    pub fn has_rumors(&self) -> bool {
        self.table().has_rumors()
    }

    /// A probe of a member got no answer.
    pub fn suspect(&self, id: &str) {
        let change = self.table().suspect(id, Instant::now());
        log_changes(change.as_slice(), &[]);
    }

    /// What this node holds against a member that says `e` about itself.
    pub fn doubt_about(&self, e: &MemberEntry) -> Option<MemberEntry> {
        self.table().doubt_about(e)
    }

    /// The suspicion this node holds about a member.
    pub fn suspicion_of(&self, id: &str) -> Option<MemberEntry> {
        self.table().suspicion_of(id)
    }

    pub fn leave(&self) -> MemberEntry {
        self.table().leave()
    }

    pub fn forget_peers(&self) {
        self.table().forget_peers()
    }

    /// Merges entries and logs what changed.
    pub fn merge(&self, entries: &[MemberEntry]) {
        let (changes, me) = {
            let mut table = self.table();
            let changes = table.merge(entries, Instant::now(), clock::real_now_ms());
            (changes, table.me().address.clone())
        };
        self.record(&changes, entries, &me);
    }

    /// Merges a member's own entry, straight from it, and logs what
    /// changed.
    pub fn merge_direct(&self, entry: &MemberEntry) {
        let (changes, me) = {
            let mut table = self.table();
            let changes = table.merge_direct(entry, Instant::now(), clock::real_now_ms());
            (changes, table.me().address.clone())
        };
        self.record(&changes, std::slice::from_ref(entry), &me);
    }

    /// Remembers the addresses of members that joined or came back, and
    /// logs every change.
    fn record(&self, changes: &[Change], entries: &[MemberEntry], me: &str) {
        let joined: Vec<&str> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Joined(id) | Change::Recovered(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        if !joined.is_empty() {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            for e in entries {
                if joined.contains(&e.id.as_str()) && known.len() < KNOWN_MAX {
                    known.insert(e.address.clone(), clock::real_now_ms());
                }
            }
            known.remove(me);
        }
        log_changes(changes, entries);
    }

    /// Applies the timeouts and logs what changed.
    pub fn tick(&self) {
        let changes = self.table().tick(Instant::now());
        log_changes(&changes, &[]);
    }

    /// Known addresses that are not current members: where to look for the
    /// cluster.
    pub fn rejoin_candidates(&self) -> Vec<String> {
        let known: Vec<String> = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let table = self.table();
        known
            .into_iter()
            .filter(|a| !table.has_address(a))
            .collect()
    }

    /// Records that a peer was heard from (a call to it or from it).
    pub fn touch(&self) {
        self.last_contact
            .fetch_max(clock::real_now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The last time (ms) a peer was heard from; 0 if never in this run.
    pub fn last_contact(&self) -> u64 {
        self.last_contact.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a successful call to an address.
    pub fn reached(&self, address: &str) {
        let me = self.table().me().address.clone();
        if me == address {
            return;
        }
        self.touch();
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_string(), clock::real_now_ms());
    }

    /// Forgets one address (it turned out to be this node).
    pub fn forget(&self, address: &str) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(address);
    }

    /// Forgets addresses unreachable for longer than `max_age` (seeds stay).
    pub fn forget_stale(&self, seeds: &[String], max_age: Duration) {
        let horizon = clock::real_now_ms().saturating_sub(max_age.as_millis() as u64);
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a, last_ok| seeds.contains(a) || *last_ok == 0 || *last_ok >= horizon);
    }

    pub fn known_addresses(&self) -> BTreeMap<String, u64> {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn log_changes(changes: &[Change], entries: &[MemberEntry]) {
    let refused: Vec<&String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Refused(id) => Some(id),
            _ => None,
        })
        .collect();
    if let Some(first) = refused.first() {
        log::warn!(
            "member table full (max_members): refused {} new member(s), {first} first",
            refused.len()
        );
    }
    for c in changes {
        match c {
            Change::Joined(id) => {
                let addr = entries
                    .iter()
                    .find(|e| &e.id == id)
                    .map(|e| e.address.as_str())
                    .unwrap_or("?");
                log::info!("member {id} joined ({addr})");
            }
            Change::Recovered(id) => log::info!("member {id} is healthy again"),
            Change::Unhealthy(id) => {
                log::warn!("member {id} is unhealthy (suspected for failure_timeout)")
            }
            Change::Removed(id) => {
                log::warn!("member {id} removed (suspected for removal_timeout)")
            }
            Change::Left(id) => log::info!("member {id} left the cluster"),
            // Debug: under a one-way network fault these repeat every round.
            Change::Suspected(id) => {
                log::debug!("member {id} is suspected (a probe of it got no answer)")
            }
            Change::Refuted => {
                log::debug!("a peer suspected this node; answered with a larger heartbeat")
            }
            Change::Refused(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn entry(id: &str, port: u16, heartbeat: u64, left: bool) -> MemberEntry {
        MemberEntry {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            joined_timestamp: 1,
            generation: 1,
            heartbeat,
            suspect: false,
            left,
        }
    }

    /// Every entry point that takes the table or the known addresses, from
    /// several threads at once: with the locks taken in opposite orders
    /// this froze within seconds; now it must finish.
    #[test]
    fn concurrent_merges_ticks_and_rejoins_never_deadlock() {
        let table = MemberTable::new(
            entry("me", 1, 0, false),
            Duration::from_millis(5),
            Duration::from_millis(10),
            1024,
        );
        let members = Arc::new(Members::new(
            table,
            &["127.0.0.1:9".into()],
            BTreeMap::new(),
        ));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let threads = 6;
        for t in 0..threads {
            let members = members.clone();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                for i in 0..3000u64 {
                    let port = 2 + (i % 50) as u16;
                    match (t, i % 4) {
                        (0, _) | (_, 0) => {
                            members.merge(&[entry(&format!("n{port}"), port, i, false)])
                        }
                        (1, _) | (_, 1) => {
                            members.merge(&[entry(&format!("n{port}"), port, i + 1, true)])
                        }
                        (2, _) | (_, 2) => {
                            members.tick();
                            members.reached(&format!("127.0.0.1:{port}"));
                            members.suspect(&format!("n{port}"));
                        }
                        _ => {
                            let _ = members.rejoin_candidates();
                            let _ = members.entries();
                            let _ = members.take_rumors(8);
                            let _ = members.digest();
                        }
                    }
                }
                let _ = done.send(());
            });
        }
        for _ in 0..threads {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the member table deadlocked");
        }
        assert!(!members.rejoin_candidates().is_empty());
    }
}
