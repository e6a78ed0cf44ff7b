//! CLUSTER SLOTS, SHARDS, NODES, INFO, KEYSLOT, MYID: the layout that cluster-aware Redis
//! clients read to send each key straight to its coordinator. Each slot (partition)
//! reports its first replica as master and the rest of its preference list as replicas.
//! A node without peers answers as a cluster of one. Must not change anything.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::Ctx;
use super::util::is;
use crate::cluster::MemberInfo;
use crate::resp::reply::Reply;
use crate::ring::partition_of;
use crate::version::NodeId;

/// The members and each partition's replica list, as this node sees them.
struct Layout {
    me: NodeId,
    members: Vec<MemberInfo>,
    /// Per partition, its replicas (first = the one clients should use).
    replicas: Vec<Vec<NodeId>>,
}

fn layout(ctx: &Ctx<'_>) -> Layout {
    let coord = &ctx.node.coord;
    match coord.cluster() {
        Some(c) => {
            let view = c.membership.view();
            let n = coord.quorum().n;
            Layout {
                me: coord.node_id(),
                members: view.members().to_vec(),
                replicas: (0..16384u16).map(|p| view.replicas(p, n)).collect(),
            }
        }
        None => {
            let me = MemberInfo {
                id: coord.node_id(),
                client_addr: format!(
                    "{}:{}",
                    ctx.node.config.bind,
                    ctx.node.bound_port.load(Ordering::Relaxed)
                ),
                cluster_addr: String::new(),
                weight: 1.0,
            };
            Layout {
                me: me.id,
                replicas: vec![vec![me.id]; 16384],
                members: vec![me],
            }
        }
    }
}

impl Layout {
    fn member(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Runs of consecutive partitions whose replica lists are equal: (start, end, list).
    fn runs(&self) -> Vec<(u16, u16, &[NodeId])> {
        let mut out: Vec<(u16, u16, &[NodeId])> = Vec::new();
        for (p, r) in self.replicas.iter().enumerate() {
            match out.last_mut() {
                Some(last) if last.2 == r.as_slice() => last.1 = p as u16,
                _ => out.push((p as u16, p as u16, r.as_slice())),
            }
        }
        out
    }

    /// Runs of consecutive partitions led by `id`.
    fn led_by(&self, id: NodeId) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for (p, r) in self.replicas.iter().enumerate() {
            if r.first() != Some(&id) {
                continue;
            }
            match out.last_mut() {
                Some(last) if u32::from(last.1) + 1 == p as u32 => last.1 = p as u16,
                _ => out.push((p as u16, p as u16)),
            }
        }
        out
    }
}

fn host_port(addr: &str) -> (String, i64) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p.parse().unwrap_or(0)),
        None => (addr.to_string(), 0),
    }
}

fn node_entry(m: &MemberInfo) -> Reply {
    let (host, port) = host_port(&m.client_addr);
    Reply::Array(vec![Reply::bulk(host), Reply::Int(port), Reply::bulk(m.redis_id())])
}

/// CLUSTER <subcommand> ...
pub fn cluster(ctx: &mut Ctx<'_>) -> Reply {
    let sub = ctx.args[1].clone();
    let argc = ctx.args.len();
    if is(&sub, "keyslot") && argc == 3 {
        return Reply::Int(i64::from(partition_of(&ctx.args[2])));
    }
    if is(&sub, "myid") && argc == 2 {
        return Reply::bulk(format!("{:040x}", ctx.node.coord.node_id()));
    }
    let l = layout(ctx);
    if is(&sub, "slots") && argc == 2 {
        let entries = l
            .runs()
            .into_iter()
            .map(|(start, end, ids)| {
                let mut e = vec![Reply::Int(i64::from(start)), Reply::Int(i64::from(end))];
                e.extend(ids.iter().filter_map(|id| l.member(*id)).map(node_entry));
                Reply::Array(e)
            })
            .collect();
        return Reply::Array(entries);
    }
    if is(&sub, "shards") && argc == 2 {
        let shards = l
            .members
            .iter()
            .map(|m| {
                let slots = l
                    .led_by(m.id)
                    .into_iter()
                    .flat_map(|(a, b)| [Reply::Int(i64::from(a)), Reply::Int(i64::from(b))])
                    .collect();
                let (host, port) = host_port(&m.client_addr);
                let node = Reply::Map(vec![
                    (Reply::bulk("id"), Reply::bulk(m.redis_id())),
                    (Reply::bulk("port"), Reply::Int(port)),
                    (Reply::bulk("ip"), Reply::bulk(host.clone())),
                    (Reply::bulk("endpoint"), Reply::bulk(host)),
                    (Reply::bulk("role"), Reply::bulk("master")),
                    (Reply::bulk("replication-offset"), Reply::Int(0)),
                    (Reply::bulk("health"), Reply::bulk("online")),
                ]);
                Reply::Map(vec![
                    (Reply::bulk("slots"), Reply::Array(slots)),
                    (Reply::bulk("nodes"), Reply::Array(vec![node])),
                ])
            })
            .collect();
        return Reply::Array(shards);
    }
    if is(&sub, "nodes") && argc == 2 {
        let mut out = String::new();
        for m in &l.members {
            let (host, port) = host_port(&m.client_addr);
            let cport = host_port(&m.cluster_addr).1;
            let flags = if m.id == l.me { "myself,master" } else { "master" };
            let _ = write!(out, "{} {host}:{port}@{cport} {flags} - 0 0 1 connected", m.redis_id());
            for (a, b) in l.led_by(m.id) {
                if a == b {
                    let _ = write!(out, " {a}");
                } else {
                    let _ = write!(out, " {a}-{b}");
                }
            }
            out.push('\n');
        }
        return Reply::Text(out);
    }
    if is(&sub, "info") && argc == 2 {
        let q = ctx.node.coord.quorum();
        let text = format!(
            "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\ndynkv_n:{}\r\ndynkv_r:{}\r\ndynkv_w:{}\r\n",
            l.members.len(),
            l.members.iter().filter(|m| !l.led_by(m.id).is_empty()).count(),
            q.n,
            q.r,
            q.w
        );
        return Reply::Text(text);
    }
    Reply::err(format!(
        "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLUSTER HELP.",
        String::from_utf8_lossy(&sub)
    ))
}
