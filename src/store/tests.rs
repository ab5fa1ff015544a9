//! Unit tests of the store: versions, indexes, the summary, damage.

use super::*;

/// A store in a fresh temporary directory, removed on drop.
pub(crate) struct TempStore {
    pub store: Option<Store>,
    pub dir: std::path::PathBuf,
}

impl TempStore {
    pub(crate) fn new() -> TempStore {
        let dir = std::env::temp_dir().join(format!(
            "kvs-store-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store = Store::open(&dir, 64).unwrap();
        TempStore {
            store: Some(store),
            dir,
        }
    }

    pub(crate) fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    /// Closes and reopens the store on the same directory.
    fn reopen(&mut self) {
        drop(self.store.take());
        self.store = Some(Store::open(&self.dir, 64).unwrap());
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        drop(self.store.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_commit_index_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("kvs-index-test-{}", fastrand::u64(..)));
    {
        let store = Store::open(&dir, 64).unwrap();
        assert_eq!(store.commit_index(), 0);
        let mut txn = store.write_txn().unwrap();
        let mut touched = Touched::default();
        for (i, key) in ["x", "y"].iter().enumerate() {
            store
                .put_version(
                    &mut txn,
                    key,
                    None,
                    &version(i as u64 + 1, Some("1")),
                    &mut touched,
                )
                .unwrap();
        }
        assert_eq!(store.commit(txn, &touched).unwrap(), 2);
        // A commit that gave no key a version leaves it alone.
        let txn = store.write_txn().unwrap();
        assert_eq!(store.commit(txn, &Touched::default()).unwrap(), 2);
    }
    let store = Store::open(&dir, 64).unwrap();
    assert_eq!(store.commit_index(), 2);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

pub(crate) fn version(ts: u64, data: Option<&str>) -> Version {
    Version {
        stamp: Stamp {
            timestamp: ts,
            uuid: VersionId::new_random(),
            deleted: data.is_none(),
        },
        data: data.map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
        expires: None,
    }
}

#[test]
fn values_expire_through_the_time_index_only_while_current() {
    let dir = std::env::temp_dir().join(format!("kvs-expiry-test-{}", fastrand::u64(..)));
    let s = Store::open(&dir, 64).unwrap();
    let short = Version {
        expires: Some(2_000),
        ..version(1_000, Some("1"))
    };
    let long = Version {
        expires: Some(9_000),
        ..version(1_000, Some("2"))
    };
    let replaced = Version {
        expires: Some(1_500),
        ..version(1_000, Some("3"))
    };
    write(&s, &[("a", short.clone()), ("b", long), ("c", replaced)]);
    // c is written again without a ttl: its old expiry must not fire.
    write(&s, &[("c", version(1_100, Some("4")))]);
    assert_eq!(s.next_expiry().unwrap(), Some(1_500));
    let mut txn = s.write_txn().unwrap();
    let mut touched = Touched::default();
    assert_eq!(s.expire_in(&mut txn, 5_000, 100, &mut touched).unwrap(), 1);
    s.commit(txn, &touched).unwrap();
    assert_eq!(touched.keys, ["a"]);
    let a = s.get("a").unwrap().unwrap();
    assert_eq!(a, Version::expiry_tombstone(&short.stamp, 2_000));
    assert_eq!(s.get("c").unwrap().unwrap().data, b"4");
    assert_eq!(s.next_expiry().unwrap(), Some(9_000));
    assert!(s.verify_tree().unwrap());
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes versions the way the writer does: each replaces the current
/// one, all in one transaction.
fn write(store: &Store, versions: &[(&str, Version)]) {
    let mut txn = store.write_txn().unwrap();
    let mut touched = Touched::default();
    for (key, v) in versions {
        let old = store.stamp_in(&txn, key).unwrap();
        store
            .put_version(&mut txn, key, old.as_ref(), v, &mut touched)
            .unwrap();
    }
    store.commit(txn, &touched).unwrap();
}

#[test]
fn damaged_values_are_never_served_and_are_listed() {
    let t = TempStore::new();
    let mut bad = version(1, Some("\"x\""));
    bad.data = b"\"\xff\"".to_vec();
    write(
        t.store(),
        &[
            ("good", version(1, Some("{\"a\": 1}"))),
            ("bad", bad),
            ("gone", version(2, None)),
            ("flip", version(3, Some("\"abc\""))),
        ],
    );
    let store = t.store();
    // One bit flipped in the stored data of "flip": "abc" reads "abb".
    let mut txn = store.write_txn().unwrap();
    let mut raw = store.versions.get(&txn, b"flip").unwrap().unwrap().to_vec();
    let at = raw.len() - 2;
    raw[at] ^= 0x01;
    store.versions.put(&mut txn, b"flip", &raw).unwrap();
    txn.commit().unwrap();

    let before = store.damaged_found();
    let named = |r: Result<_>| matches!(r, Err(StoreError::Damaged { key, .. }) if key == "flip");
    assert!(named(store.get("flip").map(|_| ())));
    assert!(named(
        store.with_value("flip", |_, d, _| d.to_vec()).map(|_| ())
    ));
    assert!(named(store.list("", None, None, true, 100).map(|_| ())));
    assert!(named(store.since(0, None, 100, 1 << 20).map(|_| ())));
    // Listing keys reads stamps only, and still works.
    assert_eq!(store.list("", None, None, false, 100).unwrap().0.len(), 3);
    let after = store.damaged_found();
    assert!(after >= before + 4);

    let (damaged, unchecked) = store.damaged_values(10).unwrap();
    assert_eq!(
        damaged,
        vec![
            ("bad".to_string(), "not UTF-8 JSON".to_string()),
            ("flip".to_string(), "checksum mismatch".to_string())
        ]
    );
    assert_eq!(unchecked, 0);
    assert_eq!(store.get("good").unwrap().unwrap().data, b"{\"a\": 1}");
}

#[test]
fn versions_replace_each_other_and_tombstones_hide_values() {
    let t = TempStore::new();
    let s = t.store();
    write(
        s,
        &[
            ("a", version(10, Some("1"))),
            ("b", version(11, Some("[2]"))),
        ],
    );
    write(s, &[("a", version(20, Some("{\"x\": 3}")))]);
    assert_eq!(s.get("a").unwrap().unwrap().data, b"{\"x\": 3}");
    assert_eq!(
        s.with_value("b", |st, d, _| (st.timestamp, d.to_vec()))
            .unwrap(),
        Some((11, b"[2]".to_vec()))
    );
    write(s, &[("b", version(30, None))]);
    assert!(s.with_value("b", |_, _, _| ()).unwrap().is_none());
    assert!(s.get("b").unwrap().unwrap().stamp.deleted);
    assert_eq!(s.counts().unwrap(), (2, 1));
    assert!(s.get("missing").unwrap().is_none());
}

#[test]
fn the_time_index_pages_in_order_and_forgets_replaced_versions() {
    let t = TempStore::new();
    let s = t.store();
    for i in 0..10u64 {
        write(s, &[(&format!("k{i}"), version(100 + i, Some("1")))]);
    }
    // k3 is rewritten later: it moves to the end of the index.
    write(s, &[("k3", version(500, Some("2")))]);
    let mut seen = Vec::new();
    let mut cursor: (u64, Option<String>) = (0, None);
    loop {
        let page = s
            .since(cursor.0, cursor.1.as_deref(), 3, usize::MAX)
            .unwrap();
        assert!(page.versions.len() <= 3);
        seen.extend(
            page.versions
                .iter()
                .map(|(k, v)| (k.clone(), v.stamp.timestamp)),
        );
        match page.next {
            Some((ts, k)) => cursor = (ts, Some(k)),
            None => break,
        }
    }
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["k0", "k1", "k2", "k4", "k5", "k6", "k7", "k8", "k9", "k3"]
    );
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
    // From a timestamp on.
    let page = s.since(105, None, 100, usize::MAX).unwrap();
    assert_eq!(page.versions.first().unwrap().0, "k5");
    // The latest N, newest first.
    let latest: Vec<String> = s.latest(3).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(latest, ["k3", "k9", "k8"]);
    assert_eq!(s.newest_timestamp().unwrap(), Some(500));
    // A byte limit cuts a page but always returns something.
    let page = s.since(0, None, 100, 1).unwrap();
    assert_eq!(page.versions.len(), 1);
    assert!(page.next.is_some());
}

#[test]
fn tombstones_are_found_for_purging_and_removed_entirely() {
    let t = TempStore::new();
    let s = t.store();
    write(
        s,
        &[
            ("old", version(10, None)),
            ("new", version(1000, None)),
            ("live", version(5, Some("1"))),
        ],
    );
    let rtxn = s.read_txn().unwrap();
    let doomed = s.tombstones_before(&rtxn, 500, 10).unwrap();
    drop(rtxn);
    assert_eq!(doomed, vec![("old".to_string(), 10)]);
    let mut txn = s.write_txn().unwrap();
    let mut touched = Touched::default();
    let stamp = s.stamp_in(&txn, "old").unwrap().unwrap();
    s.remove_version(&mut txn, "old", &stamp, &mut touched)
        .unwrap();
    s.commit(txn, &touched).unwrap();
    assert!(s.get("old").unwrap().is_none());
    assert_eq!(s.counts().unwrap(), (2, 1));
    assert!(s
        .since(0, None, 10, usize::MAX)
        .unwrap()
        .versions
        .iter()
        .all(|(k, _)| k != "old"));
    assert!(s.verify_tree().unwrap());
}

#[test]
fn prefix_listing_collapses_and_pages() {
    let t = TempStore::new();
    let s = t.store();
    for k in [
        "users/ann",
        "users/bob/x",
        "users/bob/y",
        "users/carl",
        "usersx",
        "other",
    ] {
        write(s, &[(k, version(1, Some("1")))]);
    }
    write(s, &[("users/carl", version(2, None))]);
    let names = |l: Vec<Listed>| -> Vec<String> {
        l.into_iter()
            .map(|e| match e {
                Listed::Key(k, _) | Listed::Prefix(k) => k,
            })
            .collect()
    };
    let (all, more) = s.list("users/", None, None, false, 100).unwrap();
    assert_eq!(names(all), ["users/ann", "users/bob/x", "users/bob/y"]);
    assert!(!more);
    let (one_level, _) = s.list("users/", None, Some('/'), false, 100).unwrap();
    assert_eq!(names(one_level), ["users/ann", "users/bob/"]);
    let (page, more) = s.list("users/", None, None, false, 2).unwrap();
    assert_eq!(names(page), ["users/ann", "users/bob/x"]);
    assert!(more);
    let (rest, _) = s
        .list("users/", Some("users/bob/x"), None, false, 2)
        .unwrap();
    assert_eq!(names(rest), ["users/bob/y"]);
    let (after_prefix, _) = s
        .list("users/", Some("users/bob/"), Some('/'), false, 10)
        .unwrap();
    assert!(after_prefix.is_empty());
    let (everything, _) = s.list("", None, None, true, 100).unwrap();
    assert_eq!(everything.len(), 5);
    assert!(matches!(&everything[0], Listed::Key(k, Some(v)) if k == "other" && v.data == b"1"));

    // Only some prefixes visible (a scoped token): the rest is skipped,
    // pages stay full, and a common prefix shows only over a visible key.
    let visible = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let only_bob = visible(&["users/bob/y"]);
    let (bob, more) = s
        .list_visible("users/", None, None, false, 100, Some(&only_bob))
        .unwrap();
    assert_eq!(names(bob), ["users/bob/y"]);
    assert!(!more);
    let (level, _) = s
        .list_visible("", None, Some('/'), false, 100, Some(&only_bob))
        .unwrap();
    assert_eq!(names(level), ["users/"]);
    let two = visible(&["other", "users/bob/"]);
    let (page, more) = s
        .list_visible("", None, None, false, 2, Some(&two))
        .unwrap();
    assert_eq!(names(page), ["other", "users/bob/x"]);
    assert!(more);
    let (rest, more) = s
        .list_visible("", Some("users/bob/x"), None, false, 2, Some(&two))
        .unwrap();
    assert_eq!(names(rest), ["users/bob/y"]);
    assert!(!more);
    let (none, _) = s
        .list_visible("", None, None, false, 10, Some(&[]))
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn the_summary_is_kept_by_writes_persisted_and_checked() {
    let mut t = TempStore::new();
    for round in 0..3u64 {
        let batch: Vec<(String, Version)> = (0..200)
            .map(|i| {
                let data = if (i + round) % 7 == 0 {
                    None
                } else {
                    Some("{}")
                };
                (format!("key/{i}"), version(round * 1000 + i, data))
            })
            .collect();
        let refs: Vec<(&str, Version)> =
            batch.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        write(t.store(), &refs);
    }
    assert!(t.store().verify_tree().unwrap());
    let root = t.store().tree_root();
    assert_ne!(root, 0);
    t.reopen();
    assert_eq!(
        t.store().tree_root(),
        root,
        "the summary survives a restart"
    );
    assert!(t.store().verify_tree().unwrap());
    // Leaf hashes from the bucket index add up to their parent.
    let level3 = t.store().tree_children(2, &[0]).unwrap().unwrap()[0];
    for (i, parent) in level3.iter().enumerate() {
        let leaves = t.store().leaf_hashes(i).unwrap();
        assert_eq!(leaves.iter().fold(0, |a, h| a ^ h), *parent);
    }
}

#[test]
fn a_summary_in_the_previous_one_record_layout_is_split_into_chunks() {
    let mut t = TempStore::new();
    let batch: Vec<(String, Version)> = (0..300)
        .map(|i| (format!("old/{i}"), version(1000 + i, Some("{}"))))
        .collect();
    let refs: Vec<(&str, Version)> = batch.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write(t.store(), &refs);
    let root = t.store().tree_root();
    // Put the directory back into the previous layout: the whole stored
    // level in one record, format "2".
    {
        let s = t.store();
        let stored = s.tree.read().unwrap().stored().to_vec();
        let mut w = s.write_txn().unwrap();
        s.tree_db.clear(&mut w).unwrap();
        s.tree_db
            .put(&mut w, OLD_TREE_RECORD, &merkle::encode_stored(&stored))
            .unwrap();
        s.meta
            .put(&mut w, META_TREE_FORMAT.as_bytes(), OLD_TREE_FORMAT)
            .unwrap();
        w.commit().unwrap();
    }
    t.reopen();
    let s = t.store();
    assert_eq!(s.tree_root(), root, "the same summary after the split");
    assert!(
        s.verify_tree().unwrap(),
        "the chunks on disk match the memory"
    );
    let r = s.read_txn().unwrap();
    assert!(s.tree_db.get(&r, OLD_TREE_RECORD).unwrap().is_none());
    assert_eq!(
        s.meta.get(&r, META_TREE_FORMAT.as_bytes()).unwrap(),
        Some(TREE_FORMAT)
    );
    drop(r);
    // Writes go on in the new layout, and survive a restart.
    write(t.store(), &[("old/new", version(5000, Some("1")))]);
    let root = t.store().tree_root();
    t.reopen();
    assert_eq!(t.store().tree_root(), root);
    assert!(t.store().verify_tree().unwrap());
}

#[test]
fn a_summary_chunk_that_differs_from_memory_fails_the_check() {
    let t = TempStore::new();
    write(t.store(), &[("k", version(1, Some("1")))]);
    assert!(t.store().verify_tree().unwrap());
    let s = t.store();
    let mut w = s.write_txn().unwrap();
    s.tree_db.clear(&mut w).unwrap();
    w.commit().unwrap();
    assert!(!s.verify_tree().unwrap(), "a lost chunk is seen");
}

#[test]
fn two_stores_with_the_same_versions_have_the_same_summary() {
    let a = TempStore::new();
    let b = TempStore::new();
    let versions: Vec<(String, Version)> = (0..300)
        .map(|i| (format!("k{i}"), version(i, Some("1"))))
        .collect();
    for (k, v) in &versions {
        write(a.store(), &[(k.as_str(), v.clone())]);
    }
    let reversed: Vec<(&str, Version)> = versions
        .iter()
        .rev()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    write(b.store(), &reversed);
    assert_eq!(a.store().tree_root(), b.store().tree_root());
    let entries = |s: &Store| {
        s.bucket_entries(&(0..=u16::MAX).collect::<Vec<_>>(), None, 1000)
            .unwrap()
            .entries
    };
    assert_eq!(entries(a.store()), entries(b.store()));
    write(b.store(), &[("k7", version(999, Some("2")))]);
    assert_ne!(a.store().tree_root(), b.store().tree_root());
}

#[test]
fn keys_follow_the_rules() {
    assert!(check_key("users/john/profile", false).is_ok());
    assert!(check_key("users/", true).is_ok());
    assert!(check_key("users/", false).is_err());
    assert!(check_key("a//b", false).is_err());
    assert!(check_key("a/../b", false).is_err());
    assert!(check_key("tab\there", false).is_err());
    assert!(check_key(&"k".repeat(MAX_KEY_BYTES), false).is_ok());
    assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1), false).is_err());
}
