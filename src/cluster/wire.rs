//! Versions as they travel between nodes, shared by push, sync,
//! anti-entropy and conflict votes.

use serde::{Deserialize, Serialize};

use crate::clock;
use crate::store::{check_key, Stamp, Version, VersionId};

/// Versions further in the future than this are refused from peers: a
/// lying or badly skewed peer must not pin a key forever.
pub const MAX_FUTURE_MS: u64 = 24 * 3600 * 1000;

/// What is wrong with a version a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The key breaks the key rules.
    Key(String, String),
    /// The uuid does not parse.
    Uuid(String, String),
    /// The timestamp is more than `MAX_FUTURE_MS` ahead.
    Future(String, u64),
    /// A value without data.
    NoData(String),
    /// A value over `max_value_bytes`.
    TooLarge(String),
    /// A value that is not JSON.
    NotJson(String),
    /// An expiry at or before the write.
    ExpiresEarly(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Key(k, why) => write!(f, "{k:?}: {why}"),
            WireError::Uuid(k, u) => write!(f, "{k:?}: bad uuid {u:?}"),
            WireError::Future(k, ts) => write!(f, "{k:?}: timestamp {ts} is more than a day ahead"),
            WireError::NoData(k) => write!(f, "{k:?}: a value without data"),
            WireError::TooLarge(k) => write!(f, "{k:?}: value over max_value_bytes"),
            WireError::NotJson(k) => write!(f, "{k:?}: value is not valid JSON"),
            WireError::ExpiresEarly(k) => write!(f, "{k:?}: expires before it was written"),
        }
    }
}

/// One version of a key on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVersion {
    pub key: String,
    /// The version id (hyphenated uuid).
    pub uuid: String,
    /// Milliseconds since the epoch, as written by the origin node.
    pub timestamp: u64,
    /// True for a tombstone.
    #[serde(default)]
    pub deleted: bool,
    /// The JSON document as text, byte for byte as the client wrote it;
    /// absent for a tombstone and in stamp-only listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// When the value expires (ms since the epoch), for a `PUT ?ttl=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

impl WireVersion {
    /// The version as it goes to a peer, byte for byte. `None` for a value
    /// that is not UTF-8 (stored before values were checked for it): such
    /// a value cannot travel unchanged, so it is not sent at all, rather
    /// than sent altered under the same uuid (`kvs verify` lists them).
    pub fn from_version(key: &str, v: &Version) -> Option<WireVersion> {
        let data = if v.stamp.deleted {
            None
        } else {
            match std::str::from_utf8(&v.data) {
                Ok(text) => Some(text.to_string()),
                Err(_) => {
                    log::warn!(
                        "{key:?} holds a value that is not valid UTF-8; it is not replicated \
                         (write the key again to repair it)"
                    );
                    return None;
                }
            }
        };
        Some(WireVersion {
            key: key.to_string(),
            uuid: v.stamp.uuid.to_string(),
            timestamp: v.stamp.timestamp,
            deleted: v.stamp.deleted,
            data,
            expires: v.expires.filter(|_| !v.stamp.deleted),
        })
    }

    pub fn from_stamp(key: &str, s: &Stamp) -> WireVersion {
        WireVersion {
            key: key.to_string(),
            uuid: s.uuid.to_string(),
            timestamp: s.timestamp,
            deleted: s.deleted,
            data: None,
            expires: None,
        }
    }

    /// The stamp, after checking key, uuid and timestamp.
    pub fn stamp(&self) -> Result<Stamp, WireError> {
        check_key(&self.key, false).map_err(|e| WireError::Key(self.key.clone(), e))?;
        if self.key.is_empty() {
            return Err(WireError::Key(String::new(), "empty key".into()));
        }
        let uuid = VersionId::parse(&self.uuid)
            .ok_or_else(|| WireError::Uuid(self.key.clone(), self.uuid.clone()))?;
        if self.timestamp > clock::now_ms().saturating_add(MAX_FUTURE_MS) {
            return Err(WireError::Future(self.key.clone(), self.timestamp));
        }
        Ok(Stamp {
            timestamp: self.timestamp,
            uuid,
            deleted: self.deleted,
        })
    }

    /// The full version, after checking everything a peer could get wrong:
    /// key rules, uuid, timestamp, and data (valid JSON within the limit).
    pub fn into_version(self, max_value_bytes: usize) -> Result<(String, Version), WireError> {
        let stamp = self.stamp()?;
        let data = match (stamp.deleted, self.data) {
            (true, _) => Vec::new(),
            (false, None) => return Err(WireError::NoData(self.key)),
            (false, Some(d)) => {
                if d.len() > max_value_bytes {
                    return Err(WireError::TooLarge(self.key));
                }
                if serde_json::from_str::<serde::de::IgnoredAny>(&d).is_err() {
                    return Err(WireError::NotJson(self.key));
                }
                d.into_bytes()
            }
        };
        let expires = self.expires.filter(|_| !stamp.deleted);
        if expires.is_some_and(|at| at <= stamp.timestamp) {
            return Err(WireError::ExpiresEarly(self.key));
        }
        Ok((
            self.key,
            Version {
                stamp,
                data,
                expires,
            },
        ))
    }
}

/// Checks a batch of versions from a peer; one bad version refuses all.
pub fn decode_versions(
    list: Vec<WireVersion>,
    max_value_bytes: usize,
) -> Result<Vec<(String, Version)>, WireError> {
    list.into_iter()
        .map(|w| w.into_version(max_value_bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(key: &str, data: Option<&str>) -> WireVersion {
        WireVersion {
            key: key.into(),
            uuid: VersionId::new_random().to_string(),
            timestamp: 5,
            deleted: data.is_none(),
            data: data.map(str::to_string),
            expires: None,
        }
    }

    #[test]
    fn round_trip_keeps_bytes() {
        let (k, v) = wire("a/b", Some(" {\"x\" : 1}\n"))
            .into_version(100)
            .unwrap();
        assert_eq!(k, "a/b");
        assert_eq!(v.data, b" {\"x\" : 1}\n");
        assert_eq!(
            WireVersion::from_version(&k, &v).unwrap().data.as_deref(),
            Some(" {\"x\" : 1}\n")
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_is_never_sent_altered() {
        let (k, mut v) = wire("a", Some("\"x\"")).into_version(100).unwrap();
        v.data = b"\"\xff\"".to_vec();
        assert!(WireVersion::from_version(&k, &v).is_none());
        v.stamp.deleted = true;
        assert!(WireVersion::from_version(&k, &v).is_some());
    }

    #[test]
    fn lies_are_refused() {
        assert!(wire("a/../b", Some("1")).into_version(100).is_err());
        assert!(wire("", Some("1")).into_version(100).is_err());
        assert!(wire("a", Some("{")).into_version(100).is_err());
        assert!(wire("a", Some("[1,2,3]")).into_version(3).is_err());
        let mut w = wire("a", Some("1"));
        w.deleted = false;
        w.data = None;
        assert!(w.into_version(100).is_err());
        let mut w = wire("a", Some("1"));
        w.uuid = "nope".into();
        assert!(w.into_version(100).is_err());
        let mut w = wire("a", Some("1"));
        w.timestamp = u64::MAX;
        assert!(w.into_version(100).is_err());
        assert!(wire("a", None).into_version(100).is_ok());
    }
}
