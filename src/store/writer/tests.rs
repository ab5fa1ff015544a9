//! Tests of the writer thread: group commit, conditions, batches, the
//! merge rule for remote versions, purges, and ops set aside.

use super::*;
use crate::store::tests::version;
use std::sync::Mutex;

/// What `on_changed` saw: (last index, keys) per commit.
type Commits = Vec<(u64, Vec<String>)>;

struct Harness {
    writer: WriterHandle,
    thread: Option<JoinHandle<()>>,
    store: Arc<Store>,
    local: Arc<Mutex<Vec<String>>>,
    conflicts: Arc<Mutex<Vec<ConflictFound>>>,
    commits: Arc<Mutex<usize>>,
    changed: Arc<Mutex<Commits>>,
    dir: std::path::PathBuf,
}

impl Harness {
    fn new() -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "kvs-writer-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store = Arc::new(Store::open(&dir, 64).unwrap());
        let local = Arc::new(Mutex::new(Vec::new()));
        let conflicts = Arc::new(Mutex::new(Vec::new()));
        let commits = Arc::new(Mutex::new(0));
        let changed = Arc::new(Mutex::new(Vec::new()));
        let (l, c, n, ch) = (
            local.clone(),
            conflicts.clone(),
            commits.clone(),
            changed.clone(),
        );
        let hooks = Hooks {
            on_local: Box::new(move |v| l.lock().unwrap().extend(v.iter().map(|(k, _)| k.clone()))),
            on_conflict: Box::new(move |found| c.lock().unwrap().extend(found)),
            on_commit: Box::new(move |_, _| *n.lock().unwrap() += 1),
            on_changed: Box::new(move |index, keys| {
                ch.lock().unwrap().push((index, keys.to_vec()))
            }),
        };
        let (writer, thread) = start(store.clone(), hooks).unwrap();
        Harness {
            writer,
            thread: Some(thread),
            store,
            local,
            conflicts,
            commits,
            changed,
            dir,
        }
    }

    /// A client write, waiting for its answer.
    fn client(
        &self,
        key: &str,
        data: Option<&str>,
        condition: Condition,
    ) -> std::result::Result<Written, WriteError> {
        let (tx, rx) = mpsc::channel();
        self.writer
            .submit(Op::Client {
                key: key.to_string(),
                data: data.map(|d| d.as_bytes().to_vec()),
                ttl_ms: None,
                condition,
                reply: ClientReply::new(move |r| {
                    let _ = tx.send(r);
                }),
            })
            .unwrap();
        rx.recv().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.writer.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn client_writes_commit_in_order_with_growing_timestamps() {
    let h = Harness::new();
    let a = h.client("k", Some("1"), Condition::default()).unwrap();
    let b = h.client("k", Some("2"), Condition::default()).unwrap();
    assert!(b.stamp.timestamp > a.stamp.timestamp);
    assert_eq!(h.store.get("k").unwrap().unwrap().data, b"2");
    let d = h.client("k", None, Condition::default()).unwrap();
    assert!(d.stamp.deleted && d.stamp.timestamp > b.stamp.timestamp);
    assert_eq!(*h.local.lock().unwrap(), ["k", "k", "k"]);
}

#[test]
fn metadata_goes_through_the_writer_and_gives_no_index() {
    let h = Harness::new();
    let base = h.store.commit_index();
    h.writer.meta_put("known_addresses", b"{}").unwrap();
    assert_eq!(
        h.store.meta_get("known_addresses").unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    assert_eq!(h.store.commit_index(), base, "metadata is not a version");
}

#[test]
fn every_committed_version_gets_the_next_commit_index() {
    let h = Harness::new();
    let base = h.store.commit_index();
    h.client("a", Some("1"), Condition::default()).unwrap();
    h.client("b", None, Condition::default()).unwrap();
    // A failed condition commits nothing.
    let never = Condition {
        if_match: Some(crate::store::condition::Tags::parse("\"nope\"")),
        if_none_match: None,
    };
    assert!(h.client("a", Some("2"), never).is_err());
    let report = h
        .writer
        .apply_remote(vec![("c".into(), version(5, Some("3")))])
        .unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(h.store.commit_index(), base + 3);
    let changed = h.changed.lock().unwrap().clone();
    let flat: Vec<(u64, String)> = changed
        .iter()
        .flat_map(|(last, keys)| {
            let first = last + 1 - keys.len() as u64;
            keys.iter()
                .enumerate()
                .map(move |(i, k)| (first + i as u64, k.clone()))
        })
        .collect();
    assert_eq!(
        flat,
        vec![
            (base + 1, "a".to_string()),
            (base + 2, "b".to_string()),
            (base + 3, "c".to_string())
        ]
    );
}

#[test]
fn many_concurrent_writes_share_commits_and_all_land() {
    let h = Harness::new();
    let mut waits = Vec::new();
    for i in 0..500 {
        let (tx, rx) = mpsc::channel();
        h.writer
            .submit(Op::Client {
                key: format!("c/{i}"),
                data: Some(i.to_string().into_bytes()),
                ttl_ms: None,
                condition: Condition::default(),
                reply: ClientReply::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            })
            .unwrap();
        waits.push(rx);
    }
    assert!(waits.into_iter().all(|rx| rx.recv().unwrap()));
    assert_eq!(h.store.counts().unwrap().0, 500);
    let commits = *h.commits.lock().unwrap();
    assert!(commits < 500, "{commits} commits for 500 queued writes");
    assert!(h.store.verify_tree().unwrap());
}

#[test]
fn conditions_are_checked_against_the_current_version() {
    let h = Harness::new();
    assert!(h
        .client(
            "c",
            Some("1"),
            Condition {
                if_none_match: Some(crate::store::condition::Tags::Any),
                if_match: None
            }
        )
        .is_ok());
    assert!(matches!(
        h.client(
            "c",
            Some("2"),
            Condition {
                if_none_match: Some(crate::store::condition::Tags::Any),
                if_match: None
            }
        ),
        Err(WriteError::PreconditionFailed(Some(_)))
    ));
    let current = h.store.get("c").unwrap().unwrap().stamp.uuid;
    assert!(h
        .client(
            "c",
            Some("3"),
            Condition {
                if_match: Some(crate::store::condition::Tags::List(vec![(false, current)])),
                if_none_match: None
            }
        )
        .is_ok());
    assert!(h
        .client(
            "c",
            Some("4"),
            Condition {
                if_match: Some(crate::store::condition::Tags::List(vec![(false, current)])),
                if_none_match: None
            }
        )
        .is_err());
    assert!(h
        .client(
            "gone",
            Some("1"),
            Condition {
                if_match: Some(crate::store::condition::Tags::Any),
                if_none_match: None
            }
        )
        .is_err());
    assert_eq!(h.store.get("c").unwrap().unwrap().data, b"3");
    assert!(h.store.get("gone").unwrap().is_none());
}

#[test]
fn a_batch_is_one_commit_in_order() {
    let h = Harness::new();
    // The commit hook runs after the answer: wait for it to count.
    let commits_reach = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while *h.commits.lock().unwrap() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "commit {n} never counted"
            );
            std::thread::yield_now();
        }
    };
    h.client("b/x", Some("0"), Condition::default()).unwrap();
    commits_reach(1);
    let stamps = h
        .writer
        .batch(vec![
            ("b/x".into(), Some(b"1".to_vec())),
            ("b/x".into(), Some(b"2".to_vec())),
            ("b/y".into(), Some(b"[3]".to_vec())),
            ("b/x".into(), None),
        ])
        .unwrap();
    assert_eq!(stamps.len(), 4);
    assert!(stamps[1].timestamp > stamps[0].timestamp);
    assert!(stamps[3].timestamp > stamps[1].timestamp && stamps[3].deleted);
    commits_reach(2);
    assert_eq!(*h.commits.lock().unwrap(), 2, "the batch is one commit");
    assert!(h.store.get("b/x").unwrap().unwrap().stamp.deleted);
    assert_eq!(h.store.get("b/y").unwrap().unwrap().data, b"[3]");
}

#[test]
fn delete_many_makes_tombstones_for_live_keys_only() {
    let h = Harness::new();
    for k in ["p/a", "p/b", "p/c"] {
        h.client(k, Some("1"), Condition::default()).unwrap();
    }
    h.client("p/b", None, Condition::default()).unwrap();
    h.local.lock().unwrap().clear();
    let n = h
        .writer
        .delete_many(vec![
            "p/a".into(),
            "p/b".into(),
            "p/c".into(),
            "p/none".into(),
        ])
        .unwrap();
    assert_eq!(n, 2, "p/b was already deleted, p/none never existed");
    for k in ["p/a", "p/b", "p/c"] {
        assert!(h.store.get(k).unwrap().unwrap().stamp.deleted, "{k}");
    }
    assert!(h.store.get("p/none").unwrap().is_none());
    // The new tombstones replicate like client deletes.
    assert_eq!(
        *h.local.lock().unwrap(),
        vec!["p/a".to_string(), "p/c".to_string()]
    );
}

#[test]
fn remote_versions_go_through_the_merge_rule() {
    let h = Harness::new();
    let mine = h
        .client("r", Some("\"mine\""), Condition::default())
        .unwrap();
    let ts = mine.stamp.timestamp;
    let report = h
        .writer
        .apply_remote(vec![
            ("r".into(), version(ts - 5, Some("\"older\""))),
            ("new".into(), version(7, Some("\"new\""))),
        ])
        .unwrap();
    assert_eq!(
        report,
        RemoteReport {
            applied: 1,
            ignored: 1,
            conflicts: 0
        }
    );
    assert_eq!(h.store.get("r").unwrap().unwrap().data, b"\"mine\"");
    let rival = version(ts, Some("\"rival\""));
    let report = h
        .writer
        .apply_remote(vec![("r".into(), rival.clone())])
        .unwrap();
    assert_eq!(report.conflicts, 1);
    assert_eq!(
        h.store.get("r").unwrap().unwrap().data,
        b"\"mine\"",
        "kept until resolved"
    );
    let found = h.conflicts.lock().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].incoming, rival);
    drop(found);
    // The winner replaces the local version at the same timestamp.
    assert!(h.writer.resolve("r".into(), rival.clone()).unwrap());
    assert_eq!(h.store.get("r").unwrap().unwrap(), rival);
    // Remote versions are not pushed on.
    assert_eq!(*h.local.lock().unwrap(), ["r"]);
}

#[test]
fn the_purge_removes_only_old_tombstones() {
    let h = Harness::new();
    h.writer
        .apply_remote(vec![
            ("t-old".into(), version(100, None)),
            ("t-new".into(), version(10_000, None)),
            ("v-old".into(), version(100, Some("1"))),
        ])
        .unwrap();
    assert_eq!(h.writer.purge(5_000).unwrap(), 1);
    assert!(h.store.get("t-old").unwrap().is_none());
    assert!(h.store.get("t-new").unwrap().is_some());
    assert!(h.store.get("v-old").unwrap().is_some());
    assert!(h.store.verify_tree().unwrap());
}

#[test]
fn a_purge_of_more_than_one_batch_removes_them_all() {
    let h = Harness::new();
    let n = PURGE_BATCH * 2 + 17;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let versions = chunk
            .iter()
            .map(|i| (format!("t/{i:06}"), version(100 + *i as u64, None)))
            .collect();
        h.writer.apply_remote(versions).unwrap();
    }
    h.writer
        .apply_remote(vec![("t/young".into(), version(1_000_000, None))])
        .unwrap();
    assert_eq!(h.store.counts().unwrap(), (n as u64 + 1, n as u64 + 1));
    assert_eq!(h.writer.purge(500_000).unwrap(), n);
    assert_eq!(h.store.counts().unwrap(), (1, 1), "only the young one left");
    assert!(h.store.verify_tree().unwrap());
}

/// Overwrites the first byte of the stored version of `key` (its format
/// tag) so that its stamp no longer decodes; with `lose_copy`, also
/// removes the copy of the stamp in the key's bucket entry.
fn damage_stamp(store: &Store, key: &str, lose_copy: bool) {
    let mut txn = store.write_txn().unwrap();
    let mut raw = store
        .versions
        .get(&txn, key.as_bytes())
        .unwrap()
        .unwrap()
        .to_vec();
    raw[0] = 0xEE;
    store.versions.put(&mut txn, key.as_bytes(), &raw).unwrap();
    if lose_copy {
        let k = key.as_bytes();
        let bucket = crate::store::bucket_key(crate::store::merkle::leaf_of(k), k);
        store.buckets.delete(&mut txn, &bucket).unwrap();
    }
    txn.commit().unwrap();
}

/// Submits a client PUT of every key without waiting; the answers come on
/// the returned channels, in the same order.
fn put_all(h: &Harness, keys: &[String]) -> Vec<mpsc::Receiver<WriteOutcome>> {
    keys.iter()
        .map(|key| {
            let (tx, rx) = mpsc::channel();
            h.writer
                .submit(Op::Client {
                    key: key.clone(),
                    data: Some(b"\"new\"".to_vec()),
                    ttl_ms: None,
                    condition: Condition::default(),
                    reply: ClientReply::new(move |r| {
                        let _ = tx.send(r);
                    }),
                })
                .unwrap();
            rx
        })
        .collect()
}

#[test]
fn a_write_whose_stored_version_is_lost_fails_alone_and_its_group_commits() {
    let h = Harness::new();
    h.client("bad", Some("1"), Condition::default()).unwrap();
    damage_stamp(&h.store, "bad", true);
    let commits_before = *h.commits.lock().unwrap();
    let mut keys: Vec<String> = (0..100).map(|i| format!("ok/{i:03}")).collect();
    keys.insert(50, "bad".into());
    let answers: Vec<WriteOutcome> = put_all(&h, &keys)
        .into_iter()
        .map(|rx| rx.recv().unwrap())
        .collect();
    for (key, answer) in keys.iter().zip(&answers) {
        if key == "bad" {
            assert!(
                matches!(answer, Err(WriteError::Store(StoreError::Damaged { key, .. })) if key == "bad"),
                "{answer:?}"
            );
        } else {
            assert!(answer.is_ok(), "{key}: {answer:?}");
            assert_eq!(h.store.get(key).unwrap().unwrap().data, b"\"new\"");
        }
    }
    let groups = *h.commits.lock().unwrap() - commits_before;
    assert!(groups < 101, "the writes shared groups ({groups} for 101)");
    assert!(h.store.take_damaged().contains(&"bad".to_string()));
    assert!(h.store.damaged_found() >= 1);
}

#[test]
fn a_damaged_stamp_is_read_from_its_bucket_copy_so_writes_and_pushes_replace_it() {
    let h = Harness::new();
    let first = h.client("d", Some("1"), Condition::default()).unwrap();
    damage_stamp(&h.store, "d", false);
    assert!(
        h.store.get("d").is_err(),
        "the damaged version is not served"
    );
    // A client write replaces it, newer than the stamp it had.
    let w = h.client("d", Some("2"), Condition::default()).unwrap();
    assert!(w.stamp.timestamp > first.stamp.timestamp);
    assert_eq!(h.store.get("d").unwrap().unwrap().data, b"2");
    assert_eq!(h.store.take_damaged(), ["d"], "reported for repair");
    assert!(h.store.verify_tree().unwrap());

    // A push carrying a key whose stamp is lost altogether is applied
    // (once, not retried forever), with the other versions it carries.
    h.client("e", Some("1"), Condition::default()).unwrap();
    damage_stamp(&h.store, "e", true);
    let report = h
        .writer
        .apply_remote(vec![
            ("e".into(), version(5, Some("\"peer\""))),
            ("f".into(), version(5, Some("\"f\""))),
        ])
        .unwrap();
    assert_eq!(report.applied, 2);
    assert_eq!(h.store.get("e").unwrap().unwrap().data, b"\"peer\"");
}

#[test]
fn a_client_reply_dropped_unanswered_answers_writer_stopped() {
    let (tx, rx) = mpsc::channel();
    let reply = ClientReply::new(move |r| {
        let _ = tx.send(r);
    });
    drop(reply);
    assert!(matches!(
        rx.recv().unwrap(),
        Err(WriteError::Store(StoreError::WriterStopped))
    ));
    // Answered once only.
    let (tx, rx) = mpsc::channel();
    let reply = ClientReply::new(move |r| {
        let _ = tx.send(r.is_ok());
    });
    reply.send(Ok(Written {
        stamp: version(1, Some("1")).stamp,
    }));
    assert!(rx.recv().unwrap());
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_transaction_applies_nothing_when_a_check_fails() {
    use super::{TxnAnswer, TxnKind, TxnOp, TxnResult};
    use crate::store::condition::Tags;
    use crate::store::VersionId;
    let h = Harness::new();
    let a = h.client("t/a", Some("1"), Condition::default()).unwrap();
    let at = |id| Condition {
        if_match: Some(Tags::List(vec![(false, id)])),
        if_none_match: None,
    };
    let absent = Condition {
        if_match: None,
        if_none_match: Some(Tags::Any),
    };
    let op = |key: &str, kind, condition| TxnOp {
        key: key.into(),
        kind,
        condition,
    };
    // A wrong version, then a put: the put is not applied.
    let answer = h
        .writer
        .txn(
            vec![
                op("t/b", TxnKind::Put(b"2".to_vec()), None),
                op("t/a", TxnKind::Check, Some(at(VersionId::new_random()))),
            ],
            1 << 20,
        )
        .unwrap();
    match answer {
        TxnAnswer::Failed { index, current } => {
            assert_eq!(index, 1);
            assert_eq!(current.map(|s| s.uuid), Some(a.stamp.uuid));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        h.store.get("t/b").unwrap().is_none(),
        "a failed check applied a put"
    );
    // Reads see the state before the writes; conditions hold; all in order.
    let answer = h
        .writer
        .txn(
            vec![
                op("t/a", TxnKind::Get, None),
                op("t/a", TxnKind::Put(b"3".to_vec()), Some(at(a.stamp.uuid))),
                op("t/b", TxnKind::Check, Some(absent.clone())),
                op("t/b", TxnKind::Put(b"4".to_vec()), Some(absent)),
                op("t/none", TxnKind::Get, None),
            ],
            1 << 20,
        )
        .unwrap();
    let TxnAnswer::Done(results) = answer else {
        panic!("the checks should hold")
    };
    assert!(matches!(&results[0], TxnResult::Read(Some(v)) if v.data == b"1"));
    assert!(matches!(&results[1], TxnResult::Written(s) if s.timestamp > a.stamp.timestamp));
    assert!(matches!(results[2], TxnResult::Checked));
    assert!(matches!(results[3], TxnResult::Written(_)));
    assert!(matches!(results[4], TxnResult::Read(None)));
    assert_eq!(h.store.get("t/a").unwrap().unwrap().data, b"3");
    assert_eq!(h.store.get("t/b").unwrap().unwrap().data, b"4");
    // Reads beyond the limit: refused, nothing applied.
    let answer = h
        .writer
        .txn(
            vec![
                op("t/c", TxnKind::Put(b"5".to_vec()), None),
                op("t/a", TxnKind::Get, None),
                op("t/b", TxnKind::Get, None),
            ],
            1,
        )
        .unwrap();
    assert!(
        matches!(answer, TxnAnswer::TooMuchRead { limit: 1 }),
        "{answer:?}"
    );
    assert!(h.store.get("t/c").unwrap().is_none());
}
