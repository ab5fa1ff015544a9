//! The hash summary of the key space that anti-entropy compares.
//!
//! Keys fall into 65 536 leaf buckets by a hash of the key. A bucket's hash
//! is the XOR of the hashes of the versions in it (key, timestamp, uuid,
//! deleted), and every inner node of the 16-way tree above the buckets is
//! the XOR of its children. XOR makes the summary independent of write
//! order and lets a write update it in O(depth): XOR out the old version's
//! hash and XOR in the new one along one path. Two stores holding the same
//! versions have the same tree; one differing key changes exactly the nodes
//! on the path to its bucket.
//!
//! The hash functions here are part of the wire protocol: every node must
//! compute them alike, so they are written out rather than taken from std.

/// Children per inner node.
pub const FANOUT: usize = 16;
/// Levels below the root; the last one is the leaf buckets.
pub const DEPTH: usize = 4;
/// Number of leaf buckets (FANOUT ^ DEPTH).
pub const LEAVES: usize = 1 << (4 * DEPTH);

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

/// The hash of one version of a key, as summed into its bucket.
pub fn version_hash(key: &[u8], stamp_bytes: &[u8; 25]) -> u64 {
    // Never zero, so a present version always changes its bucket.
    hash_parts(&[key, stamp_bytes]) | 1
}

/// The whole tree, in memory: `levels[0]` is the root, `levels[DEPTH]` the
/// leaf buckets. About 560 KB.
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
            levels: (0..=DEPTH)
                .map(|l| vec![0u64; FANOUT.pow(l as u32)])
                .collect(),
        }
    }

    /// Builds the inner levels from leaf hashes.
    pub fn from_leaves(leaves: &[u64]) -> Tree {
        let mut tree = Tree::new();
        for (i, &h) in leaves.iter().enumerate().take(LEAVES) {
            if h != 0 {
                tree.apply(i as u16, h);
            }
        }
        tree
    }

    /// XORs `delta` into a leaf and every node above it.
    pub fn apply(&mut self, leaf: u16, delta: u64) {
        let mut index = leaf as usize;
        for level in (0..=DEPTH).rev() {
            self.levels[level][index] ^= delta;
            index /= FANOUT;
        }
    }

    pub fn root(&self) -> u64 {
        self.levels[0][0]
    }

    #[cfg(test)]
    pub fn leaf(&self, leaf: u16) -> u64 {
        self.levels[DEPTH][leaf as usize]
    }

    /// The hashes of the children of node `index` at `level` (< DEPTH), or
    /// None when there is no such node.
    pub fn children(&self, level: usize, index: usize) -> Option<[u64; FANOUT]> {
        if level >= DEPTH || index >= self.levels[level].len() {
            return None;
        }
        let first = index * FANOUT;
        let mut out = [0u64; FANOUT];
        out.copy_from_slice(&self.levels[level + 1][first..first + FANOUT]);
        Some(out)
    }
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
        let leaf = leaf_of(b"extra") as usize;
        for level in 0..=DEPTH {
            let on_path = leaf / FANOUT.pow((DEPTH - level) as u32);
            for (i, (x, y)) in a.levels[level].iter().zip(&b.levels[level]).enumerate() {
                assert_eq!(x != y, i == on_path, "level {level} node {i}");
            }
        }
        // Descending by children finds exactly that leaf.
        let mut frontier = vec![0usize];
        for level in 0..DEPTH {
            let mut next = Vec::new();
            for &n in &frontier {
                let (ca, cb) = (a.children(level, n).unwrap(), b.children(level, n).unwrap());
                next.extend(differing_children(n, &ca, &cb));
            }
            frontier = next;
        }
        assert_eq!(frontier, vec![leaf]);
    }

    #[test]
    fn from_leaves_rebuilds_the_same_tree() {
        let mut a = Tree::new();
        for i in 0..300 {
            add(&mut a, &format!("z{i}"), i);
        }
        let leaves: Vec<u64> = (0..LEAVES).map(|l| a.leaf(l as u16)).collect();
        assert_eq!(Tree::from_leaves(&leaves), a);
        assert!(a.children(DEPTH, 0).is_none());
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
