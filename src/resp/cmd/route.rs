//! Routing of key commands in a cluster: a command whose key this node does not replicate
//! is forwarded to the key's first replica (one hop); commands over many keys are split
//! by the node that coordinates each key and run in parallel. Must not interpret a
//! command beyond where its keys are and how its partial replies combine.

use ahash::AHashMap;
use bytes::Bytes;

use super::util::coord_error;
use super::{Ctx, Outcome, Spec, dispatch};
use crate::coordinator::Route;
use crate::resp::reply::Reply;
use crate::ring::partition_of;
use crate::version::NodeId;

/// Routes the request if it must run elsewhere, in whole or in part; `None` when it runs
/// here as it is.
pub async fn route(ctx: &mut Ctx<'_>, spec: &Spec) -> Option<Outcome> {
    let coord = &ctx.node.coord;
    if spec.keys == (1, 1, 1) {
        return match coord.route(&ctx.args[1]) {
            Route::Local => None,
            Route::Forward(m) => Some(Outcome::Now(
                match coord.forward(&m, ctx.client.proto, ctx.args.clone()).await {
                    Ok(raw) => Reply::Raw(raw),
                    Err(e) => coord_error(e),
                },
            )),
        };
    }
    let step = spec.keys.2.max(1) as usize;
    // Arity was checked, but MSET's pairs were not: leave odd counts to the handler.
    if step == 2 && ctx.args.len() % 2 == 0 {
        return None;
    }
    let me = coord.node_id();
    let mut groups: Vec<(NodeId, Option<crate::cluster::MemberInfo>, Vec<usize>)> = Vec::new();
    let mut index: AHashMap<NodeId, usize> = AHashMap::new();
    for i in (1..ctx.args.len()).step_by(step) {
        let (id, member) = match coord.route(&ctx.args[i]) {
            Route::Local => (me, None),
            Route::Forward(m) => (m.id, Some(m)),
        };
        let g = *index.entry(id).or_insert_with(|| {
            groups.push((id, member, Vec::new()));
            groups.len() - 1
        });
        groups[g].2.push(i);
    }
    if groups.len() == 1 && groups[0].0 == me {
        return None;
    }
    if spec.name == "msetnx" {
        let first = partition_of(&ctx.args[1]);
        if (1..ctx.args.len())
            .step_by(2)
            .any(|i| partition_of(&ctx.args[i]) != first)
        {
            return Some(Reply::err("CROSSSLOT Keys in request don't hash to the same slot").into());
        }
    }
    Some(Outcome::Now(split(ctx, spec, step, groups).await))
}

/// Runs each group's part (remote parts concurrently) and combines the replies.
async fn split(
    ctx: &mut Ctx<'_>,
    spec: &Spec,
    step: usize,
    groups: Vec<(NodeId, Option<crate::cluster::MemberInfo>, Vec<usize>)>,
) -> Reply {
    let sub_args = |idx: &[usize]| -> Vec<Bytes> {
        let mut a = Vec::with_capacity(1 + idx.len() * step);
        a.push(ctx.args[0].clone());
        for &i in idx {
            a.extend(ctx.args[i..i + step].iter().cloned());
        }
        a
    };
    let mut remote = tokio::task::JoinSet::new();
    let mut parts: Vec<(Vec<usize>, Reply)> = Vec::with_capacity(groups.len());
    for (g, (_, member, idx)) in groups.iter().enumerate() {
        if let Some(m) = member.clone() {
            let coord = ctx.node.coord.clone();
            let args = sub_args(idx);
            remote.spawn(async move {
                let reply = match coord.forward(&m, 2, args).await {
                    Ok(raw) => Reply::from_resp2(&raw),
                    Err(e) => coord_error(e),
                };
                (g, reply)
            });
        }
    }
    let mut by_group: Vec<Option<Reply>> = vec![None; groups.len()];
    for (g, (_, member, idx)) in groups.iter().enumerate() {
        if member.is_none() {
            let args = sub_args(idx);
            let outcome = Box::pin(dispatch(Ctx {
                node: ctx.node,
                client: &mut *ctx.client,
                args,
                routed: true,
            }))
            .await;
            by_group[g] = Some(match outcome {
                Outcome::Now(r) => r,
                Outcome::Later(p) => p.await.unwrap_or_else(coord_error),
            });
        }
    }
    while let Some(done) = remote.join_next().await {
        if let Ok((g, reply)) = done {
            by_group[g] = Some(reply);
        }
    }
    for (g, (_, _, idx)) in groups.into_iter().enumerate() {
        let reply = by_group[g]
            .take()
            .unwrap_or_else(|| Reply::err("ERR a part of the request was lost"));
        parts.push((idx, reply));
    }
    combine(spec.name, ctx.args.len(), parts)
}

/// Puts partial replies back together in the shape the client expects.
fn combine(name: &str, argc: usize, parts: Vec<(Vec<usize>, Reply)>) -> Reply {
    if let Some((_, e)) = parts.iter().find(|(_, r)| r.is_error()) {
        return e.clone();
    }
    match name {
        "mget" => {
            let mut out = vec![Reply::Nil; argc - 1];
            for (idx, reply) in parts {
                let Reply::Array(values) = reply else {
                    return Reply::err("ERR unexpected partial reply");
                };
                for (i, v) in idx.into_iter().zip(values) {
                    out[i - 1] = v;
                }
            }
            Reply::Array(out)
        }
        "del" | "unlink" | "exists" => Reply::Int(
            parts
                .iter()
                .map(|(_, r)| if let Reply::Int(n) = r { *n } else { 0 })
                .sum(),
        ),
        _ => Reply::Ok,
    }
}
