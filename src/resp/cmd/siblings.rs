//! dynkv's own commands for conflicts: SIBLINGS shows a key's causal context and every
//! live sibling; RESOLVE writes a value with a context, replacing what that context covers.
//! Must not interpret contexts beyond parsing the token (the version module owns them).

use super::strings::{expiry_from, submit};
use super::util::{coord_error, is, syntax_error};
use super::{Ctx, Outcome};
use crate::coordinator::{Decision, WriteContext};
use crate::resp::reply::Reply;
use crate::version::{NewSibling, VersionVector};

/// SIBLINGS key: `[context, [value, ...]]`; a missing key has the empty context and no values.
pub async fn siblings(ctx: &mut Ctx<'_>) -> Reply {
    let set = match ctx.node.coord.read(&ctx.args[1]).await {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return coord_error(e),
    };
    let now = crate::clock::now_ms();
    let values = set.live(now).map(|s| Reply::Bulk(s.value.clone())).collect();
    Reply::Array(vec![Reply::bulk(set.context().to_token()), Reply::Array(values)])
}

/// DYNKV.LOCAL key: this node's own copy, shaped like SIBLINGS, or nil when it holds none;
/// asks no other node (operators and tests use it to see each replica).
pub fn local(ctx: &mut Ctx<'_>) -> Reply {
    match ctx.node.coord.local(&ctx.args[1]) {
        Ok(None) => Reply::Nil,
        Ok(Some(set)) => {
            let now = crate::clock::now_ms();
            let values = set.live(now).map(|s| Reply::Bulk(s.value.clone())).collect();
            Reply::Array(vec![Reply::bulk(set.context().to_token()), Reply::Array(values)])
        }
        Err(e) => coord_error(e),
    }
}

/// RESOLVE key context value [EX s|PX ms|EXAT t|PXAT t]
pub async fn resolve(ctx: &mut Ctx<'_>) -> Outcome {
    let Ok(context) = VersionVector::from_token(&ctx.args[2]) else {
        return Reply::err("ERR invalid context: pass the context returned by SIBLINGS unchanged").into();
    };
    let now = crate::clock::now_ms();
    let expires = match &ctx.args[4..] {
        [] => None,
        [unit, n] if is(unit, "ex") || is(unit, "px") || is(unit, "exat") || is(unit, "pxat") => {
            match expiry_from(unit, n, "resolve", now) {
                Ok(t) => Some(t),
                Err(r) => return r.into(),
            }
        }
        _ => return syntax_error().into(),
    };
    let (key, value) = (ctx.args[1].clone(), ctx.args[3].clone());
    submit(ctx, key, true, move |_, now| {
        let sibling = NewSibling {
            value,
            written_at_ms: now,
            expires_at_ms: expires,
            tombstone: false,
        };
        let decision = Decision::Write {
            context: WriteContext::Given(context),
            sibling,
        };
        (decision, Reply::Ok)
    })
    .await
}
