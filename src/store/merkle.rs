//! The hash summary of the key space that anti-entropy compares.
//!
//! Keys fall into 65 536 leaf buckets by a hash of the key. A bucket's hash
//! is the XOR of the hashes of the versions in it (key, timestamp, uuid,
//! deleted), and every node of the 16-way tree above the buckets is the XOR
//! of its children. XOR makes the summary independent of write order and
//! lets a write update it in O(depth): XOR out the old version's hash and
//! XOR in the new one along one path. Two stores holding the same versions
//! have the same tree; one differing key changes exactly the nodes on the
//! path to its bucket.
//!
//! Levels 0 to 3 (1 + 16 + 256 + 4096 nodes) are kept in memory and level
//! 3, in 64 records of 64 hashes (`CHUNKS`), in LMDB; the 65 536 leaf
//! hashes (level 4) are not stored: the leaves of one level-3 node are
//! computed when asked for, from the `buckets` index, which lists each
//! bucket's versions in order. So a commit rewrites the few small records
//! above the buckets it changed (one for a single write, at most 64 for a
//! large group), not one random page per written key nor the whole level.
//!
//! The hash functions here are part of the wire protocol: every node must
//! compute them alike, so they are written out rather than taken from std.

/// Children per inner node.
pub const FANOUT: usize = 16;
/// Levels below the root; the last one is the leaf buckets.
pub const DEPTH: usize = 4;
/// Number of leaf buckets (FANOUT ^ DEPTH).
pub const LEAVES: usize = 1 << (4 * DEPTH);
/// The deepest level kept in memory and on disk.
pub const STORED: usize = DEPTH - 1;
/// Nodes at the stored level.
pub const STORED_NODES: usize = 1 << (4 * STORED);

/// The stored level is kept on disk in this many records (chunks) of
/// `CHUNK_NODES` hashes (512 bytes each, several to an LMDB page), so that
/// a commit rewrites only the chunks above the buckets it changed: one
/// small record for a single write, not the whole level.
pub const CHUNKS: usize = 64;
/// Hashes per chunk.
pub const CHUNK_NODES: usize = STORED_NODES / CHUNKS;

/// The chunk holding stored node `node`.
pub fn chunk_of(node: usize) -> usize {
    node / CHUNK_NODES
}

/// The key of chunk `chunk` in the `tree` table.
pub fn chunk_key(chunk: usize) -> [u8; 3] {
    [b'c', (chunk >> 8) as u8, chunk as u8]
}

/// 64-bit FNV-1a over several byte strings, then a finalizer that spreads
/// every input bit over the output (MurmurHash3's fmix64 constants).
fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The leaf bucket of a key.
pub fn leaf_of(key: &[u8]) -> u16 {
    (hash_parts(&[b"leaf", key]) >> 48) as u16
}

/// The level-3 node above a leaf bucket.
pub fn stored_node_of(leaf: u16) -> usize {
    leaf as usize / FANOUT
}

/// The hash of one version of a key, as summed into its bucket.
pub fn version_hash(key: &[u8], stamp_bytes: &[u8; 25]) -> u64 {
    // Never zero, so a present version always changes its bucket.
    hash_parts(&[key, stamp_bytes]) | 1
}

/// Levels 0 to 3 of the tree, in memory (about 35 KB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    levels: Vec<Vec<u64>>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// The tree of an empty store.
    pub fn new() -> Tree {
        Tree {
            levels: (0..=STORED)
                .map(|l| vec![0u64; FANOUT.pow(l as u32)])
                .collect(),
        }
    }

    /// Builds the upper levels from the level-3 hashes.
    pub fn from_stored(hashes: &[u64]) -> Tree {
        let mut tree = Tree::new();
        for (i, &h) in hashes.iter().enumerate().take(STORED_NODES) {
            if h != 0 {
                tree.apply_stored(i, h);
            }
        }
        tree
    }

    /// The level-3 hashes (what is stored on disk).
    pub fn stored(&self) -> &[u64] {
        &self.levels[STORED]
    }

    /// XORs `delta` (a change of leaf bucket `leaf`) into every stored node
    /// above that leaf.
    pub fn apply(&mut self, leaf: u16, delta: u64) {
        self.apply_stored(stored_node_of(leaf), delta);
    }

    fn apply_stored(&mut self, node: usize, delta: u64) {
        let mut index = node;
        for level in (0..=STORED).rev() {
            self.levels[level][index] ^= delta;
            index /= FANOUT;
        }
    }

    pub fn root(&self) -> u64 {
        self.levels[0][0]
    }

    /// The hashes of the children of node `index` at `level` (below
    /// STORED), or None when there is no such node. Children of a level-3
    /// node are leaves: see `Store::leaf_hashes`.
    pub fn children(&self, level: usize, index: usize) -> Option<[u64; FANOUT]> {
        if level >= STORED || index >= self.levels[level].len() {
            return None;
        }
        let first = index * FANOUT;
        let mut out = [0u64; FANOUT];
        out.copy_from_slice(&self.levels[level + 1][first..first + FANOUT]);
        Some(out)
    }
}

/// Encodes the level-3 hashes as one record (big-endian u64s).
pub fn encode_stored(hashes: &[u64]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.to_be_bytes()).collect()
}

/// Decodes the level-3 record; None when it has the wrong size.
pub fn decode_stored(bytes: &[u8]) -> Option<Vec<u64>> {
    decode_hashes(bytes, STORED_NODES)
}

/// Decodes `n` big-endian hashes; None when `bytes` is not that long.
fn decode_hashes(bytes: &[u8], n: usize) -> Option<Vec<u64>> {
    if bytes.len() != n * 8 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// Decodes one chunk record; None when it has the wrong size.
pub fn decode_chunk(bytes: &[u8]) -> Option<Vec<u64>> {
    decode_hashes(bytes, CHUNK_NODES)
}

/// Positions where two children lists differ, as child node indexes of the
/// next level.
pub fn differing_children(parent: usize, local: &[u64], remote: &[u64]) -> Vec<usize> {
    local
        .iter()
        .zip(remote)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| parent * FANOUT + i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ts: u64) -> [u8; 25] {
        let mut s = [0u8; 25];
        s[..8].copy_from_slice(&ts.to_be_bytes());
        s
    }

    fn add(tree: &mut Tree, key: &str, ts: u64) {
        tree.apply(
            leaf_of(key.as_bytes()),
            version_hash(key.as_bytes(), &stamp(ts)),
        );
    }

    #[test]
    fn write_order_does_not_matter() {
        let keys: Vec<String> = (0..2000).map(|i| format!("k/{i}")).collect();
        let mut a = Tree::new();
        let mut b = Tree::new();
        for k in &keys {
            add(&mut a, k, 7);
        }
        for k in keys.iter().rev() {
            add(&mut b, k, 7);
        }
        assert_eq!(a, b);
        assert_ne!(a.root(), 0);
    }

    #[test]
    fn replacing_a_version_is_xor_out_then_in() {
        let mut a = Tree::new();
        add(&mut a, "x", 1);
        add(&mut a, "y", 1);
        let mut b = a.clone();
        // b replaces x@1 by x@2
        let leaf = leaf_of(b"x");
        b.apply(
            leaf,
            version_hash(b"x", &stamp(1)) ^ version_hash(b"x", &stamp(2)),
        );
        let mut c = Tree::new();
        add(&mut c, "y", 1);
        add(&mut c, "x", 2);
        assert_eq!(b, c);
        assert_ne!(a, b);
    }

    #[test]
    fn one_differing_key_differs_along_exactly_one_path() {
        let mut a = Tree::new();
        for i in 0..5000 {
            add(&mut a, &format!("key{i}"), 3);
        }
        let mut b = a.clone();
        add(&mut b, "extra", 9);
        let node = stored_node_of(leaf_of(b"extra"));
        for level in 0..=STORED {
            let on_path = node / FANOUT.pow((STORED - level) as u32);
            for (i, (x, y)) in a.levels[level].iter().zip(&b.levels[level]).enumerate() {
                assert_eq!(x != y, i == on_path, "level {level} node {i}");
            }
        }
        // Descending by children finds exactly that stored node.
        let mut frontier = vec![0usize];
        for level in 0..STORED {
            let mut next = Vec::new();
            for &n in &frontier {
                let (ca, cb) = (a.children(level, n).unwrap(), b.children(level, n).unwrap());
                next.extend(differing_children(n, &ca, &cb));
            }
            frontier = next;
        }
        assert_eq!(frontier, vec![node]);
    }

    #[test]
    fn the_stored_level_rebuilds_the_same_tree() {
        let mut a = Tree::new();
        for i in 0..300 {
            add(&mut a, &format!("z{i}"), i);
        }
        let bytes = encode_stored(a.stored());
        assert_eq!(bytes.len(), STORED_NODES * 8);
        assert_eq!(Tree::from_stored(&decode_stored(&bytes).unwrap()), a);
        assert!(decode_stored(&bytes[1..]).is_none());
        // The chunks together are the stored level, in order.
        let chunked: Vec<u64> = (0..CHUNKS)
            .flat_map(|c| {
                let part = &a.stored()[c * CHUNK_NODES..(c + 1) * CHUNK_NODES];
                decode_chunk(&encode_stored(part)).unwrap()
            })
            .collect();
        assert_eq!(Tree::from_stored(&chunked), a);
        assert!(decode_chunk(&encode_stored(&a.stored()[..CHUNK_NODES - 1])).is_none());
        assert_eq!(chunk_of(STORED_NODES - 1), CHUNKS - 1);
        assert_ne!(chunk_key(1), chunk_key(256));
        assert!(a.children(STORED, 0).is_none());
        assert!(a.children(0, 1).is_none());
    }

    const PINNED_LEAF: u16 = 33298;
    const PINNED_HASH: u64 = 16_792_062_167_494_028_409;

    #[test]
    fn hashes_are_stable_across_builds() {
        // Part of the wire protocol: these values must never change.
        assert_eq!(leaf_of(b"users/john/profile"), PINNED_LEAF);
        assert_eq!(version_hash(b"k", &stamp(1)), PINNED_HASH);
        assert_ne!(hash_parts(&[b"ab", b"c"]), hash_parts(&[b"a", b"bc"]));
    }
}
