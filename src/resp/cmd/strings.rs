//! String commands: GET, SET and its options, SETNX, SETEX, PSETEX, GETSET, GETDEL, GETEX,
//! MGET, MSET, MSETNX, APPEND, STRLEN, GETRANGE, SETRANGE. Must not touch storage: each
//! write is a decision over the key's current value, submitted to the coordinator.

use bytes::{Bytes, BytesMut};

use super::util::{coord_error, int_arg, is, syntax_error};
use super::{Ctx, Outcome};
use crate::coordinator::{Decision, Pending};
use crate::node::Stats;
use crate::resp::reply::Reply;
use crate::version::{Sibling, SiblingSet};

/// The live value a read returns: the deterministic winner among live siblings.
pub fn live(set: Option<&SiblingSet>, now_ms: u64) -> Option<&Sibling> {
    set.and_then(|s| s.winner(now_ms))
}

/// Submits a one-key write and turns its result into an outcome. `blind`: the decision
/// does not look at the current value (see [`crate::coordinator::Coordinator::submit`]).
pub async fn submit<F>(ctx: &mut Ctx<'_>, key: Bytes, blind: bool, decide: F) -> Outcome
where
    F: FnOnce(Option<&SiblingSet>, u64) -> (Decision, Reply) + Send + 'static,
{
    match ctx.node.coord.submit(key, blind, decide).await {
        Ok(p) => Outcome::Later(p),
        Err(e) => Outcome::Now(coord_error(e)),
    }
}

/// Reads a key's live value.
pub async fn read_value(ctx: &mut Ctx<'_>, key: &[u8]) -> Result<Option<Sibling>, Reply> {
    // One clock reading per run of pipelined reads, like their shared snapshot.
    let now = ctx.node.coord.store().read_time_ms();
    let (v, live) = ctx.node.coord.read_winner(key, now).await.map_err(coord_error)?;
    crate::metrics::commands::record_siblings(live as u64);
    let counter = if v.is_some() {
        &ctx.node.stats.keyspace_hits
    } else {
        &ctx.node.stats.keyspace_misses
    };
    Stats::add(counter, 1);
    Ok(v)
}

/// GET key. A read that needs other replicas runs as its own task, so pipelined GETs
/// wait for their quorums at the same time.
pub async fn get(ctx: &mut Ctx<'_>) -> Outcome {
    let key = std::mem::take(&mut ctx.args[1]);
    if ctx.node.coord.cluster().is_some() && ctx.node.coord.replicas(&key).len() > 1 {
        let node = ctx.node.clone();
        let task = tokio::spawn(async move {
            let (v, live) = node
                .coord
                .read_winner(&key, crate::clock::now_ms())
                .await
                .map_err(coord_error)?;
            crate::metrics::commands::record_siblings(live as u64);
            let v = v.map(|s| s.value);
            let counter = if v.is_some() {
                &node.stats.keyspace_hits
            } else {
                &node.stats.keyspace_misses
            };
            Stats::add(counter, 1);
            Ok::<Reply, Reply>(Reply::opt_bulk(v))
        });
        return Outcome::Later(Pending::boxed(async move {
            Ok(match task.await {
                Ok(Ok(r)) | Ok(Err(r)) => r,
                Err(e) => Reply::err(format!("ERR read task failed: {e}")),
            })
        }));
    }
    match read_value(ctx, &key).await {
        Ok(v) => Reply::opt_bulk(v.map(|s| s.value)).into(),
        Err(r) => r.into(),
    }
}

/// How a write sets the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry (the key becomes persistent).
    None,
    /// Keep the current value's expiry (KEEPTTL, APPEND, SETRANGE).
    Keep,
    /// Expire at this absolute time in ms.
    At(u64),
}

impl Expiry {
    /// The absolute expiry of a new value given the current one.
    pub fn resolve(self, current: Option<&Sibling>) -> Option<u64> {
        match self {
            Expiry::None => None,
            Expiry::Keep => current.and_then(|s| s.expires_at_ms),
            Expiry::At(t) => Some(t),
        }
    }
}

/// Turns `EX n`/`PX n`/`EXAT n`/`PXAT n` into an absolute ms time, with Redis's checks.
pub fn expiry_from(unit: &[u8], n: &[u8], cmd: &str, now_ms: u64) -> Result<u64, Reply> {
    let n = int_arg(n)?;
    let invalid = || Reply::err(format!("ERR invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let seconds = is(unit, "ex") || is(unit, "exat");
    let ms = if seconds {
        n.checked_mul(1000).ok_or_else(invalid)?
    } else {
        n
    };
    let relative = is(unit, "ex") || is(unit, "px");
    let at = if relative {
        ms.checked_add(now_ms as i64).ok_or_else(invalid)?
    } else {
        ms
    };
    Ok(at as u64)
}

struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    expiry: Expiry,
}

fn parse_set_options(args: &[Bytes], now_ms: u64) -> Result<SetOptions, Reply> {
    let mut o = SetOptions {
        nx: false,
        xx: false,
        get: false,
        expiry: Expiry::None,
    };
    let mut has_expiry = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if is(a, "nx") && !o.xx {
            o.nx = true;
        } else if is(a, "xx") && !o.nx {
            o.xx = true;
        } else if is(a, "get") {
            o.get = true;
        } else if is(a, "keepttl") && !has_expiry {
            has_expiry = true;
            o.expiry = Expiry::Keep;
        } else if (is(a, "ex") || is(a, "px") || is(a, "exat") || is(a, "pxat")) && !has_expiry && i + 1 < args.len() {
            has_expiry = true;
            o.expiry = Expiry::At(expiry_from(a, &args[i + 1], "set", now_ms)?);
            i += 1;
        } else {
            return Err(syntax_error());
        }
        i += 1;
    }
    Ok(o)
}

/// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]
pub async fn set(ctx: &mut Ctx<'_>) -> Outcome {
    // The time matters only to relative expiries (EX, PX): no clock reading for a plain SET.
    let now = if ctx.args.len() > 3 { crate::clock::now_ms() } else { 0 };
    let o = match parse_set_options(&ctx.args[3..], now) {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    // Taken, not cloned: the request is done with them (a clone and its drop are two
    // atomic operations each, on the hottest path there is).
    let (key, value) = (std::mem::take(&mut ctx.args[1]), std::mem::take(&mut ctx.args[2]));
    let blind = !(o.nx || o.xx || o.get || o.expiry == Expiry::Keep);
    submit(ctx, key, blind, move |cur, now| {
        let old = live(cur, now);
        let old_reply = || Reply::opt_bulk(old.map(|s| s.value.clone()));
        if (o.nx && old.is_some()) || (o.xx && old.is_none()) {
            let r = if o.get { old_reply() } else { Reply::Nil };
            return (Decision::Nothing, r);
        }
        let reply = if o.get { old_reply() } else { Reply::Ok };
        let expires = o.expiry.resolve(old);
        (Decision::put(value, expires, now), reply)
    })
    .await
}

/// SETNX key value
pub async fn setnx(ctx: &mut Ctx<'_>) -> Outcome {
    let (key, value) = (ctx.args[1].clone(), ctx.args[2].clone());
    submit(ctx, key, false, move |cur, now| {
        if live(cur, now).is_some() {
            (Decision::Nothing, Reply::Int(0))
        } else {
            (Decision::put(value, None, now), Reply::Int(1))
        }
    })
    .await
}

/// SETEX key seconds value, PSETEX key milliseconds value
pub async fn setex(ctx: &mut Ctx<'_>) -> Outcome {
    let cmd = String::from_utf8_lossy(&ctx.args[0]).to_ascii_lowercase();
    let unit: &[u8] = if cmd == "setex" { b"ex" } else { b"px" };
    let at = match expiry_from(unit, &ctx.args[2], &cmd, crate::clock::now_ms()) {
        Ok(t) => t,
        Err(r) => return r.into(),
    };
    let (key, value) = (ctx.args[1].clone(), ctx.args[3].clone());
    submit(ctx, key, true, move |_, now| {
        (Decision::put(value, Some(at), now), Reply::Ok)
    })
    .await
}

/// GETSET key value
pub async fn getset(ctx: &mut Ctx<'_>) -> Outcome {
    let (key, value) = (ctx.args[1].clone(), ctx.args[2].clone());
    submit(ctx, key, false, move |cur, now| {
        let old = Reply::opt_bulk(live(cur, now).map(|s| s.value.clone()));
        (Decision::put(value, None, now), old)
    })
    .await
}

/// GETDEL key
pub async fn getdel(ctx: &mut Ctx<'_>) -> Outcome {
    let key = ctx.args[1].clone();
    submit(ctx, key, false, move |cur, now| match live(cur, now) {
        Some(s) => (Decision::delete(now), Reply::Bulk(s.value.clone())),
        None => (Decision::Nothing, Reply::Nil),
    })
    .await
}

/// GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]
pub async fn getex(ctx: &mut Ctx<'_>) -> Outcome {
    let now = crate::clock::now_ms();
    let args = &ctx.args[2..];
    let expiry = match args {
        [] => None,
        [p] if is(p, "persist") => Some(Expiry::None),
        [unit, n] if is(unit, "ex") || is(unit, "px") || is(unit, "exat") || is(unit, "pxat") => {
            match expiry_from(unit, n, "getex", now) {
                Ok(t) => Some(Expiry::At(t)),
                Err(r) => return r.into(),
            }
        }
        _ => return syntax_error().into(),
    };
    let key = ctx.args[1].clone();
    let Some(expiry) = expiry else {
        return get(ctx).await;
    };
    submit(ctx, key, false, move |cur, now| match live(cur, now) {
        Some(s) => {
            let reply = Reply::Bulk(s.value.clone());
            if expiry == Expiry::None && s.expires_at_ms.is_none() {
                return (Decision::Nothing, reply);
            }
            (Decision::put(s.value.clone(), expiry.resolve(Some(s)), now), reply)
        }
        None => (Decision::Nothing, Reply::Nil),
    })
    .await
}

/// MGET key [key ...]
pub async fn mget(ctx: &mut Ctx<'_>) -> Reply {
    let keys: Vec<Bytes> = ctx.args[1..].to_vec();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        match read_value(ctx, &k).await {
            Ok(v) => out.push(Reply::opt_bulk(v.map(|s| s.value))),
            Err(r) => return r,
        }
    }
    Reply::Array(out)
}

/// MSET key value [key value ...], MSETNX (only when no key exists; atomic on a node)
pub async fn mset(ctx: &mut Ctx<'_>, only_if_none: bool) -> Outcome {
    if ctx.args.len() % 2 == 0 {
        let name = if only_if_none { "msetnx" } else { "mset" };
        return Reply::err(format!("ERR wrong number of arguments for '{name}' command")).into();
    }
    // A key given twice takes its last value, as in Redis.
    let mut index: ahash::AHashMap<Bytes, usize> = ahash::AHashMap::with_capacity(ctx.args.len() / 2);
    let mut pairs: Vec<(Bytes, Bytes)> = Vec::with_capacity(ctx.args.len() / 2);
    for kv in ctx.args[1..].chunks(2) {
        match index.get(&kv[0]) {
            Some(&i) => pairs[i].1 = kv[1].clone(),
            None => {
                index.insert(kv[0].clone(), pairs.len());
                pairs.push((kv[0].clone(), kv[1].clone()));
            }
        }
    }
    let keys: Vec<Bytes> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let submitted = ctx
        .node
        .coord
        .submit_many(keys, !only_if_none, move |sets, now| {
            if only_if_none && sets.iter().any(|s| live(s.as_ref(), now).is_some()) {
                return (vec![Decision::Nothing; sets.len()], Reply::Int(0));
            }
            let decisions = pairs.into_iter().map(|(_, v)| Decision::put(v, None, now)).collect();
            (decisions, if only_if_none { Reply::Int(1) } else { Reply::Ok })
        })
        .await;
    match submitted {
        Ok(p) => Outcome::Later(p),
        Err(e) => coord_error(e).into(),
    }
}

fn too_big() -> Reply {
    Reply::err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
}

/// APPEND key value (keeps the expiry)
pub async fn append(ctx: &mut Ctx<'_>) -> Outcome {
    let (key, tail) = (ctx.args[1].clone(), ctx.args[2].clone());
    let max = ctx.node.config.max_bulk_len;
    submit(ctx, key, false, move |cur, now| {
        let old = live(cur, now);
        let head = old.map(|s| s.value.clone()).unwrap_or_default();
        if head.len() + tail.len() > max {
            return (Decision::Nothing, too_big());
        }
        let mut v = BytesMut::with_capacity(head.len() + tail.len());
        v.extend_from_slice(&head);
        v.extend_from_slice(&tail);
        let len = v.len() as i64;
        (
            Decision::put(v.freeze(), Expiry::Keep.resolve(old), now),
            Reply::Int(len),
        )
    })
    .await
}

/// STRLEN key
pub async fn strlen(ctx: &mut Ctx<'_>) -> Reply {
    let key = ctx.args[1].clone();
    match read_value(ctx, &key).await {
        Ok(v) => Reply::Int(v.map(|s| s.value.len() as i64).unwrap_or(0)),
        Err(r) => r,
    }
}

/// The byte range `[start, end]` of GETRANGE over a value of `len` bytes, Redis-style.
fn range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return None;
    }
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if end < 0 { len + end } else { end };
    s = s.max(0);
    e = e.max(0);
    e = e.min(len - 1);
    if s > e {
        return None;
    }
    Some((s as usize, e as usize))
}

/// GETRANGE key start end
pub async fn getrange(ctx: &mut Ctx<'_>) -> Reply {
    let (start, end) = match (int_arg(&ctx.args[2]), int_arg(&ctx.args[3])) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let key = ctx.args[1].clone();
    match read_value(ctx, &key).await {
        Ok(Some(s)) => match range(start, end, s.value.len()) {
            Some((a, b)) => Reply::Bulk(s.value.slice(a..=b)),
            None => Reply::bulk(Bytes::new()),
        },
        Ok(None) => Reply::bulk(Bytes::new()),
        Err(r) => r,
    }
}

/// SETRANGE key offset value (keeps the expiry; pads with zero bytes)
pub async fn setrange(ctx: &mut Ctx<'_>) -> Outcome {
    let offset = match int_arg(&ctx.args[2]) {
        Ok(o) if o >= 0 => o as usize,
        Ok(_) => return Reply::err("ERR offset is out of range").into(),
        Err(r) => return r.into(),
    };
    let (key, patch) = (ctx.args[1].clone(), ctx.args[3].clone());
    let max = ctx.node.config.max_bulk_len;
    if !patch.is_empty() && offset.saturating_add(patch.len()) > max {
        return too_big().into();
    }
    submit(ctx, key, false, move |cur, now| {
        let old = live(cur, now);
        let cur_len = old.map(|s| s.value.len()).unwrap_or(0);
        if patch.is_empty() {
            return (Decision::Nothing, Reply::Int(cur_len as i64));
        }
        let mut v = BytesMut::from(old.map(|s| &s.value[..]).unwrap_or(&[]));
        if v.len() < offset + patch.len() {
            v.resize(offset + patch.len(), 0);
        }
        v[offset..offset + patch.len()].copy_from_slice(&patch);
        let len = v.len() as i64;
        (
            Decision::put(v.freeze(), Expiry::Keep.resolve(old), now),
            Reply::Int(len),
        )
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn getrange_like_redis() {
        // "This is a string" (16 bytes)
        assert_eq!(range(0, 3, 16), Some((0, 3)));
        assert_eq!(range(-3, -1, 16), Some((13, 15)));
        assert_eq!(range(0, -1, 16), Some((0, 15)));
        assert_eq!(range(10, 100, 16), Some((10, 15)));
        assert_eq!(range(5, 3, 16), None);
        assert_eq!(range(-1, -5, 16), None);
        assert_eq!(range(0, 0, 0), None);
        assert_eq!(range(-100, 2, 16), Some((0, 2)));
    }
}
