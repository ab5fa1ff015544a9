//! The store's error type. Each failure says what it is: a full map, a full
//! disk, an I/O failure (with the OS's own error kept as the source), a
//! damaged record of one key, damaged database structure, a stopped writer.
//!
//! The difference that matters to the writer: [`StoreError::Damaged`]
//! belongs to the one key (and so the one op) that met it; every other
//! error belongs to the environment and fails a whole transaction.

use std::fmt;
use std::sync::Arc;

use super::version::Damage;

/// A storage failure.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The LMDB map is full (map_size_mb): the write was not made.
    MapFull,
    /// The disk under the data directory is full: the write was not made.
    NoSpace,
    /// The data directory cannot be used.
    DataDir(String),
    /// The disk failed a read or write (other than being full).
    Io(Arc<std::io::Error>),
    /// Any other LMDB failure.
    Lmdb(Arc<heed::Error>),
    /// The stored record of one key (its version, or an index entry that
    /// names it) does not decode or fails its checksum. It is logged,
    /// counted and queued for repair where it is found.
    Damaged { key: String, damage: Damage },
    /// The database structure itself (a B-tree page, the summary record)
    /// does not decode.
    Corrupt(String),
    /// The writer thread has stopped: the node is stopping.
    WriterStopped,
}

impl StoreError {
    /// True for an error that belongs to the one op that met it (a damaged
    /// record of its key): the writer sets that op aside and commits the
    /// others. Every other error is the environment's and fails the
    /// transaction.
    pub fn belongs_to_op(&self) -> bool {
        matches!(self, StoreError::Damaged { .. })
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::MapFull => write!(f, "storage is full (raise map_size_mb)"),
            StoreError::NoSpace => write!(f, "no space left on device"),
            StoreError::DataDir(m) => write!(f, "{m}"),
            StoreError::Io(e) => write!(f, "I/O error: {e}"),
            StoreError::Lmdb(e) => write!(f, "storage error: {e}"),
            StoreError::Damaged { key, damage } => {
                write!(
                    f,
                    "corrupt record: {damage} in the stored version of {key:?}"
                )
            }
            StoreError::Corrupt(m) => write!(f, "corrupt record: {m}"),
            StoreError::WriterStopped => write!(f, "the writer has stopped"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io(e) => Some(&**e),
            StoreError::Lmdb(e) => Some(&**e),
            _ => None,
        }
    }
}

/// errno values that mean the disk (or the user's quota) is full.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::MapFull,
            // The B-tree itself is damaged: that is corruption too.
            heed::Error::Mdb(
                e @ (heed::MdbError::Corrupted
                | heed::MdbError::PageNotFound
                | heed::MdbError::Invalid),
            ) => StoreError::Corrupt(format!("database structure: {e}")),
            heed::Error::Io(io) if matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT)) => {
                StoreError::NoSpace
            }
            heed::Error::Io(io) => StoreError::Io(Arc::new(io)),
            other => StoreError::Lmdb(Arc::new(other)),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(ENOSPC | EDQUOT) => StoreError::NoSpace,
            _ => StoreError::Io(Arc::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn io_errors_keep_what_the_os_said() {
        let e = StoreError::from(heed::Error::Io(std::io::Error::from_raw_os_error(5)));
        let source = e.source().expect("a source");
        assert!(source.to_string().contains("os error 5"), "{source}");
        assert!(e.to_string().contains("os error 5"), "{e}");
        assert!(matches!(
            StoreError::from(std::io::Error::from_raw_os_error(28)),
            StoreError::NoSpace
        ));
    }

    #[test]
    fn only_a_damaged_record_belongs_to_one_op() {
        let damaged = StoreError::Damaged {
            key: "k".into(),
            damage: Damage::Malformed,
        };
        assert!(damaged.belongs_to_op());
        for env in [
            StoreError::MapFull,
            StoreError::NoSpace,
            StoreError::Corrupt("page".into()),
            StoreError::WriterStopped,
        ] {
            assert!(!env.belongs_to_op(), "{env}");
        }
    }
}
