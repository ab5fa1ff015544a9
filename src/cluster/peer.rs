//! Calls to other nodes: one shared ureq agent with explicit timeouts, JSON
//! in and out, and the cluster secret on every call.
//!
//! A peer is never trusted: replies are size-limited and parsed into typed
//! structs, and every failure (refused, timed out, a 4xx/5xx, a malformed
//! reply) comes back as a [`ClusterError`] that callers log and move past.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::Agent;

use super::ClusterError;

/// Header carrying the cluster secret on internal calls.
pub const SECRET_HEADER: &str = "X-Kvs-Cluster-Secret";

/// Time to open a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest reply accepted from a peer.
const MAX_REPLY_BYTES: u64 = 128 * 1024 * 1024;
/// Pooled connections are dropped before the peer's idle timeout closes them.
const MAX_IDLE_AGE: Duration = Duration::from_secs(15);

/// Timeouts for one call, whole (connect, send, wait, read).
pub const QUICK: Duration = Duration::from_secs(2);
pub const NORMAL: Duration = Duration::from_secs(10);
pub const LONG: Duration = Duration::from_secs(30);

/// Byte counters one caller wants kept for its calls (anti-entropy's cost).
#[derive(Default)]
pub struct Traffic {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

/// The HTTP client for all peer calls.
#[derive(Clone)]
pub struct PeerClient {
    /// Replaced whole when the TLS files are reloaded.
    agent: Arc<RwLock<Agent>>,
    secret: Arc<str>,
    /// `http`, or `https` when the node speaks TLS.
    scheme: &'static str,
}

fn agent(tls: Option<ureq::tls::TlsConfig>) -> Agent {
    let mut config = Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(NORMAL))
        .max_idle_age(MAX_IDLE_AGE)
        .max_idle_connections_per_host(4)
        .user_agent(concat!("kvs/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = tls {
        config = config.tls_config(tls);
    }
    config.build().into()
}

impl PeerClient {
    #[cfg(test)]
    pub fn new(cluster_secret: &str) -> PeerClient {
        Self::with_tls(cluster_secret, None)
    }

    /// Dials peers with `https`, checking their certificates (and
    /// presenting this node's) as `tls` says.
    pub fn with_tls(cluster_secret: &str, tls: Option<ureq::tls::TlsConfig>) -> PeerClient {
        PeerClient {
            scheme: if tls.is_some() { "https" } else { "http" },
            agent: Arc::new(RwLock::new(agent(tls))),
            secret: Arc::from(cluster_secret),
        }
    }

    /// New TLS files (SIGHUP): later calls use them.
    pub fn set_tls(&self, tls: ureq::tls::TlsConfig) {
        *self.agent.write().unwrap_or_else(|e| e.into_inner()) = agent(Some(tls));
    }

    fn agent(&self) -> Agent {
        self.agent.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// POSTs a JSON body and reads a JSON reply.
    pub fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        address: &str,
        path: &str,
        body: &B,
        timeout: Duration,
        traffic: Option<&Traffic>,
    ) -> Result<R, ClusterError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClusterError::BadReply(e.to_string()))?;
        self.post_bytes(address, path, bytes, timeout, traffic)
    }

    /// POSTs an already encoded JSON body.
    pub fn post_bytes<R: DeserializeOwned>(
        &self,
        address: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
        traffic: Option<&Traffic>,
    ) -> Result<R, ClusterError> {
        let url = format!("{}://{address}{path}", self.scheme);
        let sent = body.len() as u64;
        let result = self
            .agent()
            .post(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header(SECRET_HEADER, &*self.secret)
            .header("Content-Type", "application/json")
            .send(&body[..]);
        read_reply(result, sent, traffic)
    }

    /// GETs a JSON reply.
    pub fn get<R: DeserializeOwned>(
        &self,
        address: &str,
        path_and_query: &str,
        timeout: Duration,
        traffic: Option<&Traffic>,
    ) -> Result<R, ClusterError> {
        let url = format!("{}://{address}{path_and_query}", self.scheme);
        let result = self
            .agent()
            .get(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header(SECRET_HEADER, &*self.secret)
            .call();
        read_reply(result, 0, traffic)
    }
}

fn read_reply<R: DeserializeOwned>(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    sent: u64,
    traffic: Option<&Traffic>,
) -> Result<R, ClusterError> {
    let response = result.map_err(|e| ClusterError::Unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .into_with_config()
        .limit(MAX_REPLY_BYTES)
        .read_to_vec()
        .map_err(|e| ClusterError::Unreachable(format!("reading the reply: {e}")))?;
    if let Some(t) = traffic {
        t.requests.fetch_add(1, Ordering::Relaxed);
        t.bytes
            .fetch_add(sent + body.len() as u64, Ordering::Relaxed);
    }
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        return Err(ClusterError::Status(status, message));
    }
    serde_json::from_slice(&body).map_err(|e| ClusterError::BadReply(e.to_string()))
}
