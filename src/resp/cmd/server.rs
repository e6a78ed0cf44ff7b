//! Server commands: COMMAND, INFO, CONFIG, DBSIZE, TIME, FLUSHALL/FLUSHDB, SHUTDOWN. Must
//! not change keys except through the coordinator (FLUSHALL).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::connection::COMPAT_REDIS_VERSION;
use super::keyspace::count_keys;
use super::util::{coord_error, glob_match, is, syntax_error};
use super::{COMMANDS, Ctx, Spec, lookup};
use crate::resp::reply::Reply;

fn status_list(items: &[&'static str]) -> Reply {
    Reply::Set(
        items
            .iter()
            .map(|s| Reply::Status(Bytes::from_static(s.as_bytes())))
            .collect(),
    )
}

fn command_entry(s: &Spec) -> Reply {
    let category = if s.flags.contains(&"write") {
        "@write"
    } else if s.flags.contains(&"readonly") {
        "@read"
    } else {
        "@connection"
    };
    Reply::Array(vec![
        Reply::bulk(s.name),
        Reply::Int(i64::from(s.arity)),
        status_list(s.flags),
        Reply::Int(i64::from(s.keys.0)),
        Reply::Int(i64::from(s.keys.1)),
        Reply::Int(i64::from(s.keys.2)),
        status_list(&[category]),
        Reply::Set(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

fn command_doc(s: &Spec) -> Reply {
    Reply::Map(vec![
        (Reply::bulk("summary"), Reply::bulk(s.summary)),
        (Reply::bulk("since"), Reply::bulk("1.0.0")),
        (Reply::bulk("group"), Reply::bulk(s.group)),
    ])
}

/// COMMAND [COUNT | INFO name... | DOCS [name...] | LIST]
pub fn command(ctx: &mut Ctx<'_>) -> Reply {
    if ctx.args.len() == 1 {
        return Reply::Array(COMMANDS.iter().map(command_entry).collect());
    }
    let sub = ctx.args[1].clone();
    let names = &ctx.args[2..];
    let sub_name = String::from_utf8_lossy(&sub).to_ascii_lowercase();
    match sub_name.as_str() {
        "count" if !names.is_empty() => Reply::err("ERR wrong number of arguments for 'command|count' command"),
        "count" => Reply::Int(COMMANDS.len() as i64),
        "list" => Reply::Array(COMMANDS.iter().map(|s| Reply::bulk(s.name)).collect()),
        "info" if names.is_empty() => Reply::Array(COMMANDS.iter().map(command_entry).collect()),
        "info" => Reply::Array(
            names
                .iter()
                .map(|n| lookup(n).map(command_entry).unwrap_or(Reply::Nil))
                .collect(),
        ),
        "docs" => {
            let specs: Vec<&Spec> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| lookup(n)).collect()
            };
            Reply::Map(
                specs
                    .into_iter()
                    .map(|s| (Reply::bulk(s.name), command_doc(s)))
                    .collect(),
            )
        }
        _ => Reply::err(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&sub)
        )),
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}G", b / 1024.0 / 1024.0 / 1024.0)
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.2}M", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.2}K", b / 1024.0)
    } else {
        format!("{bytes}B")
    }
}

/// INFO [section ...]: Redis's sections and field names, so dashboards and tools parse it.
pub async fn info(ctx: &mut Ctx<'_>) -> Reply {
    let wanted: Vec<String> = ctx.args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty() || wanted.iter().any(|w| w == "all" || w == "everything" || w == "default");
    let want = |s: &str| all || wanted.iter().any(|w| w == s);
    let node = ctx.node;
    let st = &node.stats;
    let mut out = String::new();
    let uptime = node.started.elapsed().as_secs();
    if want("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:{COMPAT_REDIS_VERSION}\r\ndynkv_version:{}\r\nredis_mode:standalone\r\nos:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nnode_id:{:016x}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            std::process::id(),
            node.run_id,
            node.bound_port.load(Ordering::Relaxed),
            uptime / 86400,
            node.coord.node_id(),
        );
    }
    if want("clients") {
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\n\r\n",
            node.client_count(),
            node.config.max_clients
        );
    }
    let store = node.coord.store();
    let figures = store.figures().ok();
    if want("memory") {
        let rss = rss_bytes();
        let (map, used) = figures
            .map(|f| (f.map_size as u64, f.used_bytes as u64))
            .unwrap_or((0, 0));
        let _ = write!(
            out,
            "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\nused_memory_rss_human:{}\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\nmaxmemory_policy:noeviction\r\nlmdb_map_size:{map}\r\nlmdb_used_bytes:{used}\r\n\r\n",
            human(rss),
            human(rss),
        );
    }
    if want("persistence") {
        let s = store.stats();
        let _ = write!(
            out,
            "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:0\r\nrdb_bgsave_in_progress:0\r\naof_enabled:0\r\naof_rewrite_in_progress:0\r\nstorage_engine:lmdb\r\nfsync:{}\r\nlmdb_commits:{}\r\nlmdb_writes:{}\r\nlmdb_max_batch:{}\r\nlmdb_map_resizes:{}\r\nlmdb_failed_commits:{}\r\n\r\n",
            node.config.fsync.as_str(),
            s.commits.get(),
            s.writes.get(),
            s.max_batch.load(Ordering::Relaxed),
            s.map_resizes.load(Ordering::Relaxed),
            s.failed_commits.load(Ordering::Relaxed),
        );
    }
    if want("stats") {
        let l = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ninstantaneous_ops_per_sec:0\r\ntotal_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:0\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\ntotal_error_replies:{}\r\nforwarded_requests:{}\r\nread_repairs:{}\r\nquorum_failures:{}\r\npeer_requests:{}\r\n\r\n",
            st.connections_received.get(),
            st.commands_processed.get(),
            st.net_input_bytes.get(),
            st.net_output_bytes.get(),
            st.rejected_connections.get(),
            l(&store.stats().reaped),
            st.keyspace_hits.get(),
            st.keyspace_misses.get(),
            st.error_replies.get(),
            l(&node.coord.stats().forwards),
            l(&node.coord.stats().read_repairs),
            l(&node.coord.stats().quorum_failures),
            l(&node.coord.stats().peer_requests),
        );
    }
    if want("cluster") {
        let coord = &node.coord;
        let q = coord.quorum();
        let _ = write!(
            out,
            "# Cluster\r\nnode_id:{:016x}\r\nn:{}\r\nr:{}\r\nw:{}\r\n",
            coord.node_id(),
            q.n,
            q.r,
            q.w
        );
        if let Some(c) = coord.cluster() {
            let view = c.membership.view();
            let down = c.health.down(std::time::Instant::now());
            let me = coord.node_id();
            let (mut led, mut held) = (0, 0);
            for p in 0..16384u16 {
                let replicas = view.replicas(p, q.n);
                led += usize::from(replicas.first() == Some(&me));
                held += usize::from(replicas.contains(&me));
            }
            let _ = write!(
                out,
                "cluster_members:{}\r\npeers_up:{}\r\npeers_down:{}\r\npartitions_led:{led}\r\npartitions_replicated:{held}\r\n",
                view.members().len(),
                view.members().len().saturating_sub(1 + down.len()),
                down.len()
            );
            let count = |st: crate::cluster::MemberState| view.records().iter().filter(|r| r.state() == st).count();
            let rb = coord.rebalance_stats();
            let _ = write!(
                out,
                "ring_state:{}\r\nmembers_joining:{}\r\nmembers_leaving:{}\r\nmembers_removed:{}\r\ntransfer_partitions_total:{}\r\ntransfer_partitions_done:{}\r\ntransfer_keys:{}\r\ntransfer_bytes:{}\r\ntransfer_bytes_per_sec:{:.0}\r\nhandover_keys_dropped:{}\r\n",
                if view.in_transition() { "changing" } else { "stable" },
                count(crate::cluster::MemberState::Joining),
                count(crate::cluster::MemberState::Leaving),
                count(crate::cluster::MemberState::Removed),
                rb.partitions_total.load(Ordering::Relaxed),
                rb.partitions_done.load(Ordering::Relaxed),
                rb.keys_in.load(Ordering::Relaxed),
                rb.bytes_in.load(Ordering::Relaxed),
                crate::coordinator::rebalance::pull_rate(rb),
                rb.keys_dropped.load(Ordering::Relaxed),
            );
            for m in view.members().iter().filter(|m| m.id != coord.node_id()) {
                let state = if down.contains(&m.id) { "down" } else { "up" };
                let _ = write!(out, "peer_{:016x}:addr={},state={state}\r\n", m.id, m.client_addr);
            }
        }
        let hints = store.hint_counts().unwrap_or_default();
        let _ = write!(out, "hints_pending:{}\r\n", hints.iter().map(|(_, n)| n).sum::<u64>());
        for (owner, n) in hints {
            let _ = write!(out, "hints_pending_{owner:016x}:{n}\r\n");
        }
        let _ = write!(
            out,
            "hints_delivered:{}\r\nsloppy_writes:{}\r\n",
            coord.stats().hints_delivered.load(Ordering::Relaxed),
            coord.stats().sloppy_writes.load(Ordering::Relaxed)
        );
        let ae = coord.ae_stats();
        let l = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "antientropy_exchanges:{}\r\nantientropy_failed:{}\r\nantientropy_keys_repaired:{}\r\nantientropy_keys_pushed:{}\r\nantientropy_bytes_sent:{}\r\nantientropy_trees_pending:{}\r\ntombstones_reaped:{}\r\n\r\n",
            l(&ae.exchanges),
            l(&ae.failed),
            l(&ae.keys_repaired),
            l(&ae.keys_pushed),
            l(&ae.bytes_sent),
            store.trees_pending(),
            l(&store.stats().reaped)
        );
    }
    if want("replication") {
        out.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if want("keyspace") {
        out.push_str("# Keyspace\r\n");
        match count_keys(ctx).await {
            Ok((keys, expires)) if keys > 0 => {
                let _ = write!(out, "db0:keys={keys},expires={expires},avg_ttl=0\r\n");
            }
            Ok(_) => {}
            Err(r) => return r,
        }
        out.push_str("\r\n");
    }
    while out.ends_with("\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    Reply::Text(out)
}

/// CONFIG GET pattern [pattern ...] | SET (refused) | RESETSTAT
pub fn config(ctx: &mut Ctx<'_>) -> Reply {
    let sub = ctx.args[1].clone();
    let c = &ctx.node.config;
    if is(&sub, "get") {
        if ctx.args.len() < 3 {
            return Reply::err("ERR wrong number of arguments for 'config|get' command");
        }
        let params: Vec<(&str, String)> = vec![
            ("bind", c.bind.clone()),
            ("port", ctx.node.bound_port.load(Ordering::Relaxed).to_string()),
            ("dir", c.data_dir.display().to_string()),
            ("requirepass", c.requirepass.clone().unwrap_or_default()),
            ("maxclients", c.max_clients.to_string()),
            ("proto-max-bulk-len", c.max_bulk_len.to_string()),
            ("appendonly", "no".into()),
            ("appendfsync", c.fsync.as_str().into()),
            ("save", String::new()),
            ("databases", "1".into()),
            ("maxmemory", "0".into()),
            ("maxmemory-policy", "noeviction".into()),
            ("timeout", "0".into()),
            ("tcp-keepalive", "300".into()),
            ("cluster-enabled", "no".into()),
            ("notify-keyspace-events", String::new()),
            ("slowlog-log-slower-than", "10000".into()),
            ("slowlog-max-len", "128".into()),
        ];
        let mut out = Vec::new();
        for (name, value) in params {
            if ctx.args[2..]
                .iter()
                .any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
            {
                out.push((Reply::bulk(name), Reply::bulk(value)));
            }
        }
        Reply::Map(out)
    } else if is(&sub, "resetstat") {
        Reply::Ok
    } else if is(&sub, "set") {
        Reply::err("ERR CONFIG SET is not supported by dynkv: set options in the config file or flags and restart")
    } else {
        Reply::err(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&sub)
        ))
    }
}

/// DBSIZE: live keys (counted by a walk of the store).
pub async fn dbsize(ctx: &mut Ctx<'_>) -> Reply {
    match count_keys(ctx).await {
        Ok((keys, _)) => Reply::Int(keys as i64),
        Err(r) => r,
    }
}

/// TIME: [unix seconds, microseconds].
pub fn time() -> Reply {
    let us = crate::clock::now_us();
    Reply::Array(vec![
        Reply::bulk((us / 1_000_000).to_string()),
        Reply::bulk((us % 1_000_000).to_string()),
    ])
}

/// FLUSHALL/FLUSHDB [ASYNC|SYNC]
pub async fn flushall(ctx: &mut Ctx<'_>) -> Reply {
    match &ctx.args[1..] {
        [] => {}
        [m] if is(m, "async") || is(m, "sync") => {}
        _ => return syntax_error(),
    }
    match ctx.node.coord.flush_all().await {
        Ok(()) => Reply::Ok,
        Err(e) => coord_error(e),
    }
}

/// SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE]: stops the node cleanly; like Redis, the
/// connection is closed without a reply.
pub fn shutdown(ctx: &mut Ctx<'_>) -> Reply {
    for a in &ctx.args[1..] {
        if !(is(a, "nosave") || is(a, "save") || is(a, "now") || is(a, "force")) {
            if is(a, "abort") {
                return Reply::err("ERR No shutdown in progress.");
            }
            return syntax_error();
        }
    }
    tracing::info!("SHUTDOWN requested by client {}", ctx.client.info.addr);
    ctx.node.shutdown.trigger();
    ctx.client.closing = true;
    ctx.client.silent = true;
    Reply::Ok
}
