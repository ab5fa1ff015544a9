//! Versions of a key and their on-disk encoding (which of two versions
//! wins is `merge`).
//!
//! A key holds exactly one version: a value (`data`, the client's JSON bytes
//! exactly as written) or a tombstone.

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
    /// When the value expires (ms since the epoch; `PUT ?ttl=`): from then
    /// on it reads as absent, and every node turns it into the same
    /// tombstone ([`Version::expiry_tombstone`]).
    pub expires: Option<u64>,
}

/// Format tags. Version 1 (before checksums): tag, stamp, data. Version 2:
/// tag, stamp, CRC-32C of (key, stamp, data), data. Version 3, for a value
/// with an expiry: tag, stamp, expiry (8, big-endian), CRC-32C of (key,
/// stamp, expiry, data), data. This build writes 2 or 3; all are read;
/// version 1 cannot be checked.
const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const FORMAT_V3: u8 = 3;
/// Bytes of the fixed header of each format.
const HEADER_V1: usize = 1 + 25;
const HEADER_V2: usize = 1 + 25 + 4;
const HEADER_V3: usize = 1 + 25 + 8 + 4;

/// Why a stored version cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Too short, or an unknown format tag.
    Malformed,
    /// The checksum does not match the key, stamp and data.
    Checksum,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Checksum => write!(f, "checksum mismatch"),
            Damage::Malformed => write!(f, "record does not decode"),
        }
    }
}

/// The checksum of a version of `key`: over the key's length and bytes,
/// the encoded stamp and the data, so that a value moved to another key,
/// a changed timestamp or uuid, and a flipped data byte all show.
fn checksum(key: &[u8], stamp: &[u8], data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&(key.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc, key);
    let crc = crc32c::crc32c_append(crc, stamp);
    crc32c::crc32c_append(crc, data)
}

fn header_len(bytes: &[u8]) -> Option<usize> {
    let len = match *bytes.first()? {
        FORMAT_V1 => HEADER_V1,
        FORMAT_V2 => HEADER_V2,
        FORMAT_V3 => HEADER_V3,
        _ => return None,
    };
    (bytes.len() >= len).then_some(len)
}

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
    /// Encoded as: format tag (1), stamp (25), [expiry (8),] checksum (4,
    /// little-endian), data.
    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let stamp = self.stamp.encode();
        let mut out = Vec::with_capacity(HEADER_V3 + self.data.len());
        match self.expires {
            None => {
                out.push(FORMAT_V2);
                out.extend_from_slice(&stamp);
            }
            Some(at) => {
                out.push(FORMAT_V3);
                out.extend_from_slice(&stamp);
                out.extend_from_slice(&at.to_be_bytes());
            }
        }
        let crc = checksum(key, &out[1..], &self.data);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Decodes a stored version of `key`, checking its checksum.
    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<Version, Damage> {
        verify(key, bytes)?;
        let stamp = decode_stamp(bytes).ok_or(Damage::Malformed)?;
        Ok(Version {
            stamp,
            data: encoded_data(bytes).to_vec(),
            expires: decode_expires(bytes),
        })
    }

    /// Whether the value has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        is_expired(self.expires, now_ms)
    }

    /// The tombstone an expired value becomes, the same on every node: at
    /// the expiry time, with a uuid derived from the value's.
    pub fn expiry_tombstone(stamp: &Stamp, expires: u64) -> Version {
        let mut id = stamp.uuid.0;
        for b in id.iter_mut() {
            *b ^= 0x5a;
        }
        // An RFC 9562 version 8 (custom) uuid.
        id[6] = (id[6] & 0x0f) | 0x80;
        id[8] = (id[8] & 0x3f) | 0x80;
        Version {
            stamp: Stamp {
                timestamp: expires,
                uuid: VersionId(id),
                deleted: true,
            },
            data: Vec::new(),
            expires: None,
        }
    }
}

/// Whether a value with this expiry has expired at `now_ms`.
pub fn is_expired(expires: Option<u64>, now_ms: u64) -> bool {
    expires.is_some_and(|at| at <= now_ms)
}

/// Checks a stored version of `key` against its checksum (a version
/// written before checksums passes unchecked).
pub fn verify(key: &[u8], bytes: &[u8]) -> Result<(), Damage> {
    match header_len(bytes) {
        None => Err(Damage::Malformed),
        Some(HEADER_V1) => Ok(()),
        Some(len) => {
            let stored = u32::from_le_bytes(bytes[len - 4..len].try_into().expect("4 bytes"));
            if checksum(key, &bytes[1..len - 4], &bytes[len..]) == stored {
                Ok(())
            } else {
                Err(Damage::Checksum)
            }
        }
    }
}

/// The expiry of an encoded version, if it has one.
pub fn decode_expires(bytes: &[u8]) -> Option<u64> {
    if header_len(bytes)? != HEADER_V3 {
        return None;
    }
    Some(u64::from_be_bytes(bytes[26..34].try_into().ok()?))
}

/// Whether a stored version carries a checksum.
pub fn has_checksum(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(&FORMAT_V2) | Some(&FORMAT_V3))
}

/// Reads only the stamp of an encoded version (not checked: the checksum
/// covers the data too, and stamp-only readers do not read it).
pub fn decode_stamp(bytes: &[u8]) -> Option<Stamp> {
    header_len(bytes)?;
    Stamp::decode(&bytes[1..26])
}

/// The data of an encoded version, borrowed.
pub fn encoded_data(bytes: &[u8]) -> &[u8] {
    match header_len(bytes) {
        Some(len) => &bytes[len..],
        None => &[],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::merge::{merge, Merge};

    /// A stamp for tests: a timestamp and a uuid of 16 times `id`.
    pub(crate) fn stamp(ts: u64, id: u8) -> Stamp {
        Stamp {
            timestamp: ts,
            uuid: VersionId([id; 16]),
            deleted: false,
        }
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
            expires: None,
        };
        let bytes = v.encode(b"a/b");
        assert_eq!(Version::decode(b"a/b", &bytes), Ok(v.clone()));
        assert_eq!(decode_stamp(&bytes), Some(v.stamp));
        assert_eq!(encoded_data(&bytes), v.data.as_slice());
        assert!(has_checksum(&bytes));
        assert_eq!(
            Version::decode(b"a/b", &bytes[..10]),
            Err(Damage::Malformed)
        );
        let text = v.stamp.uuid.to_string();
        assert_eq!(VersionId::parse(&text), Some(v.stamp.uuid));
        assert_eq!(uuid::Uuid::parse_str(&text).unwrap().get_version_num(), 4);
        assert_ne!(VersionId::new_random(), VersionId::new_random());
    }

    #[test]
    fn an_expiry_travels_in_the_record_and_makes_one_tombstone() {
        let v = Version {
            stamp: stamp(1_000, 7),
            data: b"{}".to_vec(),
            expires: Some(61_000),
        };
        let bytes = v.encode(b"s/1");
        assert_eq!(bytes[0], FORMAT_V3);
        assert_eq!(Version::decode(b"s/1", &bytes), Ok(v.clone()));
        assert_eq!(decode_stamp(&bytes), Some(v.stamp));
        assert_eq!(decode_expires(&bytes), Some(61_000));
        assert_eq!(encoded_data(&bytes), b"{}");
        assert!(!v.is_expired(60_999));
        assert!(v.is_expired(61_000));
        // Without an expiry, the record is format 2 as before.
        let plain = Version {
            expires: None,
            ..v.clone()
        };
        assert_eq!(plain.encode(b"s/1")[0], FORMAT_V2);
        assert_eq!(decode_expires(&plain.encode(b"s/1")), None);
        // Every node derives the same tombstone, which beats the value.
        let a = Version::expiry_tombstone(&v.stamp, 61_000);
        let b = Version::expiry_tombstone(&v.stamp, 61_000);
        assert_eq!(a, b);
        assert!(a.stamp.deleted && a.stamp.timestamp == 61_000);
        assert_ne!(a.stamp.uuid, v.stamp.uuid);
        assert_eq!(merge(Some(&v.stamp), &a.stamp), Merge::TakeIncoming);
        let text = a.stamp.uuid.to_string();
        assert_eq!(uuid::Uuid::parse_str(&text).unwrap().get_version_num(), 8);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let v = Version {
            stamp: Stamp {
                timestamp: 1_700_000_000_123,
                uuid: VersionId::new_random(),
                deleted: false,
            },
            data: br#"{"a": [1, 2]}"#.to_vec(),
            expires: None,
        };
        let with_expiry = Version {
            expires: Some(1_700_000_060_000),
            ..v.clone()
        };
        // A flipped bit anywhere after the format tag: in the timestamp,
        // the uuid, the deleted flag, the expiry, the checksum or the data.
        for bytes in [v.encode(b"key"), with_expiry.encode(b"key")] {
            for i in 1..bytes.len() {
                for bit in 0..8 {
                    let mut damaged = bytes.clone();
                    damaged[i] ^= 1 << bit;
                    assert!(verify(b"key", &damaged).is_err(), "byte {i} bit {bit}");
                }
            }
        }
        let bytes = v.encode(b"key");
        // The same bytes under another key.
        assert_eq!(verify(b"kez", &bytes), Err(Damage::Checksum));
        assert_eq!(verify(b"key", &bytes), Ok(()));
    }

    #[test]
    fn versions_written_before_checksums_still_read() {
        let stamp = Stamp {
            timestamp: 5,
            uuid: VersionId::new_random(),
            deleted: false,
        };
        let mut old = vec![FORMAT_V1];
        old.extend_from_slice(&stamp.encode());
        old.extend_from_slice(b"[1]");
        let v = Version::decode(b"k", &old).unwrap();
        assert_eq!(v.stamp, stamp);
        assert_eq!(v.data, b"[1]");
        assert!(!has_checksum(&old));
        assert_eq!(verify(b"k", &[9, 1, 2]), Err(Damage::Malformed));
    }
}
