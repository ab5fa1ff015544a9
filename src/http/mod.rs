//! The HTTP server: one tiny_http server whose connection threads handle
//! their own requests, routing, and the helpers every endpoint shares
//! (bodies, JSON replies, credentials).
//!
//! tiny_http (patched, see `vendor/README.md`) gives each connection its own
//! thread, which reads a request whole before kvs sees it: the head within
//! size bounds and `header_timeout`, then `admit` decides from the head
//! alone (credentials, body limit for the endpoint) whether the body is
//! read at all, then the body within `BODY_TIMEOUT` and a shared memory
//! budget. The same thread then calls `handle` and waits for the answer
//! before it reads the next request: no queue and no second thread in
//! between, and replies on one connection go out in order. At most
//! `http_threads` requests are handled at once (`gate`), so a slow or
//! hostile client holds only its own connection's thread. A client slow to
//! read its reply holds its thread while the reply is written, at most
//! `RESPONSE_TIMEOUT` from the first byte, then the connection is dropped.
//! Single client writes (PUT, DELETE) are handed to the writer thread
//! together with the request, and the writer answers after its commit, so
//! they leave the gate before the disk flush and many writes share one
//! commit. Batches, recursive deletes and versions pushed by peers wait
//! for the commit inside the gate. Blocking queries wait in `watch`, and
//! a backup download is sent from its own thread, both outside the gate.

use crate::auth::{constant_time_eq, Access, Failure};
use crate::cluster::peer::SECRET_HEADER;
use crate::escape::percent_decode;

mod acks;
pub mod backup;
pub mod batch;
pub mod client;
pub mod error;
mod gate;
pub mod internal;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::{ConnectionLimits, Header, Method, Refusal, Request, Response, Server};

pub use error::ApiError;
use gate::Gate;

use crate::metrics::{Metrics, Route};
use crate::node::Node;

/// A kept-alive connection that sends no new request is closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole request body must arrive within this long (408 after).
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// A client must take a whole response within this long, counted from its
/// first byte; one that reads too slowly is dropped.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stop waits for the requests being handled.
const STOP_WAIT: Duration = Duration::from_secs(70);
/// Bytes of a refused request's body read and thrown away before closing.
const DRAIN_LIMIT_BYTES: usize = 64 * 1024;
/// Requests that carry no document (GET, DELETE, `/health`, leave, ...) may
/// have a body this large; it is read and ignored. Larger is 413.
const SMALL_BODY_BYTES: usize = 64 * 1024;
/// Request bodies held in memory at once, all connections together: this
/// much, or room for four of the largest if that is more. A body that does
/// not fit waits up to `BODY_BUDGET_WAIT`, then gets 503.
const BODY_MEMORY_BYTES: usize = 128 * 1024 * 1024;
const BODY_BUDGET_WAIT: Duration = Duration::from_secs(5);
/// Request line, one header line, header lines, and the whole head.
const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
const MAX_HEADER_LINE_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// A chunk-size line with its extensions.
const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;

/// The running server, and the gate of its handlers.
pub struct HttpServer {
    server: Arc<Server>,
    gate: Arc<Gate>,
}

/// Starts the server on a bound listener; at most `http_threads` requests
/// are handled at once.
pub fn start(node: Arc<Node>, listener: TcpListener) -> std::io::Result<HttpServer> {
    let largest_body = internal::internal_body_limit(&node).max(node.config.max_value_bytes);
    // Weak references: connection threads that outlive the stop (kept-alive
    // peers) must not keep the node, and so LMDB, from closing.
    let admit_node = Arc::downgrade(&node);
    let handler_node = Arc::downgrade(&node);
    let gate = Arc::new(Gate::new(node.config.http_threads));
    let handler_gate = gate.clone();
    let limits = ConnectionLimits {
        max_connections: connections_that_fit(node.config.max_connections),
        head_timeout: node.config.header_timeout,
        idle_timeout: IDLE_TIMEOUT,
        body_timeout: BODY_TIMEOUT,
        response_timeout: RESPONSE_TIMEOUT,
        max_request_line: MAX_REQUEST_LINE_BYTES,
        max_header_line: MAX_HEADER_LINE_BYTES,
        max_headers: MAX_HEADERS,
        max_head_bytes: MAX_HEAD_BYTES,
        max_chunk_line: MAX_CHUNK_LINE_BYTES,
        body_memory: BODY_MEMORY_BYTES.max(largest_body.saturating_mul(4)),
        budget_wait: BODY_BUDGET_WAIT,
        default_body_limit: SMALL_BODY_BYTES,
        drain_limit: DRAIN_LIMIT_BYTES,
        admission: Some(Arc::new(
            move |method, url, headers, certified| match admit_node.upgrade() {
                Some(node) => admit(&node, method, url, headers, certified),
                None => Err(refusal(&ApiError::Stopping)),
            },
        )),
        // The gate is passed before the node is taken: once it is closed,
        // no request holds the node.
        handler: Some(Arc::new(move |rq: Request| {
            let Some(turn) = handler_gate.enter() else {
                return answer_stopping(rq);
            };
            gate::hold(turn);
            match handler_node.upgrade() {
                Some(node) => handle(&node, rq),
                None => answer_stopping(rq),
            }
            gate::leave();
        })),
        upgrade: node.tls.as_ref().map(|tls| tls.upgrade()),
    };
    let server = Server::from_listener_with_limits(listener, None, limits)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(HttpServer {
        server: Arc::new(server),
        gate,
    })
}

/// `503` with `Retry-After`: the node is stopping.
fn answer_stopping(rq: Request) {
    let e = ApiError::Stopping;
    let mut response = Response::from_data(e.body()).with_status_code(e.status());
    for (name, value) in e.headers() {
        if let Some(h) = header(name, &value) {
            response.add_header(h);
        }
    }
    let _ = rq.respond(response);
}

impl HttpServer {
    /// Stops accepting connections and waits for every request already
    /// received to be handled. Requests that arrive later on open
    /// keep-alive connections are answered 503 (with Retry-After) until the
    /// process exits, so that no client or peer waits for its timeout.
    pub fn stop(self) {
        self.server.stop_accepting();
        if !self.gate.close(STOP_WAIT) {
            log::warn!(
                "stopping: requests still being handled after {} s; going on",
                STOP_WAIT.as_secs()
            );
        }
    }
}

/// Raises the open-file limit and returns how many connections fit in it
/// (one descriptor each, beside those kept for the rest of the node),
/// warning when that is fewer than `max_connections`.
fn connections_that_fit(max_connections: usize) -> usize {
    let Some(limit) = crate::sys::raise_nofile_limit() else {
        return max_connections;
    };
    let fit = limit
        .saturating_sub(crate::sys::reserved_descriptors(limit))
        .max(1);
    if (max_connections as u64) > fit {
        log::warn!(
            "max_connections {max_connections} does not fit in the open-file limit ({limit}); \
             serving at most {fit} connections at once (raise the limit with ulimit -n or LimitNOFILE)"
        );
        return fit as usize;
    }
    max_connections
}

/// Which credentials an endpoint takes.
enum Credentials {
    Open,
    Client,
    Cluster,
    /// `/members/leave`: a client leaving its node, or a peer announcing
    /// its own leave; the handler tells which once it has the body.
    ClientOrCluster,
}

/// The one table of endpoints: for a request's method and target, the
/// metric label, the credentials it takes and the largest body it accepts.
/// `admit` (before the body) and `handle` (after) both read it.
fn endpoint(node: &Node, method: &Method, target: &Target<'_>) -> (Route, Credentials, usize) {
    let path = target.path;
    if path == "/kv" || path.starts_with("/kv/") {
        let limit = match method {
            Method::Put => node.config.max_value_bytes,
            _ => SMALL_BODY_BYTES,
        };
        return (client::kv_route(method, target), Credentials::Client, limit);
    }
    match path {
        "/batch" => (
            Route::KvPut,
            Credentials::Client,
            client::batch_body_limit(node),
        ),
        "/members/join" => (
            Route::Members,
            Credentials::Cluster,
            internal::internal_body_limit(node),
        ),
        p if p.starts_with("/internal/") => (
            Route::Internal,
            Credentials::Cluster,
            internal::internal_body_limit(node),
        ),
        "/members/leave" => (
            Route::Members,
            Credentials::ClientOrCluster,
            SMALL_BODY_BYTES,
        ),
        "/members" | "/members/" => (Route::Members, Credentials::Client, SMALL_BODY_BYTES),
        "/backup" => (Route::Backup, Credentials::Client, SMALL_BODY_BYTES),
        "/metrics" => (Route::Metrics, Credentials::Client, SMALL_BODY_BYTES),
        "/health" => (Route::Health, Credentials::Open, SMALL_BODY_BYTES),
        _ => (Route::Other, Credentials::Open, SMALL_BODY_BYTES),
    }
}

/// Decides from a request's head alone, before its body is read: the
/// credentials the endpoint takes (a refused request's body is never
/// read) and the largest body it accepts.
fn admit(
    node: &Node,
    method: &Method,
    url: &str,
    headers: &[Header],
    certified: bool,
) -> Result<usize, Refusal> {
    let (route, credentials, limit) = endpoint(node, method, &Target::parse(url));
    let allowed = match credentials {
        Credentials::Open => Ok(()),
        Credentials::Client => authenticate(node, headers).map(|_| ()),
        Credentials::Cluster => check_secret(node, headers, certified),
        Credentials::ClientOrCluster => {
            if peer_certified(node, certified) && cluster_auth_ok(node, headers) {
                Ok(())
            } else {
                authenticate(node, headers).map(|_| ())
            }
        }
    };
    let Err(e) = allowed else {
        return Ok(limit);
    };
    node.metrics.observe(route, e.status(), Duration::ZERO);
    Err(refusal(&e))
}

fn check_secret(node: &Node, headers: &[Header], certified: bool) -> Result<(), ApiError> {
    if !peer_certified(node, certified) {
        node.metrics.auth_failed(Failure::ClientCertificate);
        return Err(ApiError::CertificateRequired);
    }
    if cluster_auth_ok(node, headers) {
        Ok(())
    } else {
        node.metrics.auth_failed(Failure::ClusterSecret);
        Err(ApiError::Unauthorized)
    }
}

/// An error as tiny_http sends it for a request refused from its head.
fn refusal(e: &ApiError) -> Refusal {
    Refusal {
        status: e.status(),
        headers: e
            .headers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        body: e.body(),
    }
}

/// The request target split into its parts.
pub struct Target<'a> {
    pub path: &'a str,
    pub query: &'a str,
}

impl<'a> Target<'a> {
    pub fn parse(url: &'a str) -> Target<'a> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        Target { path, query }
    }

    /// The value of a query parameter (`None` if absent; `Some("")` for a
    /// bare flag like `?keys`), percent-decoded.
    pub fn param(&self, name: &str) -> Option<Result<String, ApiError>> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| {
                let v = v.replace('+', " ");
                percent_decode(&v)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "query parameter {name} is not valid percent-encoded UTF-8"
                        ))
                    })
            })
    }

    pub fn has(&self, name: &str) -> bool {
        self.param(name).is_some()
    }
}

/// Routes one request and answers it (or hands it to the writer, which
/// answers after commit).
fn handle(node: &Node, mut rq: Request) {
    let started = Instant::now();
    let url = rq.url().to_string();
    let target = Target::parse(&url);
    let path = target.path;

    if let Some(rest) = path.strip_prefix("/kv/") {
        return client::kv(node, rq, rest, &target, started);
    }
    if path == "/kv" {
        return client::kv(node, rq, "", &target, started);
    }
    if path == "/backup" {
        return backup::backup(node, rq, started);
    }
    let (route, _, _) = endpoint(node, rq.method(), &target);
    let result = match path {
        "/health" => client::health(node, &rq),
        "/members" | "/members/" => client::members(node, &rq),
        "/members/join" => internal::join(node, &mut rq),
        "/members/leave" => internal::leave(node, &mut rq),
        "/metrics" => client::metrics(node, &rq),
        "/batch" => batch::batch(node, &mut rq),
        p if p.starts_with("/internal/") => internal::route(node, &mut rq, &target),
        _ => Err(ApiError::NotFound(format!("no such endpoint: {path}"))),
    };
    let reply = result.unwrap_or_else(|e| {
        log::debug!("{} {path}: {} {}", rq.method(), e.status(), e.message());
        Reply::error(&e)
    });
    send(node, rq, reply, route, started);
}

/// Checks the method of a request against what a path serves.
pub fn allow(rq: &Request, allowed: &'static str, methods: &[Method]) -> Result<(), ApiError> {
    if methods.contains(rq.method()) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(allowed))
    }
}

/// A response to send.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    pub fn json_value(status: u16, value: &impl serde::Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::json(status, body),
            Err(e) => Reply::error(&ApiError::Internal(format!("cannot encode reply: {e}"))),
        }
    }

    pub fn error(e: &ApiError) -> Reply {
        Reply {
            status: e.status(),
            body: e.body(),
            content_type: "application/json",
            headers: e.headers(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

pub fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// Writes a reply and records it in the metrics.
pub fn send(node: &Node, rq: Request, reply: Reply, route: Route, started: Instant) {
    send_with(&node.metrics, rq, reply, route, started)
}

/// Writes a reply and records it in `metrics` (for the writer's answers).
pub fn send_with(metrics: &Metrics, rq: Request, reply: Reply, route: Route, started: Instant) {
    let status = reply.status;
    // The length is known: always send Content-Length, never chunks.
    let mut response = Response::from_data(reply.body)
        .with_status_code(status)
        .with_chunked_threshold(usize::MAX);
    if let Some(h) = header("Content-Type", reply.content_type) {
        response.add_header(h);
    }
    if let Some(h) = header("Server", concat!("kvs/", env!("CARGO_PKG_VERSION"))) {
        response.add_header(h);
    }
    for (name, value) in &reply.headers {
        if let Some(h) = header(name, value) {
            response.add_header(h);
        }
    }
    // A reply to a slow reader must not hold a turn of the gate.
    gate::leave();
    if let Err(e) = rq.respond(response) {
        log::debug!("could not send a response: {e}");
    }
    metrics.observe(route, status, started.elapsed());
}

/// Answers a request with an error.
pub fn send_error(node: &Node, rq: Request, e: ApiError, route: Route, started: Instant) {
    send(node, rq, Reply::error(&e), route, started)
}

/// The value of a request header.
pub fn header_value<'a>(rq: &'a Request, name: &str) -> Option<&'a str> {
    find_header(rq.headers(), name)
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The access of a request's token (`client_tokens`); a refusal is
/// counted by its reason.
pub fn check_client_auth(node: &Node, rq: &Request) -> Result<Access, ApiError> {
    authenticate(node, rq.headers())
}

fn authenticate(node: &Node, headers: &[Header]) -> Result<Access, ApiError> {
    node.tokens
        .authenticate(find_header(headers, "Authorization"))
        .map_err(|why| {
            node.metrics.auth_failed(why);
            ApiError::Unauthorized
        })
}

/// A `403` for a token used outside its scope, counted.
pub fn forbidden(node: &Node, what: String) -> ApiError {
    node.metrics.auth_failed(Failure::Scope);
    ApiError::Forbidden(what)
}

/// `/metrics`, `/members/`, a client's leave and `/backup` need a token
/// with `admin` (or full access).
pub fn require_admin(node: &Node, access: &Access, endpoint: &str) -> Result<(), ApiError> {
    if access.is_admin() {
        Ok(())
    } else {
        Err(forbidden(
            node,
            format!("{endpoint} needs a token with admin access"),
        ))
    }
}

/// Checks the cluster secret on internal endpoints when one is configured.
pub fn check_cluster_auth(node: &Node, rq: &Request) -> Result<(), ApiError> {
    check_secret(node, rq.headers(), rq.client_certified())
}

/// With `tls_client_auth` peers or all, an internal call must come on a
/// connection that presented a certificate from the CA.
fn peer_certified(node: &Node, certified: bool) -> bool {
    certified
        || node
            .tls
            .as_ref()
            .is_none_or(|t| t.files.client_auth == crate::tls::ClientAuth::None)
}

fn cluster_auth_ok(node: &Node, headers: &[Header]) -> bool {
    let secret = &node.config.cluster_secret;
    let given = find_header(headers, SECRET_HEADER).unwrap_or("");
    secret.is_empty() || constant_time_eq(secret.as_bytes(), given.as_bytes())
}

/// Takes a request's body, of at most `limit` bytes. The connection's
/// thread has already read it whole, within the limit `admit` set.
pub fn read_body(rq: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let len = rq.body_length().unwrap_or(0);
    if len > limit {
        return Err(ApiError::TooLarge(limit));
    }
    let mut body = Vec::with_capacity(len);
    rq.as_reader()
        .read_to_end(&mut body)
        .map_err(|e| ApiError::Internal(format!("could not take the body: {e}")))?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let t = Target::parse("/kv/users/?keys&separator=%2F&limit=10");
        assert_eq!(t.path, "/kv/users/");
        assert!(t.has("keys"));
        assert!(!t.has("recurse"));
        assert_eq!(t.param("separator").unwrap().unwrap(), "/");
        assert_eq!(t.param("limit").unwrap().unwrap(), "10");
        assert!(Target::parse("/x?a=%zz").param("a").unwrap().is_err());
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
    }
}
