//! The client API: `/kv/{key}` (GET, HEAD, PUT, DELETE, prefix listing),
//! `/health`, `/members/` and `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::{Method, Request};

use super::acks::{ack_wait, acks_reply, one_node, wait_for_acks};
use super::{
    allow, check_client_auth, forbidden, header_value, require_admin, send, ApiError, Reply, Target,
};
use crate::auth::Access;
use crate::cluster::Mode;
use crate::metrics::{Metrics, Route};
use crate::node::Node;
use crate::store::condition::{Tags, Verdict};
use crate::store::writer::{ClientReply, Condition, Op, WriteError, Written};
use crate::store::Listed;
use crate::watch::{self, Scope};

/// Entries a listing returns when no `limit` is given, and at most.
const LIST_DEFAULT_LIMIT: usize = 1000;
const LIST_MAX_LIMIT: usize = 10_000;

/// Decodes and checks a key taken from the path after `/kv/`.
pub fn parse_key(raw: &str) -> Result<String, ApiError> {
    let key = decode_path(raw)?;
    if key.is_empty() {
        return Err(ApiError::BadRequest("empty key: use /kv/<key>".into()));
    }
    check_key_text(&key, false)?;
    Ok(key)
}

/// Decodes and checks a listing prefix: like a key, but it may be empty and
/// may end with `/`.
pub fn parse_prefix(raw: &str) -> Result<String, ApiError> {
    let prefix = decode_path(raw)?;
    if !prefix.is_empty() {
        check_key_text(&prefix, true)?;
    }
    Ok(prefix)
}

fn decode_path(raw: &str) -> Result<String, ApiError> {
    let bytes = crate::escape::percent_decode(raw)
        .ok_or_else(|| ApiError::BadRequest("key has a malformed percent-escape".into()))?;
    String::from_utf8(bytes).map_err(|_| ApiError::BadRequest("key is not valid UTF-8".into()))
}

fn check_key_text(key: &str, is_prefix: bool) -> Result<(), ApiError> {
    crate::store::check_key(key, is_prefix).map_err(ApiError::BadRequest)
}

/// The `If-Match` / `If-None-Match` conditions of a request (RFC 9110).
fn condition(rq: &Request) -> Condition {
    Condition {
        if_match: header_value(rq, "If-Match").map(Tags::parse),
        if_none_match: header_value(rq, "If-None-Match").map(Tags::parse),
    }
}

/// The metric label of a `/kv/...` request, by method and query.
pub fn kv_route(method: &Method, target: &Target<'_>) -> Route {
    match method {
        Method::Get | Method::Head if target.has("keys") || target.has("recurse") => Route::KvList,
        Method::Get | Method::Head => Route::KvGet,
        Method::Put => Route::KvPut,
        Method::Delete => Route::KvDelete,
        _ => Route::Other,
    }
}

/// `/kv/...`: answers, or hands the request to the writer.
pub fn kv(node: &Node, mut rq: Request, raw: &str, target: &Target<'_>, started: Instant) {
    let method = rq.method().clone();
    let route = kv_route(&method, target);
    let access = match check_client_auth(node, &rq) {
        Ok(access) => access,
        Err(e) => return fail(node, rq, e, route, started),
    };
    if matches!(method, Method::Get | Method::Head) {
        if target.has("changes") {
            return changes(node, rq, raw, target, started, access);
        }
        if target.has("index") {
            return blocking(node, rq, raw, target, route, started, access);
        }
    }
    let result = match method {
        Method::Get | Method::Head => {
            return answer_read(node, rq, raw, target, route, started, &access)
        }
        Method::Delete if target.has("recurse") => delete_recurse(node, raw, target, &access),
        Method::Put | Method::Delete => {
            let prepared = ttl_of(target, method == Method::Put).and_then(|ttl| {
                prepare_write(node, &mut rq, raw, method == Method::Put, &access)
                    .and_then(|p| ack_wait(node, target).map(|w| (p, ttl, w)))
            });
            match prepared {
                Ok(((key, data, cond), ttl_ms, wait)) => {
                    let write = ClientWrite {
                        key,
                        data,
                        ttl_ms,
                        condition: cond,
                        wait,
                    };
                    return submit_write(node, rq, write, route, started);
                }
                Err(e) => Err(e),
            }
        }
        _ => Err(ApiError::MethodNotAllowed("GET, HEAD, PUT, DELETE")),
    };
    let reply = result.unwrap_or_else(|e| Reply::error(&e));
    send(node, rq, with_index(node, reply), route, started);
}

/// `?ttl=SECONDS` of a PUT (fractions allowed), in ms.
fn ttl_of(target: &Target<'_>, is_put: bool) -> Result<Option<u64>, ApiError> {
    match target.param("ttl").transpose()? {
        None => Ok(None),
        Some(_) if !is_put => Err(ApiError::BadRequest("ttl only goes with PUT".into())),
        Some(t) => crate::clock::parse_ttl_ms(&t)
            .map(Some)
            .map_err(ApiError::BadRequest),
    }
}

/// Answers a `/kv/` request with an error (and the commit index).
fn fail(node: &Node, rq: Request, e: ApiError, route: Route, started: Instant) {
    send(node, rq, with_index(node, Reply::error(&e)), route, started)
}

/// Adds this node's commit index to a `/kv/` reply.
fn with_index(node: &Node, reply: Reply) -> Reply {
    reply.with_header("X-Kvs-Index", node.store.commit_index().to_string())
}

/// Answers a read (a key or a listing) as it is now.
fn answer_read(
    node: &Node,
    rq: Request,
    raw: &str,
    target: &Target<'_>,
    route: Route,
    started: Instant,
    access: &Access,
) {
    let result = if route == Route::KvList {
        list(node, raw, target, access)
    } else {
        get(node, raw, &condition(&rq), access)
    };
    let reply = result.unwrap_or_else(|e| Reply::error(&e));
    send(node, rq, with_index(node, reply), route, started);
}

/// The `index` and `wait` of a blocking query or a changes request.
fn index_and_wait(target: &Target<'_>) -> Result<(u64, Option<Duration>), ApiError> {
    let index = match target.param("index").transpose()? {
        None => 0,
        Some(i) => i.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "index must be a commit index (a number), not {i:?}"
            ))
        })?,
    };
    let wait = match target.param("wait").transpose()? {
        None => None,
        Some(w) => Some(watch::parse_wait(&w).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "wait must be a duration such as 30s, 500ms or 5m (at most 10m), not {w:?}"
            ))
        })?),
    };
    Ok((index, wait))
}

/// Runs `job` at once, or parks it until something in `scope` changes
/// after `index` or `wait` passes; a parked request holds no worker.
fn park_or_run(node: &Node, scope: Scope, index: u64, wait: Duration, job: watch::Job<Node>) {
    if let Err(job) = node.watch.park(scope, index, wait, job) {
        job(node);
    }
}

/// `GET /kv/{key}?index=N&wait=D`, and the same on `?keys` and `?recurse`:
/// answered at once when the key (or something under the prefix) changed
/// after commit index N, else when it does or `wait` passes.
fn blocking(
    node: &Node,
    rq: Request,
    raw: &str,
    target: &Target<'_>,
    route: Route,
    started: Instant,
    access: Access,
) {
    let scope = if route == Route::KvList {
        parse_prefix(raw).map(Scope::Prefix)
    } else {
        parse_key(raw).and_then(|key| may_read(node, &access, key).map(Scope::Key))
    };
    let parsed = index_and_wait(target).and_then(|iw| scope.map(|s| (iw, s)));
    let ((index, wait), scope) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(node, rq, e, route, started),
    };
    let job: watch::Job<Node> = Box::new(move |node: &Node| {
        let url = rq.url().to_string();
        let target = Target::parse(&url);
        let raw = kv_raw(target.path);
        answer_read(node, rq, raw, &target, route, started, &access);
    });
    if index == 0 {
        return job(node);
    }
    park_or_run(node, scope, index, wait.unwrap_or(watch::DEFAULT_WAIT), job);
}

/// The part of a `/kv/...` path after `/kv/`.
fn kv_raw(path: &str) -> &str {
    path.strip_prefix("/kv/").unwrap_or("")
}

/// Keys a changes reply holds at most.
const CHANGES_LIMIT: usize = 1000;

/// `GET /kv/{prefix}?changes&index=N[&wait=D]`: what changed under the
/// prefix after commit index N, each key once with its current version
/// (deletions included), oldest change first, as `{"index": M, "changes":
/// [...]}`; M (also in `X-Kvs-Index`) is where the next request starts.
/// `410` when N is older than the history kept.
fn changes(
    node: &Node,
    rq: Request,
    raw: &str,
    target: &Target<'_>,
    started: Instant,
    access: Access,
) {
    let route = Route::KvList;
    let parsed = index_and_wait(target).and_then(|iw| parse_prefix(raw).map(|p| (iw, p)));
    let ((index, wait), prefix) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(node, rq, e, route, started),
    };
    let scope = Scope::Prefix(prefix);
    let job: watch::Job<Node> = {
        let scope = scope.clone();
        Box::new(move |node: &Node| {
            let reply = changes_reply(node, &scope, index, &access)
                .unwrap_or_else(|e| with_index(node, Reply::error(&e)));
            send(node, rq, reply, route, started);
        })
    };
    match wait {
        Some(wait) => park_or_run(node, scope, index, wait, job),
        None => job(node),
    }
}

fn changes_reply(
    node: &Node,
    scope: &Scope,
    index: u64,
    access: &Access,
) -> Result<Reply, ApiError> {
    let page = match node.watch.changes(scope, index, CHANGES_LIMIT) {
        Ok(page) => page,
        Err(gone) => {
            return Ok(Reply::json(
                410,
                format!(
                    "{{\"error\":\"index {index} is older than the changes this node keeps; \
                     list the keys again, then follow changes from index {}\",\"index\":{}}}",
                    gone.current, gone.current
                )
                .into_bytes(),
            )
            .with_header("X-Kvs-Index", gone.current.to_string()))
        }
    };
    let txn = node.store.read_txn()?;
    let now = crate::clock::now_ms();
    let mut body = Vec::with_capacity(128 * page.keys.len() + 40);
    body.extend_from_slice(format!("{{\"index\":{},\"changes\":[", page.next).as_bytes());
    // Keys the token may not read are left out (the next index is the
    // same: the client goes on from there).
    let readable = page.keys.iter().filter(|(_, key)| access.may_read(key));
    for (i, (at, key)) in readable.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"key\":");
        write_json_string(&mut body, key);
        match node.store.get_in(&txn, key) {
            Ok(Some(v)) if !v.stamp.deleted && !v.is_expired(now) => {
                body.extend_from_slice(b",\"value\":");
                body.extend_from_slice(&v.data);
                write_stamp(&mut body, &v.stamp, *at);
            }
            Ok(Some(v)) => {
                body.extend_from_slice(b",\"deleted\":true");
                write_stamp(&mut body, &v.stamp, *at);
            }
            // Purged since, or damaged: gone for a reader too.
            Ok(None) | Err(_) => {
                body.extend_from_slice(format!(",\"deleted\":true,\"index\":{at}}}").as_bytes());
            }
        }
    }
    body.extend_from_slice(b"]}");
    Ok(Reply::json(200, body).with_header("X-Kvs-Index", page.next.to_string()))
}

fn write_stamp(body: &mut Vec<u8>, stamp: &crate::store::Stamp, index: u64) {
    body.extend_from_slice(
        format!(
            ",\"timestamp\":{},\"uuid\":\"{}\",\"index\":{index}}}",
            stamp.timestamp, stamp.uuid
        )
        .as_bytes(),
    );
}

/// `GET /kv/{key}`, with `If-Match` (`412` when it fails) and
/// `If-None-Match` (`304` with the `ETag` when it matches).
fn get(node: &Node, raw: &str, cond: &Condition, access: &Access) -> Result<Reply, ApiError> {
    let key = may_read(node, access, parse_key(raw)?)?;
    let found = node.store.with_value(&key, |stamp, data, expires| {
        let etag = format!("\"{}\"", stamp.uuid);
        match cond.evaluate(Some(stamp)) {
            Verdict::Proceed => {
                let reply = Reply::json(200, data.to_vec())
                    .with_header("ETag", etag)
                    .with_header("X-Kvs-Timestamp", stamp.timestamp.to_string());
                Ok(match expires {
                    Some(at) => reply.with_header("X-Kvs-Expires", at.to_string()),
                    None => reply,
                })
            }
            Verdict::NotModified => Ok(Reply {
                status: 304,
                body: Vec::new(),
                content_type: "application/json",
                headers: vec![("ETag", etag)],
            }),
            Verdict::Failed => Err(ApiError::PreconditionFailed(format!(
                "precondition failed: {key} is at version {}",
                stamp.uuid
            ))),
        }
    })?;
    match found {
        Some(reply) => reply,
        None if cond.evaluate(None) == Verdict::Failed => Err(ApiError::PreconditionFailed(
            format!("precondition failed: {key} does not exist"),
        )),
        None => Err(ApiError::NotFound(format!("key not found: {key}"))),
    }
}

/// A key the token may read, or `403` (whether the key exists or not).
fn may_read(node: &Node, access: &Access, key: String) -> Result<String, ApiError> {
    if access.may_read(&key) {
        Ok(key)
    } else {
        Err(forbidden(node, format!("this token may not read {key}")))
    }
}

/// A key the token may write, or `403`.
fn may_write(node: &Node, access: &Access, key: String) -> Result<String, ApiError> {
    if access.may_write(&key) {
        Ok(key)
    } else {
        Err(forbidden(node, format!("this token may not write {key}")))
    }
}

/// Whether this node takes client writes now.
pub(super) fn writable(node: &Node) -> Result<(), ApiError> {
    if node.is_stopping() {
        return Err(ApiError::Stopping);
    }
    if node.config.read_only {
        return Err(ApiError::ReadOnly);
    }
    if node.cluster.has_left() {
        return Err(ApiError::Left);
    }
    if node.mode() == Mode::Syncing {
        return Err(ApiError::Syncing);
    }
    Ok(())
}

/// Ops in one `POST /batch` at most.
pub const BATCH_MAX_OPS: usize = 1000;

/// The largest batch body: four values at the limit.
pub fn batch_body_limit(node: &Node) -> usize {
    node.config.max_value_bytes.saturating_mul(4)
}

/// Keys a recursive delete removes per commit, so that other writes keep
/// flowing between its commits.
const DELETE_BATCH: usize = 500;

/// `DELETE /kv/{prefix}?recurse`: deletes every key under the prefix (all
/// keys for an empty prefix, as in Consul), `DELETE_BATCH` keys per
/// commit; the tombstones replicate like single deletes. Answers
/// `{"deleted": N}`.
fn delete_recurse(
    node: &Node,
    raw: &str,
    target: &Target<'_>,
    access: &Access,
) -> Result<Reply, ApiError> {
    writable(node)?;
    let prefix = parse_prefix(raw)?;
    let wait = ack_wait(node, target)?;
    let mut commits = Vec::new();
    if !access.may_write_all(&prefix) {
        return Err(forbidden(
            node,
            format!("this token may not write every key under {prefix:?}"),
        ));
    }
    let mut deleted = 0;
    let mut after: Option<String> = None;
    loop {
        let (page, more) = node
            .store
            .list(&prefix, after.as_deref(), None, false, DELETE_BATCH)?;
        let keys: Vec<String> = page
            .into_iter()
            .filter_map(|l| match l {
                Listed::Key(k, _) => Some(k),
                Listed::Prefix(_) => None,
            })
            .collect();
        let Some(last) = keys.last().cloned() else {
            break;
        };
        let ticket = wait
            .filter(|n| *n > 1)
            .map(|_| node.cluster.replicator.acks.expect(keys.clone()));
        deleted += node.writer.delete_many(keys.clone())?;
        if let Some(ticket) = ticket {
            // The tombstones just written (a key written again since
            // counts with its newer version).
            let txn = node.store.read_txn()?;
            let versions = keys
                .into_iter()
                .filter_map(|k| {
                    let v = node.store.get_in(&txn, &k).ok().flatten()?;
                    Some((k, v.stamp.uuid))
                })
                .collect();
            commits.push((ticket, versions));
        }
        after = Some(last);
        if !more {
            break;
        }
    }
    let Some(wanted) = wait else {
        return Ok(Reply::json_value(
            200,
            &serde_json::json!({ "deleted": deleted }),
        ));
    };
    let outcome = if commits.is_empty() {
        one_node()
    } else {
        wait_for_acks(node, commits, wanted)
    };
    Ok(acks_reply(
        serde_json::json!({ "deleted": deleted }),
        &outcome,
        wanted,
        "the tombstones",
    ))
}

/// Checks everything about a write that can be checked before the writer:
/// mode, key, condition, body size and JSON validity.
fn prepare_write(
    node: &Node,
    rq: &mut Request,
    raw: &str,
    is_put: bool,
    access: &Access,
) -> Result<(String, Option<Vec<u8>>, Condition), ApiError> {
    writable(node)?;
    let key = may_write(node, access, parse_key(raw)?)?;
    let cond = condition(rq);
    if !is_put {
        return Ok((key, None, cond));
    }
    let body = super::read_body(rq, node.config.max_value_bytes)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "body is empty: send a JSON document".into(),
        ));
    }
    check_json(&body)?;
    Ok((key, Some(body), cond))
}

/// Checks that a body is one JSON document (RFC 8259), UTF-8 throughout.
/// UTF-8 is checked first: serde_json does not look inside the strings of
/// a document it only validates.
pub fn check_json(body: &[u8]) -> Result<(), ApiError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::BadRequest(format!(
            "body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))
}

/// A client `PUT` or `DELETE` of one key, checked and ready for the writer.
struct ClientWrite {
    key: String,
    data: Option<Vec<u8>>,
    ttl_ms: Option<u64>,
    condition: Condition,
    /// Nodes to wait for (`?w=`), this one included; None: not asked.
    wait: Option<usize>,
}

/// The answer to a committed `PUT` (200 with the version) or `DELETE`
/// (204; 200 with the version and `acks` when acknowledgements were
/// asked for). `acks`: the nodes that hold it, the nodes wanted, and
/// whether that many were reached (else 504).
fn written_reply(
    is_put: bool,
    stamp: &crate::store::Stamp,
    acks: Option<(usize, usize, bool)>,
) -> Reply {
    let Some((acks, wanted, reached)) = acks else {
        if !is_put {
            return Reply {
                status: 204,
                body: Vec::new(),
                content_type: "application/json",
                headers: Vec::new(),
            };
        }
        return Reply::json(
            200,
            format!(
                "{{\"uuid\":\"{}\",\"timestamp\":{}}}",
                stamp.uuid, stamp.timestamp
            )
            .into_bytes(),
        )
        .with_header("ETag", format!("\"{}\"", stamp.uuid));
    };
    let mut body = serde_json::json!({
        "uuid": stamp.uuid.to_string(),
        "timestamp": stamp.timestamp,
        "acks": acks,
    });
    let status = if reached {
        200
    } else {
        body["error"] = format!(
            "committed on this node, but {acks} of {wanted} nodes held it within write_ack_timeout; it keeps replicating"
        )
        .into();
        body["wanted"] = wanted.into();
        504
    };
    Reply::json_value(status, &body)
        .with_header("ETag", format!("\"{}\"", stamp.uuid))
        .with_header("X-Kvs-Acks", acks.to_string())
}

/// Hands a write to the writer; the writer answers after commit, or, when
/// acknowledgements were asked for, hands the answer to `acks`, which
/// gives it once enough nodes hold the version (or at the timeout).
fn submit_write(node: &Node, rq: Request, write: ClientWrite, route: Route, started: Instant) {
    let metrics: Arc<Metrics> = node.metrics.clone();
    let store = node.store.clone();
    let acks = node.cluster.replicator.acks.clone();
    let timeout = node.config.write_ack_timeout;
    let ClientWrite {
        key,
        data,
        ttl_ms,
        condition,
        wait,
    } = write;
    let is_put = data.is_some();
    let reply_key = key.clone();
    let ticket = wait
        .filter(|n| *n > 1)
        .map(|_| acks.expect(vec![key.clone()]));
    let reply = ClientReply::new(move |outcome: Result<Written, WriteError>| {
        let reply = match outcome {
            Ok(w) => match (ticket, wait) {
                (Some(ticket), Some(wanted)) => {
                    let stamp = w.stamp;
                    acks.arm(
                        ticket,
                        vec![(reply_key, stamp.uuid)],
                        wanted,
                        timeout,
                        move |o| {
                            metrics.ack_wait.observe(o.waited);
                            if !o.reached {
                                metrics.acks_timeout.fetch_add(1, Ordering::Relaxed);
                            }
                            let reply =
                                written_reply(is_put, &stamp, Some((o.acks, wanted, o.reached)))
                                    .with_header("X-Kvs-Index", store.commit_index().to_string());
                            super::send_with(&metrics, rq, reply, route, started);
                        },
                    );
                    return;
                }
                (_, wait) => written_reply(is_put, &w.stamp, wait.map(|n| (1, n, true))),
            },
            Err(WriteError::PreconditionFailed(current)) => {
                let msg = match current {
                    Some(s) => format!("precondition failed: {reply_key} is at version {}", s.uuid),
                    None => format!("precondition failed: {reply_key} does not exist"),
                };
                Reply::error(&ApiError::PreconditionFailed(msg))
            }
            Err(WriteError::Store(e)) => Reply::error(&ApiError::from(e)),
        };
        let reply = reply.with_header("X-Kvs-Index", store.commit_index().to_string());
        super::send_with(&metrics, rq, reply, route, started);
    });
    let op = Op::Client {
        key,
        data,
        ttl_ms,
        condition,
        reply,
    };
    if node.writer.submit(op).is_err() {
        // The op, dropped with the error, answers its request with a 503.
        log::warn!("a write arrived while the writer was stopping");
    }
}

/// `GET /kv/<prefix>?keys` and `?recurse`.
fn list(node: &Node, raw: &str, target: &Target<'_>, access: &Access) -> Result<Reply, ApiError> {
    let prefix = parse_prefix(raw)?;
    let readable = access.readable_under(&prefix);
    let recurse = target.has("recurse");
    let separator = match target.param("separator").transpose()? {
        None => None,
        Some(s) if recurse => {
            return Err(ApiError::BadRequest(format!(
                "separator={s:?} only works with ?keys"
            )))
        }
        Some(s) => {
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Some(c),
                _ => {
                    return Err(ApiError::BadRequest(
                        "separator must be one character".into(),
                    ))
                }
            }
        }
    };
    let limit = match target.param("limit").transpose()? {
        None => LIST_DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=LIST_MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit must be a number from 1 to {LIST_MAX_LIMIT}"
                )))
            }
        },
    };
    let after = target.param("after").transpose()?;
    let (entries, more) = node.store.list_visible(
        &prefix,
        after.as_deref(),
        separator,
        recurse,
        limit,
        readable.as_deref(),
    )?;
    let mut body = Vec::with_capacity(64 * entries.len() + 2);
    body.push(b'[');
    let mut last = None;
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match entry {
            Listed::Prefix(p) => {
                write_json_string(&mut body, p);
                last = Some(p.clone());
            }
            Listed::Key(k, None) => {
                write_json_string(&mut body, k);
                last = Some(k.clone());
            }
            Listed::Key(k, Some(v)) => {
                body.extend_from_slice(b"{\"key\":");
                write_json_string(&mut body, k);
                body.extend_from_slice(b",\"value\":");
                body.extend_from_slice(&v.data);
                body.extend_from_slice(
                    format!(
                        ",\"timestamp\":{},\"uuid\":\"{}\"}}",
                        v.stamp.timestamp, v.stamp.uuid
                    )
                    .as_bytes(),
                );
                last = Some(k.clone());
            }
        }
    }
    body.push(b']');
    let mut reply = Reply::json(200, body);
    if more {
        if let Some(last) = last {
            reply = reply
                .with_header("X-Kvs-More", "true".into())
                .with_header("X-Kvs-Next-After", crate::escape::percent_encode(&last));
        }
    }
    Ok(reply)
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json cannot fail on a &str.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `GET /health`: `200` while the node takes client writes (or is
/// read-only by configuration), `503` with the same JSON and a `reason`
/// while it does not (stopping, left, syncing).
pub fn health(node: &Node, rq: &Request) -> Result<Reply, ApiError> {
    allow(rq, "GET, HEAD", &[Method::Get, Method::Head])?;
    let mode = if node.cluster.has_left() {
        "left"
    } else {
        match (node.mode(), node.config.read_only) {
            (Mode::Syncing, _) => "syncing",
            (_, true) => "read-only",
            _ => "normal",
        }
    };
    let mut body = serde_json::json!({
        "status": "ok",
        "mode": mode,
        "member_count": node.cluster.members.healthy_count(),
        "node_id": node.config.node_id,
        "version": env!("CARGO_PKG_VERSION"),
    });
    if node.mode() == Mode::Syncing {
        body["keys_fetched"] = serde_json::json!(node.cluster.sync.keys_fetched());
    }
    if let Some(e) = node.cluster.join_error() {
        body["join_error"] = serde_json::json!(e);
    }
    let status = match writable(node) {
        Ok(()) | Err(ApiError::ReadOnly) => 200,
        Err(e) => {
            body["status"] = serde_json::json!("unavailable");
            body["reason"] = serde_json::json!(e.message());
            503
        }
    };
    Ok(Reply::json_value(status, &body))
}

/// `GET /members/`.
pub fn members(node: &Node, rq: &Request) -> Result<Reply, ApiError> {
    allow(rq, "GET, HEAD", &[Method::Get, Method::Head])?;
    require_admin(node, &check_client_auth(node, rq)?, "/members/")?;
    Ok(Reply::json_value(200, &node.cluster.members.views()))
}

/// `GET /metrics`.
pub fn metrics(node: &Node, rq: &Request) -> Result<Reply, ApiError> {
    allow(rq, "GET", &[Method::Get])?;
    require_admin(node, &check_client_auth(node, rq)?, "/metrics")?;
    let text = node.render_metrics();
    Ok(Reply {
        status: 200,
        body: text.into_bytes(),
        content_type: "text/plain; version=0.0.4",
        headers: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::MAX_KEY_BYTES;

    #[test]
    fn bodies_must_be_utf8_json() {
        assert!(check_json(b" {\"a\": [1, \"\xc3\xa9\"]}\n").is_ok());
        // serde_json alone accepts this: the bad byte is inside a string
        let err = check_json(b"{\"a\": \"\xff\"}").unwrap_err();
        assert!(err.message().contains("UTF-8"), "{}", err.message());
        assert!(check_json(b"\"\xed\xa0\x80\"").is_err()); // a surrogate
        assert!(check_json(b"{\"a\":").is_err());
        assert!(check_json(b"1 2").is_err());
    }

    #[test]
    fn keys_are_decoded_and_checked() {
        assert_eq!(
            parse_key("users/john/profile").unwrap(),
            "users/john/profile"
        );
        assert_eq!(parse_key("a%20b/%C3%A9").unwrap(), "a b/é");
        let long = "k".repeat(400);
        assert_eq!(parse_key(&long).unwrap(), long);
        for (bad, word) in [
            ("", "empty"),
            ("a//b", "empty path segment"),
            ("a/", "empty path segment"),
            ("a/../b", "\"..\""),
            ("./a", "\".\""),
            ("a%2F..%2Fb", "\"..\""),
            ("a%00b", "control"),
            ("a%0Ab", "control"),
            ("a%ZZ", "percent"),
            ("%FF%FE", "UTF-8"),
        ] {
            let e = parse_key(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
            assert!(e.message().contains(word), "{bad}: {}", e.message());
        }
        let e = parse_key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert!(e.message().contains("limit"), "{}", e.message());
    }

    #[test]
    fn prefixes_may_be_empty_or_end_with_a_slash() {
        assert_eq!(parse_prefix("").unwrap(), "");
        assert_eq!(parse_prefix("users/").unwrap(), "users/");
        assert_eq!(parse_prefix("us").unwrap(), "us");
        assert!(parse_prefix("users//").is_err());
        assert!(parse_prefix("../").is_err());
    }
}
