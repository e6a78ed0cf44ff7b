//! DYNKV.STATUS, DYNKV.RING, DYNKV.LEAVE, DYNKV.REMOVE, DYNKV.WEIGHT: an operator's view
//! and changes of the membership, through any node (redis-cli can call them; `dynkv
//! admin` does). A change is written into this node's member table and spreads by
//! gossip; partitions then move in the background. Must not move data itself.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::Ctx;
use crate::cluster::MemberState;
use crate::config::parse_node_id;
use crate::coordinator::rebalance;
use crate::resp::reply::Reply;
use crate::version::NodeId;

fn no_cluster() -> Reply {
    Reply::err("ERR this node runs without a cluster (start it with --seeds/--join)")
}

/// A node id as INFO (16 hex digits) or CLUSTER NODES (40) print it.
fn node_arg(arg: &[u8]) -> Result<NodeId, Reply> {
    let text = std::str::from_utf8(arg).unwrap_or("");
    let trimmed = if text.len() > 16 {
        text.trim_start_matches('0')
    } else {
        text
    };
    parse_node_id(if trimmed.is_empty() { "0" } else { trimmed })
        .map_err(|e| Reply::err(format!("ERR invalid node id: {e}")))
}

/// DYNKV.LEAVE [node] | DYNKV.REMOVE node | DYNKV.WEIGHT node weight
pub fn change(ctx: &mut Ctx<'_>, what: &str) -> Reply {
    let Some(c) = ctx.node.coord.cluster() else {
        return no_cluster();
    };
    let args = &ctx.args[1..];
    let (id, weight) = match (what, args) {
        ("dynkv.leave", []) => (ctx.node.coord.node_id(), None),
        ("dynkv.leave" | "dynkv.remove", [node]) => match node_arg(node) {
            Ok(id) => (id, None),
            Err(r) => return r,
        },
        ("dynkv.weight", [node, w]) => {
            let id = match node_arg(node) {
                Ok(id) => id,
                Err(r) => return r,
            };
            match std::str::from_utf8(w).ok().and_then(|w| w.parse::<f64>().ok()) {
                Some(w) if w.is_finite() && w > 0.0 => (id, Some(w)),
                _ => return Reply::err("ERR weight must be a number > 0"),
            }
        }
        _ => return Reply::err(format!("ERR wrong number of arguments for '{what}' command")),
    };
    let view = c.membership.view();
    let Some(record) = view.record(id) else {
        return Reply::err(format!("ERR no member {id:016x}"));
    };
    if record.state() == MemberState::Removed {
        return Reply::err(format!("ERR member {id:016x} was removed"));
    }
    if weight.is_none() && view.records().iter().filter(|r| r.target.value.is_some()).count() <= 1 {
        return Reply::err("ERR the last member cannot leave");
    }
    if c.membership.set_target(id, weight) {
        tracing::info!(
            node = format!("{id:016x}"),
            weight = ?weight,
            "membership change requested by an operator"
        );
    }
    Reply::Ok
}

/// DYNKV.STATUS: members, their state and weights, and this node's transfer progress.
pub fn status(ctx: &mut Ctx<'_>) -> Reply {
    let coord = &ctx.node.coord;
    let Some(c) = coord.cluster() else {
        return no_cluster();
    };
    let view = c.membership.view();
    let now = std::time::Instant::now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {:016x}  view {:016x}  {}",
        coord.node_id(),
        view.fingerprint(),
        if view.in_transition() {
            "ring change in progress"
        } else {
            "ring stable"
        }
    );
    let _ = writeln!(out, "members:");
    for r in view.records() {
        let fmt = |w: Option<f64>| w.map_or("-".to_string(), |w| format!("{w}"));
        let up = if r.id == coord.node_id() || c.health.is_up(r.id, now) {
            "up"
        } else {
            "down"
        };
        let _ = writeln!(
            out,
            "  {:016x} {} state={} weight={} target={} synced={} {up}",
            r.id,
            r.addr.value.0,
            r.state().as_str(),
            fmt(r.current.value),
            fmt(r.target.value),
            r.synced.value == view.fingerprint()
        );
    }
    let rb = coord.rebalance_stats();
    let total = rb.partitions_total.load(Ordering::Relaxed);
    let done = rb.partitions_done.load(Ordering::Relaxed);
    let keys = rb.keys_in.load(Ordering::Relaxed);
    let bytes = rb.bytes_in.load(Ordering::Relaxed);
    let rate = rebalance::pull_rate(rb);
    let _ = writeln!(
        out,
        "transfer: partitions {done}/{total} keys {keys} bytes {bytes} rate {rate:.0} B/s; handed over and dropped {}",
        rb.keys_dropped.load(Ordering::Relaxed)
    );
    Reply::Bulk(out.into_bytes().into())
}

/// DYNKV.RING: per member, partitions led and replicated in the read placement and the
/// target placement, and this node's record count.
pub fn ring(ctx: &mut Ctx<'_>) -> Reply {
    let coord = &ctx.node.coord;
    let Some(c) = coord.cluster() else {
        return no_cluster();
    };
    let view = c.membership.view();
    let n = c.configured.n;
    let mut out = String::new();
    for r in view.records().iter().filter(|r| r.state() != MemberState::Removed) {
        let read_n = n.min(view.placement().members().len());
        let target_n = n.min(view.target().members().len());
        let _ = writeln!(
            out,
            "{:016x} {} led={} replicas={} target_led={} target_replicas={}",
            r.id,
            r.state().as_str(),
            view.placement().primaries_of(r.id),
            view.placement().replicas_of(r.id, read_n),
            view.target().primaries_of(r.id),
            view.target().replicas_of(r.id, target_n),
        );
    }
    Reply::Bulk(out.into_bytes().into())
}
