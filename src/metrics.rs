//! Counters and histograms, exported at `/metrics` in the Prometheus text
//! format. Everything is a lock-free atomic, so recording costs a few
//! nanoseconds on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::auth::Failure;

/// Request routes, as labelled in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    KvGet,
    KvPut,
    KvDelete,
    KvList,
    Health,
    Members,
    Metrics,
    Internal,
    Backup,
    Other,
}

const ROUTES: [(Route, &str); 10] = [
    (Route::KvGet, "kv_get"),
    (Route::KvPut, "kv_put"),
    (Route::KvDelete, "kv_delete"),
    (Route::KvList, "kv_list"),
    (Route::Health, "health"),
    (Route::Members, "members"),
    (Route::Metrics, "metrics"),
    (Route::Internal, "internal"),
    (Route::Backup, "backup"),
    (Route::Other, "other"),
];

/// Status codes counted one by one; anything else counts as "other".
const STATUSES: [u16; 17] = [
    200, 204, 400, 401, 403, 404, 405, 408, 409, 412, 413, 500, 503, 507, 206, 304, 0,
];

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_S: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A latency histogram.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS_S.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS_S.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[BUCKETS_S.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Declares the plain counters once: each field of `Metrics` with its
/// metric name and help text; the struct, its constructor and the
/// counters' part of `/metrics` come from this list.
macro_rules! counters {
    ($($field:ident: $name:literal, $help:literal;)*) => {
        /// Every counter of the node.
        pub struct Metrics {
            requests: Vec<AtomicU64>,
            latency: Vec<Histogram>,
            pub replication_lag: Histogram,
            pub commit_duration: Histogram,
            /// Writes with `?w=`: from the local commit to the answer.
            pub ack_wait: Histogram,
            /// Damaged versions no peer could repair yet (a gauge).
            pub unrepaired: AtomicU64,
            /// Refused credentials, by `auth::Failure::ALL`.
            auth_failures: [AtomicU64; Failure::ALL.len()],
            $(#[doc = $help] pub $field: AtomicU64,)*
        }

        impl Metrics {
            pub fn new() -> Metrics {
                Metrics {
                    requests: (0..ROUTES.len() * STATUSES.len())
                        .map(|_| AtomicU64::new(0))
                        .collect(),
                    latency: (0..ROUTES.len()).map(|_| Histogram::new()).collect(),
                    replication_lag: Histogram::new(),
                    commit_duration: Histogram::new(),
                    ack_wait: Histogram::new(),
                    unrepaired: AtomicU64::new(0),
                    auth_failures: Default::default(),
                    $($field: AtomicU64::new(0),)*
                }
            }

            /// The plain counters in the Prometheus text format.
            fn render_counters(&self, out: &mut String) {
                $(counter(out, $name, $help, self.$field.load(Relaxed));)*
            }
        }
    };
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

counters! {
    summary_mismatches: "kvs_scrub_summary_mismatches_total", "Scrub passes that found the anti-entropy summary not matching the versions.";
    scrub_runs: "kvs_scrub_runs_total", "Scrub passes started (every stored version checked).";
    scrub_checked: "kvs_scrub_checked_total", "Stored versions checked by the scrub.";
    repaired: "kvs_repaired_total", "Damaged versions replaced by a peer's copy.";
    gossip_rounds: "kvs_gossip_rounds_total", "Gossip rounds run.";
    gossip_bytes: "kvs_gossip_bytes_total", "Body bytes sent and received by this node's gossip calls.";
    commits: "kvs_commits_total", "Write transactions committed.";
    committed_ops: "kvs_committed_ops_total", "Writes committed (all sources).";
    pushed_versions: "kvs_replication_pushed_versions_total", "Versions pushed to peers and acknowledged.";
    push_failures: "kvs_replication_push_failures_total", "Push requests that failed.";
    push_dropped: "kvs_replication_dropped_total", "Versions dropped from a full or failing peer queue (resent by a sync).";
    received_versions: "kvs_replication_received_versions_total", "Versions received from peers' pushes.";
    sync_runs: "kvs_sync_runs_total", "Regular syncs run.";
    catchup_runs: "kvs_catchup_runs_total", "Catch-up and bootstrap runs.";
    sync_fetched: "kvs_sync_fetched_versions_total", "Versions fetched by regular sync, catch-up, bootstrap and anti-entropy.";
    conflicts_detected: "kvs_conflicts_detected_total", "Conflicts met (equal timestamps, different uuids).";
    conflicts_resolved_vote: "kvs_conflicts_resolved_vote_total", "Conflicts settled by a vote of the members.";
    conflicts_resolved_rule: "kvs_conflicts_resolved_rule_total", "Conflicts settled by the larger-uuid rule (no vote possible, or a repeat).";
    antientropy_rounds: "kvs_antientropy_rounds_total", "Anti-entropy exchanges started.";
    antientropy_requests: "kvs_antientropy_requests_total", "Requests sent by anti-entropy exchanges.";
    antientropy_bytes: "kvs_antientropy_bytes_total", "Body bytes sent and received by anti-entropy exchanges.";
    antientropy_repaired: "kvs_antientropy_repaired_total", "Versions fetched or pushed by anti-entropy.";
    tombstones_purged: "kvs_tombstones_purged_total", "Tombstones purged after bootstrap_max_age_hours.";
    expired: "kvs_expired_total", "Values turned into tombstones at the end of their ttl.";
    acks_too_few: "kvs_write_acks_unavailable_total", "Writes refused (503) because fewer members were healthy than they asked to wait for; nothing written.";
    acks_timeout: "kvs_write_acks_timeout_total", "Writes answered 504: committed here, but not held by as many nodes as asked within write_ack_timeout.";
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn route_index(route: Route) -> usize {
    ROUTES
        .iter()
        .position(|(r, _)| *r == route)
        .unwrap_or(ROUTES.len() - 1)
}

impl Metrics {
    /// Records a request refused for its credentials.
    pub fn auth_failed(&self, why: Failure) {
        if let Some(i) = Failure::ALL.iter().position(|f| *f == why) {
            self.auth_failures[i].fetch_add(1, Relaxed);
        }
    }

    /// Records one answered request.
    pub fn observe(&self, route: Route, status: u16, elapsed: Duration) {
        let r = route_index(route);
        let s = STATUSES
            .iter()
            .position(|&c| c == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[r * STATUSES.len() + s].fetch_add(1, Relaxed);
        self.latency[r].observe(elapsed);
    }

    /// The Prometheus text; `gauges` are values read at scrape time.
    ///
    /// The /metrics text: these counters, the store's count of damaged
    /// versions met, and the gauges the node reads at the time.
    pub fn render(&self, gauges: &[(&str, &str, String, f64)], damaged_found: u64) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP kvs_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE kvs_requests_total counter\n");
        for (ri, (_, rname)) in ROUTES.iter().enumerate() {
            for (si, status) in STATUSES.iter().enumerate() {
                let n = self.requests[ri * STATUSES.len() + si].load(Relaxed);
                if n > 0 {
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "kvs_requests_total{{route=\"{rname}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP kvs_request_duration_seconds Time from routing to answer, by route.\n",
        );
        out.push_str("# TYPE kvs_request_duration_seconds histogram\n");
        for (ri, (_, rname)) in ROUTES.iter().enumerate() {
            self.latency[ri].render(
                &mut out,
                "kvs_request_duration_seconds",
                &format!("route=\"{rname}\""),
            );
        }
        self.render_counters(&mut out);
        out.push_str(
            "# HELP kvs_auth_failures_total Requests refused for their credentials, by reason.\n",
        );
        out.push_str("# TYPE kvs_auth_failures_total counter\n");
        for (i, f) in Failure::ALL.iter().enumerate() {
            let n = self.auth_failures[i].load(Relaxed);
            let _ = writeln!(
                out,
                "kvs_auth_failures_total{{reason=\"{}\"}} {n}",
                f.label()
            );
        }
        counter(
            &mut out,
            "kvs_damaged_versions_total",
            "Stored versions found damaged (checksum mismatch or undecodable) on a read or by the scrub; never served.",
            damaged_found,
        );
        out.push_str("# HELP kvs_commit_duration_seconds Write transactions: from taking a batch to having answered it (fsync included).\n");
        out.push_str("# TYPE kvs_commit_duration_seconds histogram\n");
        self.commit_duration
            .render(&mut out, "kvs_commit_duration_seconds", "");
        out.push_str("# HELP kvs_replication_lag_seconds Time from local commit to a peer's acknowledgement of the push.\n");
        out.push_str("# TYPE kvs_replication_lag_seconds histogram\n");
        self.replication_lag
            .render(&mut out, "kvs_replication_lag_seconds", "");
        out.push_str("# HELP kvs_write_ack_wait_seconds Writes with ?w= (or write_acks): from the local commit to the answer.\n");
        out.push_str("# TYPE kvs_write_ack_wait_seconds histogram\n");
        self.ack_wait
            .render(&mut out, "kvs_write_ack_wait_seconds", "");
        let mut last = "";
        for (name, help, labels, value) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            let braces = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{name}{braces} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_status() {
        let m = Metrics::new();
        m.observe(Route::KvGet, 200, Duration::from_micros(300));
        m.observe(Route::KvGet, 200, Duration::from_millis(3));
        m.observe(Route::KvPut, 418, Duration::from_millis(3));
        let text = m.render(&[("kvs_keys", "Keys.", String::new(), 5.0)], 0);
        assert!(
            text.contains("kvs_requests_total{route=\"kv_get\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("kvs_requests_total{route=\"kv_put\",status=\"other\"} 1"));
        assert!(
            text.contains("kvs_request_duration_seconds_bucket{route=\"kv_get\",le=\"0.0005\"} 1")
        );
        assert!(text.contains("kvs_request_duration_seconds_count{route=\"kv_get\"} 2"));
        assert!(text.contains("kvs_keys 5"));
    }

    #[test]
    fn every_counter_is_rendered_once_with_its_help_and_value() {
        let m = Metrics::new();
        m.expired.fetch_add(7, Relaxed);
        m.summary_mismatches.fetch_add(3, Relaxed);
        let text = m.render(&[], 0);
        assert!(text.contains("kvs_expired_total 7"), "{text}");
        assert!(text.contains("kvs_scrub_summary_mismatches_total 3"));
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        // 26 counters of the list, the damaged versions, the requests and
        // the refused credentials.
        assert_eq!(types.len(), 29, "{types:?}");
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), types.len(), "a counter rendered twice");
        for name in types
            .iter()
            .filter(|n| !["kvs_requests_total", "kvs_auth_failures_total"].contains(n))
        {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} has no value"
            );
        }
    }
}
