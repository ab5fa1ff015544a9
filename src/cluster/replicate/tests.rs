//! Unit tests of `replicate`.

use super::*;
use crate::store::{Stamp, VersionId};

use std::sync::atomic::AtomicUsize;

use crate::cluster::testing::{self, FakePeer};
use crate::store::tests::TempStore;

fn version(ts: u64) -> Version {
    Version {
        stamp: Stamp {
            timestamp: ts,
            uuid: VersionId::new_random(),
            deleted: false,
        },
        data: format!("{{\"n\":{ts}}}").into_bytes(),
        expires: None,
    }
}

/// A failed push drops its batch and marks the peer for a resend;
/// after backing off, the senders page the dropped versions out of
/// the local time index, failing again once, until the peer has them
/// all.
#[test]
fn a_failed_push_is_resent_from_the_time_index() {
    // Answers its first two pushes with a 500, then takes them.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let (seen, keys) = (Arc::new(AtomicUsize::new(0)), accepted.clone());
    let peer = FakePeer::start(Box::new(move |rq| {
        if seen.fetch_add(1, Ordering::SeqCst) < 2 {
            return (500, r#"{"error":"not now"}"#.into());
        }
        let push: PushRequest = serde_json::from_slice(&rq.body).unwrap();
        let n = push.versions.len();
        keys.lock()
            .unwrap()
            .extend(push.versions.into_iter().map(|v| v.key));
        (
            200,
            format!(r#"{{"applied":{n},"ignored":0,"conflicts":0}}"#),
        )
    }));
    let mut temp = TempStore::new();
    let store = Arc::new(temp.store.take().unwrap());
    let versions: Vec<(String, Version)> = (1..=5)
        .map(|i| (format!("k{i}"), version(1_000 + i)))
        .collect();
    store.write_versions(&versions).unwrap();
    let members = testing::members(&[("peer", &peer.address, 1)]);
    let metrics = Arc::new(Metrics::new());
    let stopper = Arc::new(Stopper::new());
    let replicator = Replicator::new(
        "me".into(),
        members,
        store,
        PeerClient::new(""),
        metrics.clone(),
        stopper.clone(),
        Duration::ZERO,
    );

    replicator.enqueue(&versions);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        got = accepted.lock().unwrap().clone();
        if got.len() >= versions.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stopper.stop();
    replicator.stop();
    got.sort();
    got.dedup();
    let want: Vec<String> = versions.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(got, want, "the peer did not get every version");
    assert!(
        peer.calls.load(Ordering::SeqCst) >= 3,
        "fewer than three calls: a push, a failed resend, a resend"
    );
    assert!(metrics.push_failures.load(Ordering::Relaxed) >= 2);
    assert!(metrics.push_dropped.load(Ordering::Relaxed) >= 5);
    assert_eq!(replicator.queue_depth(), 0);
}

fn queued(ts: u64, size: usize) -> Queued {
    in_group(ts, size, ts)
}

fn in_group(ts: u64, size: usize, group: u64) -> Queued {
    Queued {
        group,
        item: Arc::new((
            format!("k{ts}"),
            Version {
                stamp: Stamp {
                    timestamp: ts,
                    uuid: VersionId::new_random(),
                    deleted: false,
                },
                data: vec![b'1'; size],
                expires: None,
            },
        )),
        committed: Instant::now(),
    }
}

#[test]
fn queues_are_bounded_by_count_and_bytes() {
    assert!(!overflows(0, 0, 10, 100));
    assert!(overflows(QUEUE_MAX_VERSIONS - 5, 0, 10, 100));
    assert!(overflows(0, QUEUE_MAX_BYTES - 50, 1, 100));
    assert!(!overflows(QUEUE_MAX_VERSIONS - 10, 0, 10, 0));
}

#[test]
fn all_queues_together_are_bounded() {
    let totals = Totals::default();
    assert!(!totals.would_overflow(10, 100));
    totals.add(TOTAL_MAX_VERSIONS - 5, 0);
    assert!(totals.would_overflow(10, 0));
    totals.sub(TOTAL_MAX_VERSIONS - 5, 0);
    totals.add(0, TOTAL_MAX_BYTES - 50);
    assert!(totals.would_overflow(1, 100));
    assert!(!totals.would_overflow(1, 50));
}

#[test]
fn batches_respect_limits_but_always_take_one() {
    let mut items: VecDeque<Queued> = (0..2500).map(|i| queued(i, 10)).collect();
    let mut bytes = 25_000;
    let b = take_batch(&mut items, &mut bytes);
    assert_eq!(b.len(), PUSH_MAX_VERSIONS);
    assert_eq!(b[0].version().stamp.timestamp, 0);
    assert_eq!(items.len(), 1500);
    assert_eq!(bytes, 15_000);

    let mut items: VecDeque<Queued> = [queued(1, PUSH_MAX_BYTES + 1), queued(2, 5)].into();
    let mut bytes = PUSH_MAX_BYTES + 6;
    assert_eq!(take_batch(&mut items, &mut bytes).len(), 1);
    assert_eq!(take_batch(&mut items, &mut bytes).len(), 1);
    assert_eq!(bytes, 0);
    assert!(take_batch(&mut items, &mut bytes).is_empty());
}

#[test]
fn a_commit_goes_in_one_push_when_it_fits() {
    // 600 versions of one commit, then 600 of another: the second does not
    // fit beside the first and waits whole for the next push.
    let mut items: VecDeque<Queued> = (0..1200).map(|i| in_group(i, 10, i / 600)).collect();
    let mut bytes = 12_000;
    assert_eq!(take_batch(&mut items, &mut bytes).len(), 600);
    assert_eq!(take_batch(&mut items, &mut bytes).len(), 600);
    assert_eq!(bytes, 0);
    // One commit over the limit alone is split at the limit.
    let mut items: VecDeque<Queued> = (0..1500).map(|i| in_group(i, 10, 7)).collect();
    let mut bytes = 15_000;
    assert_eq!(take_batch(&mut items, &mut bytes).len(), PUSH_MAX_VERSIONS);
    assert_eq!(take_batch(&mut items, &mut bytes).len(), 500);
    // Small commits share a push.
    let mut items: VecDeque<Queued> = (0..30).map(|i| in_group(i, 10, i / 3)).collect();
    let mut bytes = 300;
    assert_eq!(take_batch(&mut items, &mut bytes).len(), 30);
}
