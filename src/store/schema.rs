//! The layout of a data directory, in one place.
//!
//! Files: `data.mdb` and `lock.mdb` (LMDB), `kvs.lock` (one process per
//! directory), `kvs.id` (says `data.mdb` once held a database; see
//! `datafile`).
//!
//! LMDB tables (all keys and values are bytes):
//!
//! | table | key | value |
//! |---|---|---|
//! | `versions` | key | the version record (`version::Version::encode`: format, stamp, expiry (format 3), CRC-32C, data) |
//! | `by_time` | timestamp (8, big-endian) + key | empty: the time index, for syncs and catch-up |
//! | `tombs` | timestamp + key | empty: tombstones, oldest first, for the purge |
//! | `buckets` | leaf (2, big-endian) + key | the stamp: the anti-entropy buckets |
//! | `tree` | `level3` | the summary tree's stored level (`merkle`) |
//! | `expiry` | expiry (8, big-endian) + key | the uuid of the value that expires then |
//! | `meta` | a name below | per name |
//!
//! Meta entries: the names below, and nothing else.

/// This node's commit index (8 bytes, big-endian).
pub const COMMIT_INDEX: &str = "commit_index";
/// The summary layout written (`"2"`); missing: rebuild the summary.
pub const TREE_FORMAT: &str = "tree_format";
/// The `node_id` that last used the directory (text).
pub const NODE_ID: &str = "node_id";
/// When the node first joined a cluster (ms, decimal text); kept forever.
pub const JOINED: &str = "joined_timestamp";
/// The generation of the last start (ms, decimal text); grows every start.
pub const GENERATION: &str = "generation";
/// The last time (ms) this node heard from a peer (decimal text).
pub const LAST_CONTACT: &str = "last_contact";
/// The addresses this node has known, with when each last answered (JSON).
pub const KNOWN_ADDRESSES: &str = "known_addresses";
/// `"1"` while a bootstrap runs; `"0"` once it is done.
pub const BOOTSTRAP_PENDING: &str = "bootstrap_pending";
/// Present once a bootstrap completed.
pub const BOOTSTRAPPED: &str = "bootstrapped";

/// Metadata that belongs to the node that wrote a data directory rather
/// than to its data: a restored backup drops it, so that the node started
/// on it is a new member (its own id, age and peers).
pub const IDENTITY: [&str; 6] = [
    NODE_ID,
    JOINED,
    GENERATION,
    LAST_CONTACT,
    KNOWN_ADDRESSES,
    BOOTSTRAP_PENDING,
];
