//! Membership changes as the nodes report them: DYNKV.STATUS (the ring's state and each
//! member's), INFO cluster's ring and transfer fields, and DYNKV.LOCAL to see that a node
//! that left holds nothing. Waits are bounded and panic with what every node reported.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::client::Reply;
use super::cluster::FaultCluster;
use crate::common::{Resp, info_field};

/// What one node reports about the ring and about its own part in the last change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingInfo {
    /// `ring_state:stable` (INFO cluster).
    pub stable: bool,
    /// `cluster_known_nodes` (CLUSTER INFO): members of the read placement.
    pub known: u64,
    /// `members_joining`.
    pub joining: u64,
    /// `members_leaving`.
    pub leaving: u64,
    /// `members_removed`.
    pub removed: u64,
    /// `transfer_partitions_total`: partitions this node gains in the last change it
    /// took part in as a target member.
    pub partitions_total: u64,
    /// `transfer_partitions_done`.
    pub partitions_done: u64,
    /// `transfer_keys`: records it pulled in that change.
    pub keys: u64,
    /// `transfer_bytes`.
    pub bytes: u64,
    /// `transfer_bytes_per_sec`.
    pub rate: u64,
    /// `handover_keys_dropped`: records handed over and dropped since its last start.
    pub dropped: u64,
}

impl RingInfo {
    /// The ring is stable (no member joining or leaving) and this node pulled every
    /// partition it gained.
    pub fn finished(&self) -> bool {
        self.stable && self.joining == 0 && self.leaving == 0 && self.partitions_done == self.partitions_total
    }
}

/// Node i's ring and transfer figures; `None` if it does not answer or lacks a field.
pub fn info(c: &FaultCluster, i: usize) -> Option<RingInfo> {
    let text = c.info_text(i, "all")?;
    let known = c.info_field(i, "cluster", "cluster_known_nodes")?.parse().ok()?;
    let num = |f: &str| -> Option<u64> { info_field(&text, f)?.parse().ok() };
    Some(RingInfo {
        stable: info_field(&text, "ring_state")? == "stable",
        known,
        joining: num("members_joining")?,
        leaving: num("members_leaving")?,
        removed: num("members_removed")?,
        partitions_total: num("transfer_partitions_total")?,
        partitions_done: num("transfer_partitions_done")?,
        keys: num("transfer_keys")?,
        bytes: num("transfer_bytes")?,
        rate: num("transfer_bytes_per_sec")?,
        dropped: num("handover_keys_dropped")?,
    })
}

/// Every member's figures.
pub fn infos(c: &FaultCluster) -> Vec<(usize, Option<RingInfo>)> {
    c.members().into_iter().map(|i| (i, info(c, i))).collect()
}

/// Every node answered, knows them all as members and has finished.
pub fn all_finished(infos: &[(usize, Option<RingInfo>)]) -> bool {
    infos.iter().all(|(_, r)| {
        r.as_ref()
            .is_some_and(|r| r.finished() && r.known == infos.len() as u64)
    })
}

/// One line per node.
pub fn table(infos: &[(usize, Option<RingInfo>)]) -> String {
    let mut out = String::new();
    for (i, r) in infos {
        let _ = match r {
            None => writeln!(out, "  node {i}: no answer (or fields missing)"),
            Some(r) => writeln!(
                out,
                "  node {i}: ring {}, {} known, joining {} leaving {} removed {}; last pull: partitions {}/{}, \
                 {} keys, {} bytes, {} B/s; handed over and dropped {}",
                if r.stable { "stable" } else { "changing" },
                r.known,
                r.joining,
                r.leaving,
                r.removed,
                r.partitions_done,
                r.partitions_total,
                r.keys,
                r.bytes,
                r.rate,
                r.dropped
            ),
        };
    }
    out
}

/// Node i's DYNKV.STATUS text.
pub fn status(c: &FaultCluster, i: usize) -> Option<String> {
    match c.conn(i).call(&[b"DYNKV.STATUS"]) {
        Reply::Ok(Resp::Bulk(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

/// The state (`joining`, `active`, `leaving`, `removed`) node i reports for itself in
/// DYNKV.STATUS.
pub fn own_state(c: &FaultCluster, i: usize) -> Option<String> {
    let text = status(c, i)?;
    let id = text.lines().next()?.split_whitespace().nth(1)?.to_string();
    text.lines()
        .map(str::split_whitespace)
        .find_map(|mut w| {
            (w.next() == Some(id.as_str())).then(|| w.find_map(|f| f.strip_prefix("state=").map(String::from)))
        })
        .flatten()
}

/// The keys of `keys` node i holds a record of (DYNKV.LOCAL not nil); `None` if it
/// does not answer.
pub fn held(c: &FaultCluster, i: usize, keys: &[String]) -> Option<Vec<String>> {
    let mut conn = c.conn(i);
    let mut out = Vec::new();
    for k in keys {
        match conn.call(&[b"DYNKV.LOCAL", k.as_bytes()]) {
            Reply::Ok(Resp::Nil) => {}
            Reply::Ok(_) => out.push(k.clone()),
            _ => return None,
        }
    }
    Some(out)
}

/// Waits until each of `nodes` reports a stable ring of `members` members (DYNKV.STATUS
/// `ring stable`, INFO `ring_state:stable`, `cluster_known_nodes` = members, nobody
/// joining or leaving) and has pulled every partition it gained. Returns how long that
/// took; panics with every node's report after `timeout`.
pub fn wait_stable(c: &FaultCluster, nodes: &[usize], members: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    let settled = |i: usize| -> bool {
        info(c, i).is_some_and(|r| r.finished() && r.known == members)
            && status(c, i).is_some_and(|s| s.lines().next().is_some_and(|l| l.ends_with("ring stable")))
    };
    loop {
        if nodes.iter().all(|&i| settled(i)) {
            return started.elapsed();
        }
        if started.elapsed() >= timeout {
            let infos: Vec<_> = nodes.iter().map(|&i| (i, info(c, i))).collect();
            let statuses: Vec<String> = nodes
                .iter()
                .map(|&i| format!("node {i}:\n{}", status(c, i).unwrap_or_else(|| "no answer".into())))
                .collect();
            panic!(
                "nodes {nodes:?} do not all report a stable ring of {members} members with every transfer \
                 finished within {timeout:?}:\n{}{}",
                table(&infos),
                statuses.join("")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until each of `leavers` reports itself `state=removed` and holds no record of
/// `keys`. Returns how long that took; panics with what they report after `timeout`.
pub fn wait_left(c: &FaultCluster, leavers: &[usize], keys: &[String], timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let seen: Vec<(usize, Option<String>, Option<Vec<String>>)> = leavers
            .iter()
            .map(|&i| (i, own_state(c, i), held(c, i, keys)))
            .collect();
        if seen
            .iter()
            .all(|(_, st, h)| st.as_deref() == Some("removed") && h.as_ref().is_some_and(Vec::is_empty))
        {
            return started.elapsed();
        }
        if started.elapsed() >= timeout {
            let mut report = String::new();
            for (i, st, h) in &seen {
                let _ = writeln!(
                    report,
                    "  node {i}: own state {st:?}; holds {} of {} keys: {h:?}",
                    h.as_ref().map_or(0, Vec::len),
                    keys.len()
                );
                let _ = writeln!(report, "{}", status(c, *i).unwrap_or_default());
            }
            panic!(
                "the nodes that left do not all report state=removed and hold nothing within {timeout:?}:\n{report}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
