//! Writes that wait for W copies (`?w=`, `write_acks`; DESIGN §7): how
//! many nodes a write asks for, the wait for their acknowledgements on the
//! connection's own thread, and the answers of writes that waited. The
//! waiting itself is `cluster::acks`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ApiError, Reply, Target};
use crate::cluster::acks::{self, Wanted};
use crate::node::Node;

/// The nodes a client write waits for, this one included: `?w=` or
/// `write_acks`. `None`: the default of one node, with nothing asked.
/// `400` for a `w` above the member count, `503` (nothing written) when
/// fewer members are healthy than wanted.
pub fn ack_wait(node: &Node, target: &Target<'_>) -> Result<Option<usize>, ApiError> {
    let wanted = match target.param("w").transpose()? {
        Some(text) => Wanted::parse(&text).map_err(ApiError::BadRequest)?,
        None if node.config.write_acks == Wanted::Nodes(1) => return Ok(None),
        None => node.config.write_acks,
    };
    let members = node.cluster.members.views().len().max(1);
    let healthy = node.cluster.members.healthy_count();
    let n = wanted.nodes(members, healthy);
    if n > members {
        return Err(ApiError::BadRequest(format!(
            "w={n}, but the cluster has {members} member(s)"
        )));
    }
    if healthy < n {
        node.metrics.acks_too_few.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::TooFewHealthy { healthy, wanted: n });
    }
    Ok(Some(n.max(1)))
}

/// The outcome of a write that waits for no other node.
pub fn one_node() -> acks::Outcome {
    acks::Outcome {
        acks: 1,
        reached: true,
        waited: Duration::ZERO,
    }
}

/// Waits, on the connection's own thread and outside the gate, for the
/// acknowledgements of committed versions (one ticket per commit); the
/// outcome counts the nodes that hold all of them.
pub fn wait_for_acks(
    node: &Node,
    commits: Vec<(acks::Ticket, Vec<(String, crate::store::VersionId)>)>,
    wanted: usize,
) -> acks::Outcome {
    super::gate::leave();
    let timeout = node.config.write_ack_timeout;
    let receivers: Vec<_> = commits
        .into_iter()
        .map(|(ticket, versions)| {
            let (tx, rx) = std::sync::mpsc::channel();
            node.cluster
                .replicator
                .acks
                .arm(ticket, versions, wanted, timeout, move |o| {
                    let _ = tx.send(o);
                });
            rx
        })
        .collect();
    let mut outcome = one_node();
    outcome.acks = usize::MAX;
    for rx in receivers {
        // The timer answers every waiter by its deadline; the bound here
        // only guards against a lost answer.
        let o = rx
            .recv_timeout(timeout + Duration::from_secs(5))
            .unwrap_or(acks::Outcome {
                acks: 1,
                reached: false,
                waited: timeout,
            });
        outcome.acks = outcome.acks.min(o.acks);
        outcome.reached &= o.reached;
        outcome.waited = outcome.waited.max(o.waited);
    }
    if outcome.acks == usize::MAX {
        outcome.acks = 1;
    }
    node.metrics.ack_wait.observe(outcome.waited);
    if !outcome.reached {
        node.metrics.acks_timeout.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

/// The answer to a batch or a recursive delete that waited: `body` with
/// `acks`, `200` when `wanted` nodes were reached, else `504` with the
/// error and `wanted`.
pub fn acks_reply(
    mut body: serde_json::Value,
    outcome: &acks::Outcome,
    wanted: usize,
    what: &str,
) -> Reply {
    body["acks"] = outcome.acks.into();
    let status = if outcome.reached {
        200
    } else {
        body["error"] = format!(
            "committed on this node, but {} of {wanted} nodes held {what} within \
             write_ack_timeout; it keeps replicating",
            outcome.acks
        )
        .into();
        body["wanted"] = wanted.into();
        504
    };
    Reply::json_value(status, &body).with_header("X-Kvs-Acks", outcome.acks.to_string())
}
