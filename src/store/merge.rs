//! The merge rule: which of two versions of a key wins. Every version
//! from a peer (pushes, syncs, anti-entropy, conflict winners, repairs)
//! goes through [`merge`] in the writer (`writer`, `write`); equal
//! timestamps with different uuids are a conflict, settled by a vote
//! (`cluster::conflict`) or, when none is possible, by [`rule_winner`]. A
//! local write needs no merge: it takes [`next_timestamp`].

use super::version::{Stamp, VersionId};

/// What to do with an incoming version of a key, given the local one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// The incoming version is newer (or the key is unknown here): store it.
    TakeIncoming,
    /// The local version is newer: keep it.
    KeepLocal,
    /// Both are the same version.
    Same,
    /// Equal timestamps, different versions: a conflict to resolve.
    Conflict,
}

/// The merge rule: the higher timestamp wins; equal timestamps with
/// different uuids are a conflict (resolved by `cluster::conflict`).
pub fn merge(local: Option<&Stamp>, incoming: &Stamp) -> Merge {
    let Some(local) = local else {
        return Merge::TakeIncoming;
    };
    match incoming.timestamp.cmp(&local.timestamp) {
        std::cmp::Ordering::Greater => Merge::TakeIncoming,
        std::cmp::Ordering::Less => Merge::KeepLocal,
        std::cmp::Ordering::Equal if incoming.uuid == local.uuid => Merge::Same,
        std::cmp::Ordering::Equal => Merge::Conflict,
    }
}

/// The rule every node computes alike when no vote can settle a conflict:
/// of versions with the same timestamp, the one with the larger uuid wins.
/// This is the one place it is written.
pub fn rule_winner(candidates: impl IntoIterator<Item = VersionId>) -> Option<VersionId> {
    candidates.into_iter().max()
}

/// Whether `a` beats `b`: a later timestamp, or the same one and the rule.
pub fn settles_over(a: &Stamp, b: &Stamp) -> bool {
    match a.timestamp.cmp(&b.timestamp) {
        std::cmp::Ordering::Equal => {
            a.uuid != b.uuid && rule_winner([a.uuid, b.uuid]) == Some(a.uuid)
        }
        later => later == std::cmp::Ordering::Greater,
    }
}

/// The timestamp of a new local write replacing `old`: the wall clock, or
/// one above the old version when that one is in the future (a skewed
/// peer), so a later write by a client always wins.
pub fn next_timestamp(now_ms: u64, old: Option<&Stamp>) -> u64 {
    match old {
        Some(old) if old.timestamp >= now_ms => old.timestamp.saturating_add(1),
        _ => now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::version::tests::stamp;

    #[test]
    fn higher_timestamp_wins_either_way() {
        assert_eq!(
            merge(Some(&stamp(10, 1)), &stamp(11, 0)),
            Merge::TakeIncoming
        );
        assert_eq!(merge(Some(&stamp(11, 0)), &stamp(10, 9)), Merge::KeepLocal);
        assert_eq!(merge(None, &stamp(1, 1)), Merge::TakeIncoming);
    }

    #[test]
    fn equal_timestamps_are_same_or_conflict() {
        assert_eq!(merge(Some(&stamp(10, 1)), &stamp(10, 1)), Merge::Same);
        assert_eq!(merge(Some(&stamp(10, 1)), &stamp(10, 2)), Merge::Conflict);
        let mut tomb = stamp(10, 3);
        tomb.deleted = true;
        assert_eq!(merge(Some(&stamp(10, 1)), &tomb), Merge::Conflict);
    }

    #[test]
    fn settling_is_a_total_order() {
        let a = stamp(10, 1);
        let b = stamp(10, 2);
        assert!(settles_over(&b, &a));
        assert!(!settles_over(&a, &b));
        assert!(!settles_over(&a, &a));
    }

    #[test]
    fn new_writes_move_past_future_versions() {
        assert_eq!(next_timestamp(100, None), 100);
        assert_eq!(next_timestamp(100, Some(&stamp(50, 1))), 100);
        assert_eq!(next_timestamp(100, Some(&stamp(100, 1))), 101);
        assert_eq!(next_timestamp(100, Some(&stamp(5000, 1))), 5001);
    }
}
