//! Unit tests of `membership`.

use super::*;

const FAIL: Duration = Duration::from_secs(5);
const REMOVE: Duration = Duration::from_secs(10);

fn entry(id: &str, port: u16, gen: u64, hb: u64) -> MemberEntry {
    MemberEntry {
        id: id.into(),
        address: format!("127.0.0.1:{port}"),
        joined_timestamp: 1000 + port as u64,
        generation: gen,
        heartbeat: hb,
        suspect: false,
        left: false,
    }
}

fn doubted(id: &str, port: u16, gen: u64, hb: u64) -> MemberEntry {
    MemberEntry {
        suspect: true,
        ..entry(id, port, gen, hb)
    }
}

fn table() -> MemberTable {
    MemberTable::new(entry("me", 1, 1, 0), FAIL, REMOVE, 16)
}

#[test]
fn the_table_and_its_tombstones_are_bounded() {
    let t0 = Instant::now();
    let mut t = table();
    let flood: Vec<MemberEntry> = (0..1000)
        .map(|i| entry(&format!("f{i}"), 100 + i, 1, 1))
        .collect();
    let changes = t.merge(&flood, t0, 0);
    assert_eq!(t.views(0).len(), 16, "this node and 15 members");
    assert_eq!(
        changes
            .iter()
            .filter(|c| matches!(c, Change::Refused(_)))
            .count(),
        1000 - 15
    );
    let leaves: Vec<MemberEntry> = (0..1000)
        .map(|i| {
            let mut e = entry(&format!("g{i}"), 3000 + i, 1, 1);
            e.left = true;
            e
        })
        .collect();
    t.merge(&leaves, t0, 0);
    assert!(t.gone.len() <= 16);
    // A member that leaves frees its place for a newcomer.
    let mut bye = entry("f0", 100, 1, 2);
    bye.left = true;
    t.merge(&[bye], t0, 0);
    assert_eq!(
        t.merge(&[entry("new", 99, 1, 1)], t0, 0),
        vec![Change::Joined("new".into())]
    );
}

#[test]
fn silence_alone_changes_nothing() {
    let t0 = Instant::now();
    let mut t = table();
    t.merge(&[entry("a", 2, 1, 5)], t0, 0);
    // No news for longer than both timeouts: nothing to doubt.
    assert!(t.tick(t0 + REMOVE * 3).is_empty());
    assert_eq!(t.healthy_count(), 2);
    // Older or equal news is ignored.
    assert!(t
        .merge(&[entry("a", 2, 1, 4), entry("a", 2, 1, 5)], t0, 0)
        .is_empty());
}

#[test]
fn a_suspicion_not_refuted_makes_unhealthy_then_removed() {
    let t0 = Instant::now();
    let mut t = table();
    t.merge(&[entry("a", 2, 1, 1), entry("b", 3, 1, 1)], t0, 0);
    assert_eq!(t.suspect("a", t0), Some(Change::Suspected("a".into())));
    assert_eq!(t.suspect("a", t0), None, "already suspected");
    assert!(t.tick(t0 + FAIL / 2).is_empty());
    // A rumor of the same suspicion does not restart the clock.
    assert!(t
        .merge(&[doubted("a", 2, 1, 1)], t0 + FAIL / 2, 0)
        .is_empty());
    assert_eq!(t.tick(t0 + FAIL), vec![Change::Unhealthy("a".into())]);
    assert_eq!(t.healthy_count(), 2);
    assert_eq!(t.unhealthy_peers()[0].id, "a");
    assert_eq!(t.views(0).len(), 3);
    let changes = t.tick(t0 + REMOVE);
    assert_eq!(changes, vec![Change::Removed("a".into())]);
    assert!(!t.is_member("a"));
    assert!(t.is_healthy("b"));
    // Stale gossip about it does not bring it back...
    assert!(t.merge(&[entry("a", 2, 1, 1)], t0 + REMOVE, 0).is_empty());
    // ...its own word does, and it is told it was doubted.
    let doubt = t.doubt_about(&entry("a", 2, 1, 1)).expect("a doubt");
    assert!(doubt.suspect && doubt.heartbeat == 1);
    assert_eq!(
        t.merge_direct(&entry("a", 2, 1, 1), t0 + REMOVE, 0),
        vec![Change::Joined("a".into())]
    );
}

#[test]
fn a_suspicion_is_cleared_only_by_a_larger_heartbeat() {
    let t0 = Instant::now();
    let mut t = table();
    t.merge(&[entry("a", 2, 1, 1)], t0, 0);
    assert_eq!(
        t.merge(&[doubted("a", 2, 1, 1)], t0, 0),
        vec![Change::Suspected("a".into())]
    );
    // The member answering directly at the same heartbeat does not
    // clear it (other nodes still hold the suspicion)...
    assert!(t.merge_direct(&entry("a", 2, 1, 1), t0, 0).is_empty());
    assert!(t.suspicion_of("a").is_some());
    t.tick(t0 + FAIL);
    assert!(!t.is_healthy("a"));
    // ...its refutation does, everywhere it spreads.
    assert_eq!(
        t.merge(&[entry("a", 2, 1, 2)], t0 + FAIL, 0),
        vec![Change::Recovered("a".into())]
    );
    assert!(t.is_healthy("a"));
    assert!(t.suspicion_of("a").is_none());
    assert!(t.tick(t0 + REMOVE * 2).is_empty(), "the clock stopped");
}

#[test]
fn this_node_refutes_a_suspicion_about_itself() {
    let mut t = table();
    let d0 = t.digest();
    assert_eq!(
        t.merge(&[doubted("me", 1, 1, 0)], Instant::now(), 0),
        vec![Change::Refuted]
    );
    assert_eq!(t.me().heartbeat, 1);
    assert_ne!(t.digest(), d0);
    assert!(t
        .take_rumors(10)
        .iter()
        .any(|e| e.id == "me" && e.heartbeat == 1));
    // An older doubt, or one about a previous generation, is ignored.
    assert!(t
        .merge(&[doubted("me", 1, 1, 0)], Instant::now(), 0)
        .is_empty());
    assert!(t
        .merge(&[doubted("me", 1, 0, 9)], Instant::now(), 0)
        .is_empty());
    assert_eq!(t.me().heartbeat, 1);
}

#[test]
fn rumors_are_sent_a_bounded_number_of_times() {
    let t0 = Instant::now();
    let mut t = table();
    t.merge(&[entry("a", 2, 1, 1), entry("b", 3, 1, 1)], t0, 0);
    let mut sent = 0;
    for _ in 0..100 {
        let batch = t.take_rumors(1);
        if batch.is_empty() {
            break;
        }
        sent += batch.len();
    }
    // Two rumors, each sent 3 * log2(3) + 2 = 8 times.
    assert_eq!(sent, 2 * 8);
    assert!(t.take_rumors(10).is_empty(), "an idle table has no news");
    t.suspect("a", t0);
    let news = t.take_rumors(10);
    assert_eq!(news.len(), 1);
    assert!(news[0].suspect);
}

#[test]
fn the_digest_says_whether_two_tables_agree() {
    let t0 = Instant::now();
    let mut x = table();
    let mut y = MemberTable::new(entry("b", 3, 1, 1), FAIL, REMOVE, 16);
    x.merge(&[entry("a", 2, 1, 1), entry("b", 3, 1, 1)], t0, 0);
    y.merge(&[entry("me", 1, 1, 0), entry("a", 2, 1, 1)], t0, 0);
    assert_eq!(x.digest(), y.digest(), "same members, other order");
    y.merge(&[entry("a", 2, 1, 2)], t0, 0);
    assert_ne!(x.digest(), y.digest());
    x.merge(&y.entries(), t0, 0);
    assert_eq!(x.digest(), y.digest());
    x.suspect("a", t0);
    assert_ne!(x.digest(), y.digest());
}

#[test]
fn a_leave_is_final_until_a_newer_generation() {
    let t0 = Instant::now();
    let mut t = table();
    t.merge(&[entry("a", 2, 7, 3)], t0, 0);
    let mut bye = entry("a", 2, 7, 4);
    bye.left = true;
    assert_eq!(t.merge(&[bye], t0, 0), vec![Change::Left("a".into())]);
    assert!(!t.is_member("a"));
    // Stale gossip from before the leave is ignored.
    assert!(t.merge(&[entry("a", 2, 7, 3)], t0, 0).is_empty());
    assert!(t.merge(&[entry("a", 2, 7, 4)], t0, 0).is_empty());
    // A restart (new generation) rejoins.
    assert_eq!(
        t.merge(&[entry("a", 2, 8, 0)], t0, 0),
        vec![Change::Joined("a".into())]
    );
}

#[test]
fn duplicate_ids_are_refused_at_join() {
    let t0 = Instant::now();
    let mut t = table();
    t.merge(&[entry("a", 2, 1, 1)], t0, 0);
    // Same id, other address, while the first is alive: refused.
    let e = t.check_join(&entry("a", 9, 2, 0)).unwrap_err();
    assert!(e.0.contains("127.0.0.1:2"), "{}", e.0);
    // This node's own id: refused.
    assert!(t.check_join(&entry("me", 9, 2, 0)).is_err());
    // A restart at the same address: accepted.
    assert!(t.check_join(&entry("a", 2, 2, 0)).is_ok());
    // Once the first is unhealthy, the id may move.
    t.suspect("a", t0);
    t.tick(t0 + FAIL);
    assert!(t.check_join(&entry("a", 9, 2, 0)).is_ok());
}

#[test]
fn one_address_holds_one_member() {
    let t0 = Instant::now();
    let mut t = table();
    t.merge(&[entry("old", 2, 1, 1)], t0, 0);
    t.merge(&[entry("new", 2, 1, 1)], t0, 0);
    assert!(!t.is_member("old"));
    assert!(t.is_member("new"));
    // This node never lists itself twice.
    t.merge(&[entry("me", 1, 99, 99)], t0, 0);
    assert_eq!(t.views(0).iter().filter(|v| v.id == "me").count(), 1);
}

#[test]
fn malformed_entries_are_ignored() {
    let mut t = table();
    let mut bad = entry("x", 2, 1, 1);
    bad.address = "nowhere".into();
    assert!(t.merge(&[bad], Instant::now(), 0).is_empty());
    let mut bad = entry("has space", 2, 1, 1);
    bad.id = "has space".into();
    assert!(t.merge(&[bad], Instant::now(), 0).is_empty());
}
