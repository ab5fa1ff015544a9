//! The internal API that nodes use with each other (documented in the
//! README, "Internal API"). Every endpoint checks the cluster secret when
//! one is set, validates what it is sent, and answers a bounded page.

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use tiny_http::{Method, Request};

use super::{allow, check_client_auth, check_cluster_auth, read_body, ApiError, Reply, Target};
use crate::cluster::antientropy::{
    self, BucketCursor, BucketsReply, BucketsRequest, ChildrenReply, ChildrenRequest, RootReply,
};
use crate::cluster::conflict::VersionReply;
use crate::cluster::gossip::{self, Gossip, MemberList};
use crate::cluster::membership::MemberEntry;
use crate::cluster::replicate::{PushReply, PushRequest};
use crate::cluster::sync::{self, Cursor, FetchReply, FetchRequest, LatestReply, SinceReply};
use crate::cluster::wire::{decode_versions, WireVersion};
use crate::node::Node;
use crate::store::merkle::DEPTH;

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
    if node.cluster.has_left() {
        return Err(ApiError::Stopping);
    }
    let me = node.cluster.members.me();
    if entry.id == me.id && entry.generation == me.generation {
        // A seed list that names this node: answer so the caller can tell.
        return Ok(Reply::json_value(200, &MemberList { members: vec![me] }));
    }
    node.cluster.members.check_join(&entry).map_err(|refused| {
        log::warn!(
            "refused a join from {} at {}: {}",
            entry.id,
            entry.address,
            refused.0
        );
        ApiError::Conflict(refused.0)
    })?;
    // What this node holds against the joining node goes back to it (last:
    // the first entry is this node's own), so that it refutes.
    let doubt = node.cluster.members.doubt_about(&entry);
    node.cluster.members.merge_direct(&entry);
    node.cluster.members.reached(&entry.address);
    let mut members = node.cluster.members.entries();
    members.extend(doubt);
    Ok(Reply::json_value(200, &MemberList { members }))
}

/// `POST /members/leave`: with a member entry (marked `left`) in the body,
/// a peer announces that it leaves; with no body, this node leaves the
/// cluster (it keeps serving local reads and writes, alone).
pub fn leave(node: &Node, rq: &mut Request) -> Result<Reply, ApiError> {
    allow(rq, "POST", &[Method::Post])?;
    let body = read_body(rq, internal_body_limit(node))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        check_client_auth(node, rq)?;
        node.leave_cluster();
        return Ok(Reply::json_value(
            200,
            &serde_json::json!({ "left": true, "node_id": node.config.node_id }),
        ));
    }
    check_cluster_auth(node, rq)?;
    let entry: MemberEntry = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed member entry: {e}")))?;
    entry.validate().map_err(ApiError::BadRequest)?;
    if !entry.left {
        return Err(ApiError::BadRequest(
            "a leave announcement must have \"left\": true".into(),
        ));
    }
    node.cluster.members.merge(std::slice::from_ref(&entry));
    Ok(Reply::json_value(200, &serde_json::json!({ "ok": true })))
}

/// `/internal/...`.
pub fn route(node: &Node, rq: &mut Request, target: &Target<'_>) -> Result<Reply, ApiError> {
    check_cluster_auth(node, rq)?;
    let hands_out_versions = matches!(
        target.path,
        "/internal/latest" | "/internal/since" | "/internal/fetch" | "/internal/version"
    ) || target.path.starts_with("/internal/tree/");
    if hands_out_versions && node.cluster.is_stale() {
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
            Ok(Reply::json_value(200, &gossip::answer(node, &msg)))
        }
        "/internal/push" => {
            allow(rq, "POST", &[Method::Post])?;
            let push: PushRequest = read_json(node, rq)?;
            let n = push.versions.len();
            let versions =
                decode_versions(push.versions, node.config.max_value_bytes).map_err(|e| {
                    ApiError::BadRequest(format!("bad version from {}: {e}", push.from))
                })?;
            let report = node.writer.apply_remote(versions)?;
            node.metrics
                .received_versions
                .fetch_add(n as u64, Ordering::Relaxed);
            Ok(Reply::json_value(
                200,
                &PushReply {
                    applied: report.applied,
                    ignored: report.ignored,
                    conflicts: report.conflicts,
                },
            ))
        }
        "/internal/latest" => {
            allow(rq, "GET", &[Method::Get])?;
            let n = number(target, "n", sync::LATEST_N as u64, 1000)? as usize;
            let versions = node
                .store
                .latest(n)?
                .iter()
                .map(|(k, s)| WireVersion::from_stamp(k, s))
                .collect();
            Ok(Reply::json_value(200, &LatestReply { versions }))
        }
        "/internal/since" => {
            allow(rq, "GET", &[Method::Get])?;
            let after_ts = number(target, "after_ts", 0, u64::MAX)?;
            let limit = number(
                target,
                "limit",
                sync::PAGE_MAX_VERSIONS as u64,
                sync::PAGE_MAX_VERSIONS as u64,
            )?
            .max(1) as usize;
            let after_key = target.param("after_key").transpose()?;
            let page =
                node.store
                    .since(after_ts, after_key.as_deref(), limit, sync::PAGE_MAX_BYTES)?;
            Ok(Reply::json_value(
                200,
                &SinceReply {
                    versions: page
                        .versions
                        .iter()
                        .filter_map(|(k, v)| WireVersion::from_version(k, v))
                        .collect(),
                    next: page.next.map(|(timestamp, key)| Cursor { timestamp, key }),
                },
            ))
        }
        "/internal/fetch" => {
            allow(rq, "POST", &[Method::Post])?;
            let req: FetchRequest = read_json(node, rq)?;
            if req.keys.len() > sync::FETCH_MAX_KEYS {
                return Err(ApiError::BadRequest(format!(
                    "at most {} keys per fetch",
                    sync::FETCH_MAX_KEYS
                )));
            }
            let rtxn = node.store.read_txn()?;
            let mut versions = Vec::with_capacity(req.keys.len());
            for key in &req.keys {
                if let Some(v) = node.store.get_in(&rtxn, key)? {
                    versions.extend(WireVersion::from_version(key, &v));
                }
            }
            Ok(Reply::json_value(200, &FetchReply { versions }))
        }
        "/internal/version" => {
            allow(rq, "GET", &[Method::Get])?;
            let key = target
                .param("key")
                .transpose()?
                .ok_or_else(|| ApiError::BadRequest("missing key parameter".into()))?;
            let version = node
                .store
                .get(&key)?
                .and_then(|v| WireVersion::from_version(&key, &v));
            Ok(Reply::json_value(200, &VersionReply { version }))
        }
        "/internal/tree/root" => {
            allow(rq, "GET", &[Method::Get])?;
            Ok(Reply::json_value(
                200,
                &RootReply {
                    root: antientropy::hex_hashes(&[node.store.tree_root()]),
                },
            ))
        }
        "/internal/tree/children" => {
            allow(rq, "POST", &[Method::Post])?;
            let req: ChildrenRequest = read_json(node, rq)?;
            if req.level >= DEPTH || req.nodes.len() > antientropy::CHILDREN_MAX_NODES {
                return Err(ApiError::BadRequest(format!(
                    "level must be below {DEPTH} and at most {} nodes asked",
                    antientropy::CHILDREN_MAX_NODES
                )));
            }
            let children = node
                .store
                .tree_children(req.level, &req.nodes)?
                .ok_or_else(|| ApiError::BadRequest("no such tree node".into()))?;
            Ok(Reply::json_value(
                200,
                &ChildrenReply {
                    children: children
                        .iter()
                        .map(|c| antientropy::hex_hashes(c))
                        .collect(),
                },
            ))
        }
        "/internal/tree/buckets" => {
            allow(rq, "POST", &[Method::Post])?;
            let req: BucketsRequest = read_json(node, rq)?;
            if req.leaves.len() > antientropy::BUCKETS_PER_REQUEST {
                return Err(ApiError::BadRequest(format!(
                    "at most {} buckets per request",
                    antientropy::BUCKETS_PER_REQUEST
                )));
            }
            let page = node.store.bucket_entries(
                &req.leaves,
                req.after.as_ref().map(|c| (c.leaf, c.key.as_str())),
                antientropy::BUCKET_PAGE_ENTRIES,
            )?;
            Ok(Reply::json_value(
                200,
                &BucketsReply {
                    entries: page
                        .entries
                        .iter()
                        .map(|(_, k, s)| WireVersion::from_stamp(k, s))
                        .collect(),
                    next: page.next.map(|(leaf, key)| BucketCursor { leaf, key }),
                },
            ))
        }
        other => Err(ApiError::NotFound(format!("no such endpoint: {other}"))),
    }
}
