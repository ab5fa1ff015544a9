//! Damage found and repaired: the scrub and the repair of damaged versions.
//!
//! Every read of a value checks its checksum (`store::version`); a version
//! that fails is never served, and its key is queued (`Store::take_damaged`).
//! This thread takes the queue about once a second and asks healthy peers,
//! in random order, for their copy of each key (`GET /internal/version`,
//! which checks its own copy before it answers). A copy that is the same
//! version or a newer one replaces the damaged one (`WriterHandle::repair`);
//! an older copy is not taken (the damaged version may hold a write the
//! peers have not seen yet). Keys that no peer could repair are tried again
//! every `RETRY_UNREPAIRED` and counted meanwhile; a standalone node keeps
//! them, refuses to serve them, and says so.
//!
//! Every `scrub_interval` the thread also walks every stored version, a
//! page of `SCRUB_PAGE` at a time with `throttle_delay_ms` between pages,
//! so damage in values nobody reads is found (and repaired) too, then
//! checks that the anti-entropy summary matches the versions (a mismatch is
//! logged and counted; rebuilding the summary is not automatic yet).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conflict::VersionReply;
use super::Cluster;
use crate::cluster::peer;

/// Versions checked per scrub page.
const SCRUB_PAGE: usize = 1000;
/// How often the repair queue is looked at.
const REPAIR_INTERVAL: Duration = Duration::from_secs(1);
/// How long a key no peer could repair waits before it is tried again.
const RETRY_UNREPAIRED: Duration = Duration::from_secs(30);
/// Keys remembered as not repaired, at most (the scrub finds others again).
const UNREPAIRED_MAX: usize = 10_000;

/// The scrub and repair thread.
pub fn scrub_loop(cluster: Arc<Cluster>) {
    let mut next_pass = Instant::now() + cluster.config.scrub_interval;
    // Some(cursor) while a pass runs.
    let mut pass: Option<Option<String>> = None;
    let (mut pass_checked, mut pass_damaged) = (0usize, 0usize);
    let mut pass_started = Instant::now();
    let mut unrepaired: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_repair = Instant::now();
    loop {
        let wait = if pass.is_some() {
            cluster.config.throttle_delay
        } else {
            REPAIR_INTERVAL.min(next_pass.saturating_duration_since(Instant::now()))
        };
        if cluster.stopper.wait(wait) {
            return;
        }
        if last_repair.elapsed() >= REPAIR_INTERVAL || pass.is_none() {
            last_repair = Instant::now();
            repair_queued(&cluster, &mut unrepaired);
        }
        if pass.is_none() && Instant::now() >= next_pass {
            pass = Some(None);
            (pass_checked, pass_damaged) = (0, 0);
            pass_started = Instant::now();
            cluster.metrics.scrub_runs.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(cursor) = pass.take() {
            match cluster.store.scrub_page(cursor.as_deref(), SCRUB_PAGE) {
                Ok((checked, damaged, next)) => {
                    pass_checked += checked;
                    pass_damaged += damaged;
                    cluster
                        .metrics
                        .scrub_checked
                        .fetch_add(checked as u64, Ordering::Relaxed);
                    if next.is_some() {
                        pass = Some(next);
                    } else {
                        // The anti-entropy summary must match the versions,
                        // or differences would go unseen.
                        let summary = match cluster.store.verify_tree() {
                            Ok(true) => "summary matches",
                            Ok(false) => {
                                cluster
                                    .metrics
                                    .summary_mismatches
                                    .fetch_add(1, Ordering::Relaxed);
                                "the anti-entropy summary DOES NOT MATCH the versions: anti-entropy may miss differences"
                            }
                            Err(e) => {
                                log::error!("scrub: checking the summary: {e}");
                                "summary not checked"
                            }
                        };
                        let say = format!(
                            "scrub: {pass_checked} versions checked in {} ms, {pass_damaged} damaged, {summary}",
                            pass_started.elapsed().as_millis()
                        );
                        if pass_damaged > 0 || summary != "summary matches" {
                            log::warn!("{say}");
                        } else {
                            log::info!("{say}");
                        }
                        next_pass = Instant::now() + cluster.config.scrub_interval;
                    }
                }
                Err(e) => {
                    log::error!("scrub: {e}; trying again at the next interval");
                    next_pass = Instant::now() + cluster.config.scrub_interval;
                }
            }
        }
    }
}

/// Tries to repair every key found damaged since the last call, and the
/// ones that failed before once their wait is over.
fn repair_queued(cluster: &Cluster, unrepaired: &mut BTreeMap<String, Instant>) {
    let now = Instant::now();
    let mut keys = cluster.store.take_damaged();
    keys.extend(
        unrepaired
            .iter()
            .filter(|(_, retry_at)| **retry_at <= now)
            .map(|(k, _)| k.clone()),
    );
    keys.sort();
    keys.dedup();
    for key in keys {
        if repair(cluster, &key) {
            unrepaired.remove(&key);
            cluster.metrics.repaired.fetch_add(1, Ordering::Relaxed);
        } else if unrepaired.len() < UNREPAIRED_MAX || unrepaired.contains_key(&key) {
            if !unrepaired.contains_key(&key) {
                log::warn!(
                    "cannot repair {key:?} yet: no healthy peer holds the same or a newer \
                     version; it stays unserved, trying again every {}s",
                    RETRY_UNREPAIRED.as_secs()
                );
            }
            unrepaired.insert(key, now + RETRY_UNREPAIRED);
        }
    }
    cluster
        .metrics
        .unrepaired
        .store(unrepaired.len() as u64, Ordering::Relaxed);
}

/// Asks healthy peers for their copy of `key` and stores the first that
/// is the same version or a newer one. True once repaired (or no longer
/// damaged).
fn repair(cluster: &Cluster, key: &str) -> bool {
    match cluster
        .store
        .read_txn()
        .and_then(|t| cluster.store.is_damaged_in(&t, key))
    {
        Ok(false) => return true,
        Ok(true) => {}
        Err(e) => {
            log::error!("repair of {key:?}: {e}");
            return false;
        }
    }
    let mut peers = cluster.members.healthy_peers();
    fastrand::shuffle(&mut peers);
    let path = format!(
        "/internal/version?key={}",
        crate::escape::percent_encode(key)
    );
    for p in &peers {
        let reply: VersionReply = match cluster.peer.get(&p.address, &path, peer::NORMAL, None) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("repair of {key:?}: {} did not answer: {e}", p.id);
                continue;
            }
        };
        let Some(wire) = reply.version else {
            continue;
        };
        let Ok((_, copy)) = wire.into_version(cluster.config.max_value_bytes) else {
            continue;
        };
        match cluster.writer.repair(key.to_string(), copy) {
            Ok(true) => {
                log::info!("repaired {key:?} with the copy held by {}", p.id);
                return true;
            }
            Ok(false) => {}
            Err(e) => {
                log::error!("repair of {key:?}: {e}");
                return false;
            }
        }
    }
    false
}
