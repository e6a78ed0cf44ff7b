//! Keyspace commands: DEL, UNLINK, EXISTS, TYPE, the EXPIRE family, TTL family, PERSIST,
//! SCAN and KEYS. Must not touch storage: reads and writes go through the coordinator.

use bytes::Bytes;

use super::strings::{live, read_value, submit};
use super::util::{coord_error, glob_match, int_arg, is, syntax_error};
use super::{Ctx, Outcome};
use crate::coordinator::{Decision, Pending};
use crate::resp::reply::Reply;

/// DEL key [key ...] and UNLINK: writes a tombstone over each live key; replies the count.
pub async fn del(ctx: &mut Ctx<'_>) -> Outcome {
    let mut seen = ahash::AHashSet::with_capacity(ctx.args.len() - 1);
    let keys: Vec<Bytes> = ctx.args[1..].iter().filter(|k| seen.insert(*k)).cloned().collect();
    let submitted = ctx
        .node
        .coord
        .submit_many(keys, false, |sets, now| {
            let mut n = 0;
            let decisions = sets
                .iter()
                .map(|s| {
                    if live(s.as_ref(), now).is_some() {
                        n += 1;
                        Decision::delete(now)
                    } else {
                        Decision::Nothing
                    }
                })
                .collect();
            (decisions, Reply::Int(n))
        })
        .await;
    match submitted {
        Ok(p) => Outcome::Later(Pending::boxed(async move { Ok(p.await.unwrap_or_else(coord_error)) })),
        Err(e) => coord_error(e).into(),
    }
}

/// EXISTS key [key ...]: how many of the keys (repeats counted) hold a live value.
pub async fn exists(ctx: &mut Ctx<'_>) -> Reply {
    let now = crate::clock::now_ms();
    let mut n = 0;
    for k in &ctx.args[1..] {
        match ctx.node.coord.read(k).await {
            Ok(set) if live(set.as_ref(), now).is_some() => n += 1,
            Ok(_) => {}
            Err(e) => return coord_error(e),
        }
    }
    Reply::Int(n)
}

/// TYPE key: `string` or `none` (dynkv stores strings only).
pub async fn key_type(ctx: &mut Ctx<'_>) -> Reply {
    let key = ctx.args[1].clone();
    match read_value(ctx, &key).await {
        Ok(Some(_)) => Reply::status("string"),
        Ok(None) => Reply::status("none"),
        Err(r) => r,
    }
}

#[derive(Clone, Copy)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

fn parse_expire_flags(args: &[Bytes]) -> Result<ExpireFlags, Reply> {
    let mut f = ExpireFlags {
        nx: false,
        xx: false,
        gt: false,
        lt: false,
    };
    for a in args {
        if is(a, "nx") {
            f.nx = true;
        } else if is(a, "xx") {
            f.xx = true;
        } else if is(a, "gt") {
            f.gt = true;
        } else if is(a, "lt") {
            f.lt = true;
        } else {
            return Err(Reply::err(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(a)
            )));
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        return Err(Reply::err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if f.gt && f.lt {
        return Err(Reply::err("ERR GT and LT options at the same time are not compatible"));
    }
    Ok(f)
}

/// EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT key time [NX|XX|GT|LT]: 1 if the expiry was set.
/// A time in the past deletes the key, as in Redis.
pub async fn expire(ctx: &mut Ctx<'_>, cmd: &'static str) -> Outcome {
    let n = match int_arg(&ctx.args[2]) {
        Ok(n) => n,
        Err(r) => return r.into(),
    };
    let flags = match parse_expire_flags(&ctx.args[3..]) {
        Ok(f) => f,
        Err(r) => return r.into(),
    };
    let invalid = || Reply::err(format!("ERR invalid expire time in '{cmd}' command"));
    let seconds = cmd == "expire" || cmd == "expireat";
    let relative = cmd == "expire" || cmd == "pexpire";
    let Some(ms) = (if seconds { n.checked_mul(1000) } else { Some(n) }) else {
        return invalid().into();
    };
    let now = crate::clock::now_ms();
    let at = if relative { ms.checked_add(now as i64) } else { Some(ms) };
    let Some(at) = at else {
        return invalid().into();
    };
    let key = ctx.args[1].clone();
    submit(ctx, key, false, move |cur, now| {
        let Some(s) = live(cur, now) else {
            return (Decision::Nothing, Reply::Int(0));
        };
        let current = s.expires_at_ms;
        let ok = match current {
            _ if flags.nx => current.is_none(),
            None if flags.xx || flags.gt => false,
            Some(c) if flags.gt => at > c as i64,
            Some(c) if flags.lt => at < c as i64,
            _ => true,
        };
        if !ok {
            return (Decision::Nothing, Reply::Int(0));
        }
        if at <= now as i64 {
            return (Decision::delete(now), Reply::Int(1));
        }
        (Decision::put(s.value.clone(), Some(at as u64), now), Reply::Int(1))
    })
    .await
}

/// TTL/PTTL/EXPIRETIME/PEXPIRETIME key: -2 when missing, -1 when persistent.
pub async fn ttl(ctx: &mut Ctx<'_>, cmd: &'static str) -> Reply {
    let key = ctx.args[1].clone();
    let now = crate::clock::now_ms();
    let s = match ctx.node.coord.read(&key).await {
        Ok(set) => live(set.as_ref(), now).cloned(),
        Err(e) => return coord_error(e),
    };
    let Some(s) = s else {
        return Reply::Int(-2);
    };
    let Some(at) = s.expires_at_ms else {
        return Reply::Int(-1);
    };
    let left = at.saturating_sub(now) as i64;
    Reply::Int(match cmd {
        "ttl" => (left + 500) / 1000,
        "pttl" => left,
        "expiretime" => (at / 1000) as i64,
        _ => at as i64,
    })
}

/// PERSIST key: 1 if an expiry was removed.
pub async fn persist(ctx: &mut Ctx<'_>) -> Outcome {
    let key = ctx.args[1].clone();
    submit(ctx, key, false, |cur, now| match live(cur, now) {
        Some(s) if s.expires_at_ms.is_some() => (Decision::put(s.value.clone(), None, now), Reply::Int(1)),
        _ => (Decision::Nothing, Reply::Int(0)),
    })
    .await
}

/// SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]. The cursor is a position in dynkv's key
/// order (partition, then key hash): every key present for the whole iteration is
/// returned; COUNT bounds the records examined per call.
pub async fn scan(ctx: &mut Ctx<'_>) -> Reply {
    let Some(cursor) = std::str::from_utf8(&ctx.args[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Reply::err("ERR invalid cursor");
    };
    let mut pattern: Option<Bytes> = None;
    let mut count = 10usize;
    let mut type_ok = true;
    let mut i = 2;
    while i < ctx.args.len() {
        let a = &ctx.args[i];
        let Some(v) = ctx.args.get(i + 1) else {
            return syntax_error();
        };
        if is(a, "match") {
            pattern = Some(v.clone());
        } else if is(a, "count") {
            match int_arg(v) {
                Ok(n) if n >= 1 => count = (n as usize).min(1 << 20),
                Ok(_) => return syntax_error(),
                Err(r) => return r,
            }
        } else if is(a, "type") {
            type_ok = is(v, "string");
        } else {
            return syntax_error();
        }
        i += 2;
    }
    let (next, items) = match ctx.node.coord.scan(cursor, count).await {
        Ok(r) => r,
        Err(e) => return coord_error(e),
    };
    let now = crate::clock::now_ms();
    let keys = items
        .into_iter()
        .filter(|it| type_ok && !it.set.is_dead(now))
        .filter(|it| pattern.as_ref().is_none_or(|p| glob_match(p, &it.key)))
        .map(|it| Reply::Bulk(it.key))
        .collect();
    Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
}

/// KEYS pattern: every live key matching the glob (walks the whole store; prefer SCAN).
pub async fn keys(ctx: &mut Ctx<'_>) -> Reply {
    let pattern = ctx.args[1].clone();
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, items) = match ctx.node.coord.scan(cursor, 1000).await {
            Ok(r) => r,
            Err(e) => return coord_error(e),
        };
        let now = crate::clock::now_ms();
        out.extend(
            items
                .into_iter()
                .filter(|it| !it.set.is_dead(now) && glob_match(&pattern, &it.key))
                .map(|it| Reply::Bulk(it.key)),
        );
        if next == 0 {
            return Reply::Array(out);
        }
        cursor = next;
    }
}

/// Counts live keys (DBSIZE, INFO keyspace): over the whole cluster, each member counting
/// the partitions it leads.
pub async fn count_keys(ctx: &Ctx<'_>) -> Result<(u64, u64), Reply> {
    ctx.node.coord.count_all().await.map_err(coord_error)
}
