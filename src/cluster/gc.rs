//! "A deleted key never comes back", in one place.
//!
//! A delete leaves a tombstone, which replicates like a value, so that an
//! older copy elsewhere cannot bring the key back. Tombstones do not live
//! forever: after `bootstrap_max_age_hours` the purge removes them. That
//! leaves one way back for a deleted key: a node that was away longer than
//! that still holds the old value, and its peers no longer hold the
//! tombstone that would beat it. So such a node starts *reconciling*:
//!
//! - it hands out no versions (the internal endpoints that do answer
//!   `503`, see `http::internal`) and pushes none by anti-entropy;
//! - anti-entropy runs with *witnesses* only: peers that were members
//!   before this node went away, so that a key they lack was deleted
//!   rather than never seen; a key this node has, older than the purge
//!   horizon and missing on the witness, is dropped here instead of pushed
//!   (`antientropy::plan`);
//! - one completed exchange ends it.
//!
//! Horizons use the real clock (`clock::real_now_ms`), never the frozen
//! test clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::membership::Peer;
use super::Cluster;
use crate::clock;

/// Whether this node is reconciling after a long absence, and since when
/// it had been away.
pub struct Reconcile {
    active: AtomicBool,
    /// The last time (ms) this node had heard from a peer before it went
    /// away (0 when not reconciling).
    last_contact: u64,
    /// `bootstrap_max_age_hours` in ms: tombstones older than this are
    /// purged.
    purge_age_ms: u64,
}

impl Reconcile {
    /// Decides at start: a node with data that has not heard from a peer
    /// for longer than the tombstones live reconciles (a node that
    /// bootstraps fetches everything anyway).
    pub fn at_start(
        syncing: bool,
        versions: u64,
        last_contact: Option<u64>,
        purge_age: Duration,
    ) -> Reconcile {
        let purge_age_ms = purge_age.as_millis() as u64;
        let away = last_contact.map(|t| clock::real_now_ms().saturating_sub(t));
        let active = !syncing && versions > 0 && away.is_some_and(|a| a > purge_age_ms);
        if active {
            log::warn!(
                "this node has not heard from a peer since {} ms ago, longer than \
                 bootstrap_max_age_hours: its old keys are checked against a peer (keys \
                 deleted meanwhile are dropped) before it serves anti-entropy",
                away.unwrap_or(0)
            );
        }
        Reconcile {
            active: AtomicBool::new(active),
            last_contact: if active { last_contact.unwrap_or(0) } else { 0 },
            purge_age_ms,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// While reconciling: when this node last heard from a peer (ms).
    pub fn last_contact(&self) -> u64 {
        self.last_contact
    }

    /// While reconciling: the purge horizon, below which a key the peers
    /// lack was deleted (anti-entropy drops it here instead of pushing it).
    pub fn horizon(&self) -> Option<u64> {
        self.is_active()
            .then(|| clock::real_now_ms().saturating_sub(self.purge_age_ms))
    }

    /// One exchange with a witness completed.
    pub fn done(&self) {
        self.active.store(false, Ordering::Relaxed);
    }
}

/// The peers a node back from a long absence may reconcile with: those
/// that were members already before it went away (joined before its last
/// contact), so that a key they lack was deleted, not never seen. A node
/// restored from an old copy into a newer cluster finds none, and then
/// keeps its data (after removal_timeout, in case one is just slow to show).
pub fn witnesses(peers: Vec<Peer>, absent_since: u64) -> Vec<Peer> {
    peers
        .into_iter()
        .filter(|p| p.joined_timestamp < absent_since)
        .collect()
}

/// Removes tombstones older than `bootstrap_max_age_hours`.
pub fn purge(cluster: &Cluster) {
    let horizon =
        clock::real_now_ms().saturating_sub(cluster.config.bootstrap_max_age.as_millis() as u64);
    match cluster.writer.purge(horizon) {
        Ok(0) => {}
        Ok(n) => {
            cluster
                .metrics
                .tombstones_purged
                .fetch_add(n as u64, Ordering::Relaxed);
            log::info!("purged {n} tombstones older than bootstrap_max_age_hours");
        }
        Err(e) => log::warn!("tombstone purge failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_members_older_than_the_absence_vouch_for_deletes() {
        let peer = |id: &str, joined| Peer {
            id: id.into(),
            address: "127.0.0.1:1".into(),
            joined_timestamp: joined,
        };
        let peers = vec![peer("old", 100), peer("new", 900)];
        let w = witnesses(peers.clone(), 500);
        assert_eq!(w, vec![peer("old", 100)]);
        assert!(witnesses(vec![peer("new", 900)], 500).is_empty());
    }

    #[test]
    fn only_a_node_with_data_away_longer_than_the_tombstones_reconciles() {
        let day = Duration::from_secs(86_400);
        let now = clock::real_now_ms();
        let away = now - 2 * 86_400_000;
        let long_ago = Some(away);
        let recently = Some(now - 1_000);
        let r = Reconcile::at_start(false, 10, long_ago, day);
        assert!(r.is_active());
        assert_eq!(r.last_contact(), away);
        let h = r.horizon().unwrap();
        assert!(h <= clock::real_now_ms() - 86_400_000 && h + 60_000 > now - 86_400_000);
        r.done();
        assert!(!r.is_active() && r.horizon().is_none());
        assert!(!Reconcile::at_start(false, 10, recently, day).is_active());
        assert!(
            !Reconcile::at_start(false, 0, long_ago, day).is_active(),
            "no data"
        );
        assert!(
            !Reconcile::at_start(true, 10, long_ago, day).is_active(),
            "bootstrapping"
        );
        assert!(
            !Reconcile::at_start(false, 10, None, day).is_active(),
            "never met a peer"
        );
    }
}
