//! Commands: the table of every command dynkv knows (name, arity, flags, key positions;
//! COMMAND answers from it), argument checks, and dispatch to the family files. Must not
//! touch storage directly: handlers go through the coordinator.
//!
//! Families: [`connection`] (PING, HELLO, AUTH, CLIENT, ...), [`server`] (COMMAND, INFO,
//! CONFIG, DBSIZE, FLUSHALL, SHUTDOWN, ...), [`strings`] (GET, SET, APPEND, ...),
//! [`keyspace`] (DEL, EXISTS, EXPIRE, TTL, SCAN, ...), [`siblings`] (SIBLINGS, RESOLVE).

pub mod admin;
pub mod cluster;
pub mod connection;
pub mod keyspace;
pub mod route;
pub mod server;
pub mod siblings;
pub mod strings;
pub mod util;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::client::Client;
use super::reply::Reply;
use crate::coordinator::Pending;
use crate::node::Node;

/// The result of running a command: a reply now, or one that follows a submitted write.
pub enum Outcome {
    /// Reply immediately.
    Now(Reply),
    /// The write is queued; the reply comes when it is durable. The connection may run
    /// further pipelined writes before awaiting it.
    Later(Pending<Reply>),
}

impl From<Reply> for Outcome {
    fn from(r: Reply) -> Self {
        Outcome::Now(r)
    }
}

/// What a handler gets: the node, this connection's state, and the request's arguments
/// (`args[0]` is the command name as sent).
pub struct Ctx<'a> {
    /// The node.
    pub node: &'a Arc<Node>,
    /// This connection.
    pub client: &'a mut Client,
    /// The request.
    pub args: Vec<Bytes>,
    /// Set when the request was already routed (forwarded here, or split by key): it runs
    /// here whatever the placement says, so a request never hops twice.
    pub routed: bool,
}

/// One command's static description.
#[derive(Debug)]
pub struct Spec {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis arity: exact count when positive, minimum count when negative (name included).
    pub arity: i32,
    /// COMMAND flags.
    pub flags: &'static [&'static str],
    /// First key argument (0 = none), last (-1 = to the end), step.
    pub keys: (i32, i32, i32),
    /// Command group (COMMAND DOCS).
    pub group: &'static str,
    /// One-line summary (COMMAND DOCS).
    pub summary: &'static str,
}

const W: &[&str] = &["write"];
const R: &[&str] = &["readonly", "fast"];
const WF: &[&str] = &["write", "fast"];
const C: &[&str] = &["fast", "no-auth"];
const A: &[&str] = &["admin"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $keys:expr, $group:literal, $summary:literal) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            keys: $keys,
            group: $group,
            summary: $summary,
        }
    };
}

/// Every command dynkv answers.
#[rustfmt::skip]
pub static COMMANDS: &[Spec] = &[
    spec!("ping", -1, &["fast"], (0, 0, 0), "connection", "Returns the server's liveliness response."),
    spec!("echo", 2, &["fast"], (0, 0, 0), "connection", "Returns the given string."),
    spec!("hello", -1, C, (0, 0, 0), "connection", "Handshakes with the server, optionally switching protocol."),
    spec!("auth", -2, C, (0, 0, 0), "connection", "Authenticates the connection."),
    spec!("select", 2, &["fast"], (0, 0, 0), "connection", "Changes the selected database (only 0 exists)."),
    spec!("quit", -1, C, (0, 0, 0), "connection", "Closes the connection."),
    spec!("reset", 1, C, (0, 0, 0), "connection", "Resets the connection."),
    spec!("client", -2, &["admin"], (0, 0, 0), "connection", "Connection management (SETNAME, GETNAME, ID, INFO, LIST, SETINFO, NO-EVICT, NO-TOUCH)."),
    spec!("command", -1, &["loading"], (0, 0, 0), "server", "Returns details about commands."),
    spec!("info", -1, &["loading"], (0, 0, 0), "server", "Returns information and statistics about the server."),
    spec!("config", -2, A, (0, 0, 0), "server", "Reads configuration parameters (GET); SET and RESETSTAT are accepted for a few."),
    spec!("dbsize", 1, &["readonly"], (0, 0, 0), "server", "Returns the number of live keys."),
    spec!("time", 1, &["fast"], (0, 0, 0), "server", "Returns the server time."),
    spec!("flushall", -1, W, (0, 0, 0), "server", "Removes all keys."),
    spec!("flushdb", -1, W, (0, 0, 0), "server", "Removes all keys of the (only) database."),
    spec!("shutdown", -1, A, (0, 0, 0), "server", "Stops the node cleanly."),
    spec!("get", 2, R, (1, 1, 1), "string", "Returns the value of a key."),
    spec!("set", -3, W, (1, 1, 1), "string", "Sets the value of a key, with optional expiry and conditions."),
    spec!("setnx", 3, WF, (1, 1, 1), "string", "Sets a key only if it does not exist."),
    spec!("setex", 4, W, (1, 1, 1), "string", "Sets a key with an expiry in seconds."),
    spec!("psetex", 4, W, (1, 1, 1), "string", "Sets a key with an expiry in milliseconds."),
    spec!("getset", 3, WF, (1, 1, 1), "string", "Sets a key and returns its old value."),
    spec!("getdel", 2, WF, (1, 1, 1), "string", "Returns a key's value and deletes it."),
    spec!("getex", -2, WF, (1, 1, 1), "string", "Returns a key's value and changes its expiry."),
    spec!("mget", -2, R, (1, -1, 1), "string", "Returns the values of several keys."),
    spec!("mset", -3, W, (1, -1, 2), "string", "Sets several keys."),
    spec!("msetnx", -3, W, (1, -1, 2), "string", "Sets several keys only if none exists."),
    spec!("append", 3, W, (1, 1, 1), "string", "Appends to a key's value."),
    spec!("strlen", 2, R, (1, 1, 1), "string", "Returns the length of a key's value."),
    spec!("getrange", 4, &["readonly"], (1, 1, 1), "string", "Returns a substring of a key's value."),
    spec!("substr", 4, &["readonly"], (1, 1, 1), "string", "Returns a substring of a key's value (old name of GETRANGE)."),
    spec!("setrange", 4, W, (1, 1, 1), "string", "Overwrites part of a key's value."),
    spec!("incr", 2, WF, (1, 1, 1), "string", "Not supported yet."),
    spec!("decr", 2, WF, (1, 1, 1), "string", "Not supported yet."),
    spec!("incrby", 3, WF, (1, 1, 1), "string", "Not supported yet."),
    spec!("decrby", 3, WF, (1, 1, 1), "string", "Not supported yet."),
    spec!("incrbyfloat", 3, WF, (1, 1, 1), "string", "Not supported yet."),
    spec!("del", -2, W, (1, -1, 1), "keyspace", "Deletes keys (writes tombstones)."),
    spec!("unlink", -2, WF, (1, -1, 1), "keyspace", "Deletes keys (same as DEL)."),
    spec!("exists", -2, R, (1, -1, 1), "keyspace", "Counts how many of the given keys exist."),
    spec!("type", 2, R, (1, 1, 1), "keyspace", "Returns the type of a key (string or none)."),
    spec!("expire", -3, WF, (1, 1, 1), "keyspace", "Sets a key's time to live in seconds."),
    spec!("pexpire", -3, WF, (1, 1, 1), "keyspace", "Sets a key's time to live in milliseconds."),
    spec!("expireat", -3, WF, (1, 1, 1), "keyspace", "Sets a key's expiry as a Unix time in seconds."),
    spec!("pexpireat", -3, WF, (1, 1, 1), "keyspace", "Sets a key's expiry as a Unix time in milliseconds."),
    spec!("ttl", 2, R, (1, 1, 1), "keyspace", "Returns a key's time to live in seconds."),
    spec!("pttl", 2, R, (1, 1, 1), "keyspace", "Returns a key's time to live in milliseconds."),
    spec!("expiretime", 2, R, (1, 1, 1), "keyspace", "Returns a key's expiry as a Unix time in seconds."),
    spec!("pexpiretime", 2, R, (1, 1, 1), "keyspace", "Returns a key's expiry as a Unix time in milliseconds."),
    spec!("persist", 2, WF, (1, 1, 1), "keyspace", "Removes a key's expiry."),
    spec!("scan", -2, &["readonly"], (0, 0, 0), "keyspace", "Iterates over keys with a cursor."),
    spec!("keys", 2, &["readonly"], (0, 0, 0), "keyspace", "Returns all keys matching a pattern."),
    spec!("siblings", 2, &["readonly"], (1, 1, 1), "dynkv", "Returns a key's causal context and every live sibling value."),
    spec!("resolve", -4, W, (1, 1, 1), "dynkv", "Writes a value with a context, replacing the siblings it covers."),
    spec!("dynkv.local", 2, &["readonly"], (0, 0, 0), "dynkv", "Returns this node's own copy of a key, shaped like SIBLINGS."),
    spec!("dynkv.status", 1, A, (0, 0, 0), "dynkv", "Shows the members, their states and weights, and partition transfers."),
    spec!("dynkv.ring", 1, A, (0, 0, 0), "dynkv", "Shows partitions led and replicated per member, now and after the current change."),
    spec!("dynkv.leave", -1, A, (0, 0, 0), "dynkv", "Asks this node (or the given one) to leave the cluster, handing its data over."),
    spec!("dynkv.remove", 2, A, (0, 0, 0), "dynkv", "Removes a member (a dead node) from the cluster; its replicas are rebuilt elsewhere."),
    spec!("dynkv.weight", 3, A, (0, 0, 0), "dynkv", "Changes a member's placement weight; partitions move accordingly."),
    spec!("cluster", -2, &["loading"], (0, 0, 0), "cluster", "Cluster layout for cluster-aware clients (SLOTS, SHARDS, NODES, INFO, KEYSLOT, MYID)."),
    spec!("readonly", 1, &["fast", "loading"], (0, 0, 0), "cluster", "Accepted: replicas serve reads through quorums anyway."),
    spec!("readwrite", 1, &["fast", "loading"], (0, 0, 0), "cluster", "Accepted."),
];

/// The spec of a command name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    lookup_index(name).map(|i| &COMMANDS[i])
}

/// The position of a command in [`COMMANDS`], case-insensitively.
pub fn lookup_index(name: &[u8]) -> Option<usize> {
    /// Longer than every command name: such a name is unknown without a lookup.
    const LONGEST: usize = 32;
    static BY_NAME: OnceLock<ahash::AHashMap<&'static [u8], usize>> = OnceLock::new();
    let by_name = BY_NAME.get_or_init(|| {
        COMMANDS
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_bytes(), i))
            .collect()
    });
    let mut lower = [0u8; LONGEST];
    let lower = lower.get_mut(..name.len())?;
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    by_name.get(&*lower).copied()
}

/// Runs one request.
pub async fn dispatch(ctx: Ctx<'_>) -> Outcome {
    let index = lookup_index(&ctx.args[0]);
    run(ctx, index).await
}

/// Runs a request whose name was already looked up: `index` is its position in
/// [`COMMANDS`] (`None`: unknown command).
pub async fn run(mut ctx: Ctx<'_>, index: Option<usize>) -> Outcome {
    let Some(i) = index else {
        return Reply::err(util::unknown_command(&ctx.args)).into();
    };
    let spec = &COMMANDS[i];
    ctx.client.touch(i);
    let argc = ctx.args.len() as i32;
    if (spec.arity > 0 && argc != spec.arity) || (spec.arity < 0 && argc < -spec.arity) {
        return Reply::err(format!("ERR wrong number of arguments for '{}' command", spec.name)).into();
    }
    if !ctx.client.authenticated && !spec.flags.contains(&"no-auth") {
        return Reply::err("NOAUTH Authentication required.").into();
    }
    if let Some(c) = ctx.node.coord.cluster()
        && (spec.keys.0 > 0 || matches!(spec.name, "scan" | "keys" | "dbsize"))
        && !c.membership.has_met()
    {
        return Reply::err("CLUSTERDOWN this node has not reached any other member of its cluster yet").into();
    }
    if !ctx.routed && spec.keys.0 > 0 && ctx.node.coord.cluster().is_some() {
        if let Some(outcome) = route::route(&mut ctx, spec).await {
            return outcome;
        }
    }
    match spec.name {
        // The hottest commands first: a match on strings tries its arms in order.
        "get" => strings::get(&mut ctx).await,
        "set" => strings::set(&mut ctx).await,
        "ping" => connection::ping(&mut ctx).into(),
        "echo" => Reply::Bulk(ctx.args[1].clone()).into(),
        "hello" => connection::hello(&mut ctx).into(),
        "auth" => connection::auth(&mut ctx).into(),
        "select" => connection::select(&mut ctx).into(),
        "quit" => {
            ctx.client.closing = true;
            Reply::Ok.into()
        }
        "reset" => connection::reset(&mut ctx).into(),
        "client" => connection::client(&mut ctx).into(),
        "command" => server::command(&mut ctx).into(),
        "info" => server::info(&mut ctx).await.into(),
        "config" => server::config(&mut ctx).into(),
        "dbsize" => server::dbsize(&mut ctx).await.into(),
        "time" => server::time().into(),
        "flushall" | "flushdb" => server::flushall(&mut ctx).await.into(),
        "shutdown" => server::shutdown(&mut ctx).into(),
        "setnx" => strings::setnx(&mut ctx).await,
        "setex" | "psetex" => strings::setex(&mut ctx).await,
        "getset" => strings::getset(&mut ctx).await,
        "getdel" => strings::getdel(&mut ctx).await,
        "getex" => strings::getex(&mut ctx).await,
        "mget" => strings::mget(&mut ctx).await.into(),
        "mset" => strings::mset(&mut ctx, false).await,
        "msetnx" => strings::mset(&mut ctx, true).await,
        "append" => strings::append(&mut ctx).await,
        "strlen" => strings::strlen(&mut ctx).await.into(),
        "getrange" | "substr" => strings::getrange(&mut ctx).await.into(),
        "setrange" => strings::setrange(&mut ctx).await,
        "incr" | "decr" | "incrby" | "decrby" | "incrbyfloat" => Reply::err(format!(
            "ERR '{}' is not supported yet: counters need conflict-free merging across replicas and come in a later dynkv release",
            spec.name
        ))
        .into(),
        "del" | "unlink" => keyspace::del(&mut ctx).await,
        "exists" => keyspace::exists(&mut ctx).await.into(),
        "type" => keyspace::key_type(&mut ctx).await.into(),
        "expire" | "pexpire" | "expireat" | "pexpireat" => keyspace::expire(&mut ctx, spec.name).await,
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => keyspace::ttl(&mut ctx, spec.name).await.into(),
        "persist" => keyspace::persist(&mut ctx).await,
        "scan" => keyspace::scan(&mut ctx).await.into(),
        "keys" => keyspace::keys(&mut ctx).await.into(),
        "siblings" => siblings::siblings(&mut ctx).await.into(),
        "resolve" => siblings::resolve(&mut ctx).await,
        "dynkv.local" => siblings::local(&mut ctx).into(),
        "dynkv.status" => admin::status(&mut ctx).into(),
        "dynkv.ring" => admin::ring(&mut ctx).into(),
        "dynkv.leave" | "dynkv.remove" | "dynkv.weight" => admin::change(&mut ctx, spec.name).into(),
        "cluster" => cluster::cluster(&mut ctx).into(),
        "readonly" | "readwrite" => Reply::Ok.into(),
        _ => Reply::err(util::unknown_command(&ctx.args)).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_found_in_any_case_and_nothing_else() {
        for (i, spec) in COMMANDS.iter().enumerate() {
            assert_eq!(lookup_index(spec.name.as_bytes()), Some(i), "{}", spec.name);
            assert_eq!(
                lookup_index(spec.name.to_uppercase().as_bytes()),
                Some(i),
                "{}",
                spec.name
            );
        }
        assert_eq!(lookup_index(b"gEt"), lookup_index(b"get"));
        for unknown in [&b""[..], b"ge", b"gett", b"get\0", &[b'g'; 100], b"\xff\xfe"] {
            assert_eq!(lookup_index(unknown), None, "{unknown:?}");
        }
    }
}
