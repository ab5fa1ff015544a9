//! The internal API that nodes use with each other (documented in the
//! README, "Internal API"). Every endpoint checks the cluster secret when
//! one is set, validates what it is sent, and answers a bounded page.

use serde::de::DeserializeOwned;
use tiny_http::{Method, Request};

use super::{
    allow, check_client_auth, check_cluster_auth, read_body, require_admin, ApiError, Reply, Target,
};
use crate::cluster::gossip::{self, Gossip, JoinAnswer};
use crate::cluster::membership::MemberEntry;
use crate::cluster::{antientropy, conflict, replicate, sync};
use crate::node::Node;

/// Largest internal request body: a push of `PUSH_MAX_BYTES` of values,
/// JSON-escaped, or one value at the limit.
pub fn internal_body_limit(node: &Node) -> usize {
    8 * node
        .config
        .max_value_bytes
        .max(crate::cluster::replicate::PUSH_MAX_BYTES)
        + 64 * 1024
}

fn read_json<T: DeserializeOwned>(node: &Node, rq: &mut Request) -> Result<T, ApiError> {
    let body = read_body(rq, internal_body_limit(node))?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed request: {e}")))
}

fn number(target: &Target<'_>, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
    match target.param(name).transpose()? {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "{name} must be a number up to {max}"
            ))),
        },
    }
}

/// `POST /members/join`: a node asks to join; the reply is the member list.
pub fn join(node: &Node, rq: &mut Request) -> Result<Reply, ApiError> {
    allow(rq, "POST", &[Method::Post])?;
    check_cluster_auth(node, rq)?;
    let entry: MemberEntry = read_json(node, rq)?;
    entry.validate().map_err(ApiError::BadRequest)?;
    match gossip::accept_join(&node.cluster, &entry) {
        JoinAnswer::Members(list) => Ok(Reply::json_value(200, &list)),
        JoinAnswer::Left => Err(ApiError::Stopping),
        JoinAnswer::Taken(why) => Err(ApiError::Conflict(why)),
    }
}

/// `POST /members/leave`: with a member entry (marked `left`) in the body,
/// a peer announces that it leaves; with no body, this node leaves the
/// cluster (it keeps serving local reads and writes, alone).
pub fn leave(node: &Node, rq: &mut Request) -> Result<Reply, ApiError> {
    allow(rq, "POST", &[Method::Post])?;
    let body = read_body(rq, internal_body_limit(node))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        let access = check_client_auth(node, rq)?;
        require_admin(node, &access, "a node's leave")?;
        node.cluster.leave();
        return Ok(Reply::json_value(
            200,
            &serde_json::json!({ "left": true, "node_id": node.config.node_id }),
        ));
    }
    check_cluster_auth(node, rq)?;
    let entry: MemberEntry = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed member entry: {e}")))?;
    entry.validate().map_err(ApiError::BadRequest)?;
    gossip::accept_leave(&node.cluster, &entry)?;
    Ok(Reply::json_value(200, &serde_json::json!({ "ok": true })))
}

/// A 200 with a JSON body.
fn ok<T: serde::Serialize>(body: &T) -> Result<Reply, ApiError> {
    Ok(Reply::json_value(200, body))
}

/// `/internal/...`: a routing table. Each protocol's receiving half lives
/// with its sending half in `cluster/`; this parses the request and turns
/// the answer into a reply.
pub fn route(node: &Node, rq: &mut Request, target: &Target<'_>) -> Result<Reply, ApiError> {
    check_cluster_auth(node, rq)?;
    let hands_out_versions = matches!(
        target.path,
        "/internal/latest" | "/internal/since" | "/internal/fetch" | "/internal/version"
    ) || target.path.starts_with("/internal/tree/");
    if hands_out_versions && node.cluster.reconcile.is_active() {
        // Back from a long absence, our old versions may be keys deleted
        // meanwhile: hand none out until reconciled with a peer.
        return Err(ApiError::Reconciling);
    }
    match target.path {
        "/internal/gossip" => {
            allow(rq, "POST", &[Method::Post])?;
            let msg: Gossip = read_json(node, rq)?;
            for e in msg.entries() {
                e.validate().map_err(ApiError::BadRequest)?;
            }
            ok(&gossip::answer(&node.cluster, &msg))
        }
        "/internal/push" => {
            allow(rq, "POST", &[Method::Post])?;
            ok(&replicate::receive(&node.cluster, read_json(node, rq)?)?)
        }
        "/internal/latest" => {
            allow(rq, "GET", &[Method::Get])?;
            let n = number(target, "n", sync::LATEST_N as u64, 1000)? as usize;
            ok(&sync::serve_latest(&node.cluster, n)?)
        }
        "/internal/since" => {
            allow(rq, "GET", &[Method::Get])?;
            let after_ts = number(target, "after_ts", 0, u64::MAX)?;
            let max = sync::PAGE_MAX_VERSIONS as u64;
            let limit = number(target, "limit", max, max)? as usize;
            let after_key = target.param("after_key").transpose()?;
            ok(&sync::serve_since(
                &node.cluster,
                after_ts,
                after_key.as_deref(),
                limit,
            )?)
        }
        "/internal/fetch" => {
            allow(rq, "POST", &[Method::Post])?;
            ok(&sync::serve_fetch(&node.cluster, &read_json(node, rq)?)?)
        }
        "/internal/version" => {
            allow(rq, "GET", &[Method::Get])?;
            let key = target
                .param("key")
                .transpose()?
                .ok_or_else(|| ApiError::BadRequest("missing key parameter".into()))?;
            ok(&conflict::serve_version(&node.cluster, &key)?)
        }
        "/internal/tree/root" => {
            allow(rq, "GET", &[Method::Get])?;
            ok(&antientropy::serve_root(&node.cluster))
        }
        "/internal/tree/children" => {
            allow(rq, "POST", &[Method::Post])?;
            ok(&antientropy::serve_children(
                &node.cluster,
                &read_json(node, rq)?,
            )?)
        }
        "/internal/tree/buckets" => {
            allow(rq, "POST", &[Method::Post])?;
            ok(&antientropy::serve_buckets(
                &node.cluster,
                &read_json(node, rq)?,
            )?)
        }
        other => Err(ApiError::NotFound(format!("no such endpoint: {other}"))),
    }
}
