//! Versions of a key, their on-disk encoding, and the merge rule.
//!
//! A key holds exactly one version: a value (`data`, the client's JSON bytes
//! exactly as written) or a tombstone. [`merge`] is the one place that
//! decides which of two versions of a key wins; local writes, pushes, syncs
//! and anti-entropy all go through it.

use std::fmt;

/// A 128-bit version id (a random v4 uuid), compared as bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionId(pub [u8; 16]);

impl VersionId {
    /// A fresh random (v4) id. The bytes come from a per-thread generator
    /// seeded from the OS, not from a system call per id: ids only need to
    /// be unique, and the writer makes thousands per second.
    pub fn new_random() -> VersionId {
        let bytes = fastrand::u128(..).to_le_bytes();
        VersionId(
            *uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .as_bytes(),
        )
    }

    /// Parses the hyphenated text form.
    pub fn parse(text: &str) -> Option<VersionId> {
        uuid::Uuid::parse_str(text)
            .ok()
            .map(|u| VersionId(*u.as_bytes()))
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What identifies a version without its data: enough to compare two
/// versions of a key and to hash it into the anti-entropy summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, as assigned by the node that wrote it.
    pub timestamp: u64,
    pub uuid: VersionId,
    pub deleted: bool,
}

/// One version of a key: a value or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub stamp: Stamp,
    /// The JSON document as the client sent it; empty for a tombstone.
    pub data: Vec<u8>,
}

/// Bytes of the fixed header of an encoded version.
pub const HEADER_BYTES: usize = 1 + 8 + 16 + 1;
/// Format tag of the encoding below.
const FORMAT_V1: u8 = 1;

impl Stamp {
    /// Encoded: timestamp (8, big-endian), uuid (16), deleted flag (1).
    pub fn encode(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        out[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..24].copy_from_slice(&self.uuid.0);
        out[24] = self.deleted as u8;
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Stamp> {
        if bytes.len() < 25 {
            return None;
        }
        Some(Stamp {
            timestamp: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            uuid: VersionId(bytes[8..24].try_into().ok()?),
            deleted: bytes[24] != 0,
        })
    }
}

impl Version {
    /// Encoded as: format tag (1), stamp (25), data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.data.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.stamp.encode());
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Version> {
        let stamp = decode_stamp(bytes)?;
        Some(Version {
            stamp,
            data: bytes[HEADER_BYTES..].to_vec(),
        })
    }
}

/// Reads only the stamp of an encoded version.
pub fn decode_stamp(bytes: &[u8]) -> Option<Stamp> {
    if bytes.len() < HEADER_BYTES || bytes[0] != FORMAT_V1 {
        return None;
    }
    Stamp::decode(&bytes[1..HEADER_BYTES])
}

/// The data of an encoded version, borrowed.
pub fn encoded_data(bytes: &[u8]) -> &[u8] {
    &bytes[HEADER_BYTES.min(bytes.len())..]
}

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
/// the larger uuid wins. Returns true when `a` beats `b`.
pub fn settles_over(a: &Stamp, b: &Stamp) -> bool {
    (a.timestamp, a.uuid) > (b.timestamp, b.uuid)
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

    fn stamp(ts: u64, id: u8) -> Stamp {
        Stamp {
            timestamp: ts,
            uuid: VersionId([id; 16]),
            deleted: false,
        }
    }

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

    #[test]
    fn encoding_round_trips() {
        let v = Version {
            stamp: Stamp {
                timestamp: 1_700_000_000_123,
                uuid: VersionId::new_random(),
                deleted: false,
            },
            data: br#"{"a": [1, 2]}"#.to_vec(),
        };
        let bytes = v.encode();
        assert_eq!(Version::decode(&bytes), Some(v.clone()));
        assert_eq!(decode_stamp(&bytes), Some(v.stamp));
        assert_eq!(encoded_data(&bytes), v.data.as_slice());
        assert_eq!(Version::decode(&bytes[..10]), None);
        let text = v.stamp.uuid.to_string();
        assert_eq!(VersionId::parse(&text), Some(v.stamp.uuid));
        assert_eq!(uuid::Uuid::parse_str(&text).unwrap().get_version_num(), 4);
        assert_ne!(VersionId::new_random(), VersionId::new_random());
    }
}
