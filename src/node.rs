//! A running node's shared state: what every HTTP worker and the watch
//! threads see. The cluster threads see only `cluster::Cluster`, a part of
//! it. `daemon` builds it, starts the threads and stops them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::auth::Tokens;
use crate::cluster::{Cluster, Mode};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::writer::WriterHandle;
use crate::store::Store;
use crate::tls::Tls;
use crate::watch::Watch;

/// Everything a node owns.
pub struct Node {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    /// Recent changes and parked blocking queries.
    pub watch: Arc<Watch<Node>>,
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
    pub cluster: Arc<Cluster>,
    /// The client tokens in force (`client_tokens`, reloaded on SIGHUP).
    pub tokens: Arc<Tokens>,
    /// TLS on the port; None: plain HTTP.
    pub tls: Option<Arc<Tls>>,
    stopping: AtomicBool,
}

impl Node {
    pub fn new(
        store: Arc<Store>,
        watch: Arc<Watch<Node>>,
        writer: WriterHandle,
        cluster: Arc<Cluster>,
        tls: Option<Arc<Tls>>,
    ) -> Node {
        Node {
            tls,
            tokens: Arc::new(Tokens::new(cluster.config.client_tokens.clone())),
            config: cluster.config.clone(),
            metrics: cluster.metrics.clone(),
            store,
            watch,
            writer,
            cluster,
            stopping: AtomicBool::new(false),
        }
    }

    /// From now on client writes get 503 (the node stops).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn mode(&self) -> Mode {
        self.cluster.mode()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The `/metrics` text.
    pub fn render_metrics(&self) -> String {
        let (versions, tombstones) = self.store.counts().unwrap_or((0, 0));
        let views = self.cluster.members.views();
        let alive = views
            .iter()
            .filter(|v| v.state == crate::cluster::membership::Health::Alive)
            .count();
        let mut gauges = vec![
            (
                "kvs_commit_index",
                "Versions this node has committed, ever (X-Kvs-Index).",
                String::new(),
                self.store.commit_index() as f64,
            ),
            (
                "kvs_parked_requests",
                "Blocking queries waiting for a change.",
                String::new(),
                self.watch.parked() as f64,
            ),
            (
                "kvs_keys",
                "Keys holding a value.",
                String::new(),
                versions.saturating_sub(tombstones) as f64,
            ),
            (
                "kvs_tombstones",
                "Deleted keys kept as tombstones.",
                String::new(),
                tombstones as f64,
            ),
            (
                "kvs_unrepaired_versions",
                "Damaged versions no peer could repair yet; not served.",
                String::new(),
                self.metrics.unrepaired.load(Ordering::Relaxed) as f64,
            ),
            (
                "kvs_replication_queue_depth",
                "Versions waiting to be pushed, all peers.",
                String::new(),
                self.cluster.replicator.queue_depth() as f64,
            ),
            (
                "kvs_members",
                "Members by state, this node included.",
                "state=\"alive\"".to_string(),
                alive as f64,
            ),
            (
                "kvs_members",
                "",
                "state=\"unhealthy\"".to_string(),
                (views.len() - alive) as f64,
            ),
            (
                "kvs_syncing",
                "1 while bootstrapping.",
                String::new(),
                (self.mode() == Mode::Syncing) as u8 as f64,
            ),
        ];
        gauges.push((
            "kvs_write_acks_waiting",
            "Writes waiting for acknowledgements from peers (?w=).",
            String::new(),
            self.cluster.replicator.acks.waiting() as f64,
        ));
        if let Some(tls) = &self.tls {
            gauges.push((
                "kvs_tls_cert_expiry_timestamp_seconds",
                "When this node's TLS certificate expires (seconds since the epoch).",
                String::new(),
                tls.current().expires as f64,
            ));
        }
        self.metrics.render(&gauges, self.store.damaged_found())
    }
}
