//! `POST /batch`: puts and deletes in one commit, and transactions: checks
//! of a key's version (`{"op":"check","key","uuid"}` or `"absent": true`),
//! conditions on a put or delete (`"if_match"`, `"if_absent"`) and reads
//! (`{"op":"get","key"}`), all evaluated in the commit against this node's
//! versions. A failed check is `412` naming the first failing op; nothing
//! is applied.

use serde::Deserialize;
use tiny_http::{Method, Request};

use super::acks::{ack_wait, acks_reply, one_node, wait_for_acks};
use super::client::{batch_body_limit, check_json, writable, BATCH_MAX_OPS};
use super::{check_client_auth, forbidden, ApiError, Reply, Target};
use crate::node::Node;
use crate::store::condition::{Condition, Tags};
use crate::store::writer::{TxnAnswer, TxnKind, TxnOp, TxnResult};
use crate::store::{Stamp, VersionId};

/// One op as the client sends it; `value` is kept as the exact bytes of
/// the JSON value in the body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOp<'a> {
    op: String,
    key: String,
    #[serde(borrow, default)]
    value: Option<&'a serde_json::value::RawValue>,
    /// `check`: the key's current version must be this one.
    #[serde(default)]
    uuid: Option<String>,
    /// `check`: the key must hold no live value.
    #[serde(default)]
    absent: Option<bool>,
    /// `put`/`delete`: only if the key is at this version.
    #[serde(default)]
    if_match: Option<String>,
    /// `put`/`delete`: only if the key holds no live value.
    #[serde(default)]
    if_absent: Option<bool>,
}

fn version_condition(text: &str) -> Result<Condition, String> {
    let id = VersionId::parse(text.trim_matches('"'))
        .ok_or_else(|| format!("{text:?} is not a version uuid"))?;
    Ok(Condition {
        if_match: Some(Tags::List(vec![(false, id)])),
        if_none_match: None,
    })
}

fn absent_condition() -> Condition {
    Condition {
        if_match: None,
        if_none_match: Some(Tags::Any),
    }
}

/// One op checked and turned into what the writer takes.
fn parse_op(node: &Node, op: WireOp<'_>) -> Result<TxnOp, String> {
    crate::store::check_key(&op.key, false)?;
    let refuse = |name: &str, given: bool| -> Result<(), String> {
        if given {
            return Err(format!("{name} does not go with op {:?}", op.op));
        }
        Ok(())
    };
    let condition = |if_match: &Option<String>, if_absent: Option<bool>| match (if_match, if_absent)
    {
        (None, None | Some(false)) => Ok(None),
        (Some(u), None | Some(false)) => version_condition(u).map(Some),
        (None, Some(true)) => Ok(Some(absent_condition())),
        (Some(_), Some(true)) => Err("give if_match or if_absent, not both".to_string()),
    };
    let kind = match op.op.as_str() {
        "put" => {
            refuse("uuid", op.uuid.is_some())?;
            refuse("absent", op.absent.is_some())?;
            let v = op.value.ok_or("a put needs a \"value\"")?;
            let bytes = v.get().as_bytes();
            if bytes.len() > node.config.max_value_bytes {
                return Err(format!(
                    "value is larger than the limit of {} bytes",
                    node.config.max_value_bytes
                ));
            }
            TxnKind::Put(bytes.to_vec())
        }
        "delete" => {
            refuse("value", op.value.is_some())?;
            refuse("uuid", op.uuid.is_some())?;
            refuse("absent", op.absent.is_some())?;
            TxnKind::Delete
        }
        "check" => {
            refuse("value", op.value.is_some())?;
            refuse("if_match", op.if_match.is_some())?;
            refuse("if_absent", op.if_absent.is_some())?;
            let c = match (&op.uuid, op.absent) {
                (Some(u), None) => version_condition(u)?,
                (None, Some(true)) => absent_condition(),
                _ => return Err("a check takes \"uuid\" or \"absent\": true".into()),
            };
            return Ok(TxnOp {
                key: op.key,
                kind: TxnKind::Check,
                condition: Some(c),
            });
        }
        "get" => {
            for (name, given) in [
                ("value", op.value.is_some()),
                ("uuid", op.uuid.is_some()),
                ("absent", op.absent.is_some()),
                ("if_match", op.if_match.is_some()),
                ("if_absent", op.if_absent.is_some()),
            ] {
                refuse(name, given)?;
            }
            TxnKind::Get
        }
        other => {
            return Err(format!(
                "unknown op {other:?}: use put, delete, check or get"
            ))
        }
    };
    Ok(TxnOp {
        condition: condition(&op.if_match, op.if_absent)?,
        key: op.key,
        kind,
    })
}

fn stamp_json(s: &Stamp) -> serde_json::Value {
    serde_json::json!({ "uuid": s.uuid.to_string(), "timestamp": s.timestamp })
}

/// `POST /batch`: a plain batch of puts and deletes goes to the writer as
/// before; one with a check, a read or a condition as a transaction.
pub fn batch(node: &Node, rq: &mut Request) -> Result<Reply, ApiError> {
    super::allow(rq, "POST", &[Method::Post])?;
    let access = check_client_auth(node, rq)?;
    writable(node)?;
    let url = rq.url().to_string();
    let body = super::read_body(rq, batch_body_limit(node))?;
    check_json(&body)?;
    let wire: Vec<WireOp<'_>> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "a batch is a JSON array of {{\"op\":\"put\",\"key\",\"value\"}}, \
             {{\"op\":\"delete\",\"key\"}}, {{\"op\":\"check\",\"key\",\"uuid\"}} and \
             {{\"op\":\"get\",\"key\"}}: {e}"
        ))
    })?;
    if wire.is_empty() || wire.len() > BATCH_MAX_OPS {
        return Err(ApiError::BadRequest(format!(
            "a batch holds 1 to {BATCH_MAX_OPS} ops, not {}",
            wire.len()
        )));
    }
    let mut ops = Vec::with_capacity(wire.len());
    for (i, w) in wire.into_iter().enumerate() {
        let key = w.key.clone();
        let op = parse_op(node, w)
            .map_err(|msg| ApiError::BadRequest(format!("op {i} ({key:?}): {msg}")))?;
        let allowed = match op.kind {
            TxnKind::Put(_) | TxnKind::Delete => access.may_write(&op.key),
            TxnKind::Check | TxnKind::Get => access.may_read(&op.key),
        };
        if !allowed {
            return Err(forbidden(
                node,
                format!("op {i} ({key:?}): this token may not do that to it"),
            ));
        }
        ops.push(op);
    }
    let wait = ack_wait(node, &Target::parse(&url))?;
    let written_keys: Vec<String> = ops
        .iter()
        .filter(|o| matches!(o.kind, TxnKind::Put(_) | TxnKind::Delete))
        .map(|o| o.key.clone())
        .collect();
    let ticket = wait
        .filter(|n| *n > 1 && !written_keys.is_empty())
        .map(|_| node.cluster.replicator.acks.expect(written_keys.clone()));
    let plain = ops
        .iter()
        .all(|o| o.condition.is_none() && matches!(o.kind, TxnKind::Put(_) | TxnKind::Delete));
    let (answers, stamps): (Vec<serde_json::Value>, Vec<Stamp>) = if plain {
        let writes = ops
            .into_iter()
            .map(|o| match o.kind {
                TxnKind::Put(d) => (o.key, Some(d)),
                _ => (o.key, None),
            })
            .collect();
        let stamps = node.writer.batch(writes)?;
        (stamps.iter().map(stamp_json).collect(), stamps)
    } else {
        let keys: Vec<(String, &'static str)> = ops
            .iter()
            .map(|o| {
                let name = match o.kind {
                    TxnKind::Put(_) => "put",
                    TxnKind::Delete => "delete",
                    TxnKind::Check => "check",
                    TxnKind::Get => "get",
                };
                (o.key.clone(), name)
            })
            .collect();
        match node.writer.txn(ops, batch_body_limit(node))? {
            TxnAnswer::TooMuchRead { limit } => {
                return Err(ApiError::BadRequest(format!(
                    "the values this transaction reads come to more than {limit} bytes \
                     (4 x max_value_bytes); read them in smaller transactions"
                )))
            }
            TxnAnswer::Failed { index, current } => {
                let (key, name) = &keys[index];
                let now = match &current {
                    Some(s) => format!("{key} is at version {}", s.uuid),
                    None => format!("{key} holds no value"),
                };
                let body = serde_json::json!({
                    "error": format!("op {index} ({name} {key:?}) failed its check: {now}; nothing was applied"),
                    "op": index,
                    "key": key,
                    "current": current.map(|s| s.uuid.to_string()),
                });
                return Ok(Reply::json_value(412, &body));
            }
            TxnAnswer::Done(results) => {
                let mut stamps = Vec::new();
                let answers = results
                    .into_iter()
                    .zip(keys)
                    .map(|(r, (key, _))| match r {
                        TxnResult::Written(s) => {
                            stamps.push(s);
                            stamp_json(&s)
                        }
                        TxnResult::Checked => serde_json::json!({ "key": key, "ok": true }),
                        TxnResult::Read(None) => serde_json::json!({ "key": key, "absent": true }),
                        TxnResult::Read(Some(v)) => {
                            let value = String::from_utf8(v.data)
                                .ok()
                                .and_then(|t| serde_json::value::RawValue::from_string(t).ok());
                            serde_json::json!({
                                "key": key,
                                "value": value,
                                "uuid": v.stamp.uuid.to_string(),
                                "timestamp": v.stamp.timestamp,
                            })
                        }
                    })
                    .collect();
                (answers, stamps)
            }
        }
    };
    let Some(wanted) = wait else {
        return Ok(Reply::json_value(200, &answers));
    };
    let outcome = match ticket {
        Some(t) => {
            let versions = written_keys
                .into_iter()
                .zip(stamps.iter().map(|s| s.uuid))
                .collect();
            wait_for_acks(node, vec![(t, versions)], wanted)
        }
        None => one_node(),
    };
    Ok(acks_reply(
        serde_json::json!({ "results": answers }),
        &outcome,
        wanted,
        "the batch",
    ))
}
