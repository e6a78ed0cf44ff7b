//! The Prometheus exporter end to end: a 4-node cluster (N=3, R=2, W=2) whose every node
//! serves `/metrics` on its own port is driven through every node with traffic that moves
//! every family `src/metrics.rs` names (commands, errors, forwards, siblings, a read
//! repair, sloppy writes and hinted handoff, tombstones, expiry); scrapes taken along the
//! way and at the end must show every family with `# HELP` and `# TYPE`, moved, and the
//! latency histograms with sub-millisecond buckets. `--metrics-addr off` opens no metrics
//! listener. The Grafana dashboard (`compat/grafana/dynkv.json`) may only query families
//! a running node exports, so it cannot rot.
//!
//! The family list is read from `src/metrics.rs` itself: a family added there without
//! being exported (or without moving under this traffic) fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Cluster, ClusterSetup, Raw, Resp, Server, Setup, eventually, free_port, info_u64, keyslot, pipeline, slot_layout,
    write_temp_file,
};

const METRICS_RS: &str = include_str!("../src/metrics.rs");
const DASHBOARD: &str = include_str!("../compat/grafana/dynkv.json");
/// The exporter's default port, which `--metrics-addr off` must leave alone.
const DEFAULT_METRICS_PORT: u16 = 9379;

// ---------------------------------------------------------------------------------------
// What src/metrics.rs declares
// ---------------------------------------------------------------------------------------

/// The first double-quoted string in `text`.
fn quoted_after(text: &str) -> Option<&str> {
    let start = text.find('"')? + 1;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// Every family src/metrics.rs names, with its kind (`counter`, `gauge`, `histogram`)
/// taken from its `describe_*!` call.
fn declared_families() -> BTreeMap<String, &'static str> {
    let mut consts: HashMap<&str, &str> = HashMap::new();
    for (at, _) in METRICS_RS.match_indices("pub const ") {
        let rest = &METRICS_RS[at + "pub const ".len()..];
        let Some((ident, after)) = rest.split_once(':') else {
            continue;
        };
        if !after.trim_start().starts_with("&str") {
            continue;
        }
        let value = quoted_after(after).expect("a &str constant has a quoted value");
        consts.insert(ident.trim(), value);
    }
    let mut out = BTreeMap::new();
    for (mac, kind) in [
        ("describe_counter!(", "counter"),
        ("describe_gauge!(", "gauge"),
        ("describe_histogram!(", "histogram"),
    ] {
        for (at, _) in METRICS_RS.match_indices(mac) {
            let ident = METRICS_RS[at + mac.len()..]
                .split(',')
                .next()
                .expect("describe macro has arguments")
                .trim();
            let name = consts
                .get(ident)
                .unwrap_or_else(|| panic!("src/metrics.rs describes {ident}, which is not a &str constant"));
            out.insert(name.to_string(), kind);
        }
    }
    let metric_consts: Vec<&str> = consts.values().copied().filter(|v| v.starts_with("dynkv_")).collect();
    for v in &metric_consts {
        assert!(out.contains_key(*v), "src/metrics.rs names {v} but never describes it");
    }
    assert!(out.len() >= 20, "src/metrics.rs parsed into too few families: {out:?}");
    out
}

// ---------------------------------------------------------------------------------------
// Scraping and parsing the Prometheus text format
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    /// The sample's own name (`x`, `x_bucket`, `x_count`, `x_sum`).
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Clone, Default)]
struct Family {
    kind: Option<String>,
    help: bool,
    samples: Vec<Sample>,
}

type Scrape = BTreeMap<String, Family>;

/// `a="b",c="d"` (escapes `\"`, `\\`, `\n` allowed in values).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',') | Some(' ')) {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} without a quoted value in {{{s}}}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

/// Parses an exposition into families (samples `x_bucket`/`x_count`/`x_sum` belong to
/// the histogram or summary `x`).
fn parse_exposition(text: &str) -> Scrape {
    let mut fams: Scrape = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            fams.entry(name.to_string()).or_default().help = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap_or_default();
            let kind = it.next().unwrap_or_default();
            fams.entry(name.to_string()).or_default().kind = Some(kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                (&line[..open], parse_labels(&line[open + 1..close]), &line[close + 1..])
            }
            None => {
                let (n, r) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("sample without value: {line}"));
                (n, BTreeMap::new(), r)
            }
        };
        let value_text = rest.split_whitespace().next().unwrap_or_default();
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad sample value {v:?}: {line}")),
        };
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                let kind = fams.get(base)?.kind.as_deref()?;
                matches!(kind, "histogram" | "summary").then_some(base)
            })
            .unwrap_or(name)
            .to_string();
        fams.entry(family).or_default().samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    fams
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        let end = (start + size).min(body.len());
        out.extend_from_slice(&body[start..end]);
        body = body.get(end + 2..).unwrap_or_default();
    }
}

/// `GET path` over HTTP/1.1 with a plain socket: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let body = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Scrapes `/metrics` on `port` (retrying for a few seconds while the listener starts).
fn scrape(port: u16) -> Scrape {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http_get(addr, "/metrics") {
            Ok((200, body)) => return parse_exposition(&body),
            Ok((status, body)) => panic!("GET /metrics on {addr}: status {status}\n{body}"),
            Err(e) if Instant::now() >= deadline => panic!("GET /metrics on {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the scrapes showed over the whole run
// ---------------------------------------------------------------------------------------

/// Everything seen positive in any scrape of any node during the run.
#[derive(Debug, Default)]
struct Seen {
    /// Families that moved: a counter or gauge sample > 0, or a histogram `_count` > 0.
    moved: BTreeSet<String>,
    /// (family, label value) pairs of samples > 0.
    label_values: BTreeSet<(String, String)>,
    /// A read saw more than one sibling (`siblings_per_read` has observations above 1).
    multi_sibling_read: bool,
}

impl Seen {
    fn observe(&mut self, s: &Scrape) {
        for (name, fam) in s {
            let histogram = fam.kind.as_deref() == Some("histogram");
            for smp in &fam.samples {
                let counts = !histogram || smp.name.ends_with("_count");
                if counts && smp.value > 0.0 {
                    self.moved.insert(name.clone());
                    for v in smp.labels.values() {
                        self.label_values.insert((name.clone(), v.clone()));
                    }
                }
            }
        }
        if let Some(fam) = s.get("dynkv_siblings_per_read") {
            let count: f64 = fam
                .samples
                .iter()
                .filter(|x| x.name.ends_with("_count"))
                .map(|x| x.value)
                .sum();
            let at_most_one: f64 = fam
                .samples
                .iter()
                .filter(|x| x.name.ends_with("_bucket") && le(x) == Some(1.0))
                .map(|x| x.value)
                .sum();
            if count > at_most_one {
                self.multi_sibling_read = true;
            }
        }
    }

    fn has_label(&self, family: &str, value: &str) -> bool {
        self.label_values
            .iter()
            .any(|(f, v)| f == family && v.eq_ignore_ascii_case(value))
    }
}

/// A bucket's upper bound.
fn le(s: &Sample) -> Option<f64> {
    match s.labels.get("le")?.as_str() {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// Sum of a family's samples on one node (histograms: their `_count`).
fn total(s: &Scrape, family: &str) -> f64 {
    s.get(family).map_or(0.0, |f| {
        let histogram = f.kind.as_deref() == Some("histogram");
        f.samples
            .iter()
            .filter(|x| !histogram || x.name.ends_with("_count"))
            .map(|x| x.value)
            .sum()
    })
}

/// Sum of a family's samples whose labels contain `value`, on one node.
fn total_with(s: &Scrape, family: &str, value: &str) -> f64 {
    s.get(family).map_or(0.0, |f| {
        f.samples
            .iter()
            .filter(|x| x.labels.values().any(|v| v == value))
            .map(|x| x.value)
            .sum()
    })
}

// ---------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------

/// A cluster whose every node has its own `--metrics-addr` port.
struct Metered {
    cluster: Cluster,
    metrics_ports: Vec<u16>,
}

impl Metered {
    /// `Cluster::start_with` with a distinct free metrics port per node.
    fn start(mut setup: ClusterSetup) -> Metered {
        setup.metrics = true;
        let cluster = Cluster::start_with(setup);
        let metrics_ports = cluster.metrics_ports.clone();
        assert!(
            !metrics_ports.contains(&DEFAULT_METRICS_PORT),
            "a node got the default metrics port"
        );
        Metered { cluster, metrics_ports }
    }

    fn raw(&self, i: usize) -> Raw {
        self.cluster.raw(i)
    }

    /// Starts one more node, with a metrics port of its own, that joins the cluster.
    fn add_node(&mut self) -> usize {
        let port = loop {
            let p = free_port();
            if !self.metrics_ports.contains(&p) && p != DEFAULT_METRICS_PORT {
                break p;
            }
        };
        let i = self.cluster.add_node(&["--metrics-addr", &format!("127.0.0.1:{port}")]);
        self.metrics_ports.push(port);
        i
    }

    /// Scrapes every node (skipping those in `skip`), records what moved, and returns the
    /// scrapes by node.
    fn scrape_all(&self, seen: &mut Seen, skip: &[usize]) -> Vec<Option<Scrape>> {
        (0..self.metrics_ports.len())
            .map(|i| {
                if skip.contains(&i) {
                    return None;
                }
                let s = scrape(self.metrics_ports[i]);
                seen.observe(&s);
                Some(s)
            })
            .collect()
    }
}

fn req(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

fn ok(r: &Resp, what: &str) {
    assert_eq!(*r, Resp::Simple("OK".into()), "{what}");
}

fn cluster_field(raw: &mut Raw, field: &str) -> u64 {
    info_u64(raw, "cluster", field)
}

/// Waits until every thread of a SIGSTOPped server is stopped (`T` in /proc), so that
/// nothing it does can race with what the test does next.
fn wait_stopped(s: &Server) {
    let pid = s.pid().expect("running");
    let all_stopped = eventually(Duration::from_secs(5), || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            })
        })
    });
    assert!(all_stopped, "process {pid} did not stop after SIGSTOP");
}

/// What the scenario leaves for the assertions.
struct Outcome {
    /// The last scrape of every node, taken after all traffic: the 4-node cluster's
    /// first, then the anti-entropy cluster's.
    finals: Vec<Scrape>,
    /// What moved in any scrape during the run.
    seen: Seen,
}

/// The scenario runs once; both the families test and the dashboard test use it.
static OUTCOME: Mutex<Option<Arc<Result<Outcome, String>>>> = Mutex::new(None);

fn outcome() -> Arc<Result<Outcome, String>> {
    let mut slot = OUTCOME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(o) = slot.as_ref() {
        return o.clone();
    }
    let result = std::panic::catch_unwind(run_scenario).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the scenario panicked".into())
    });
    let o = Arc::new(result);
    *slot = Some(o.clone());
    o
}

/// Drives a 4-node cluster through everything the metrics describe; returns the scrapes.
fn run_scenario() -> Outcome {
    // A short tombstone grace, so that dead records are first counted, then reaped.
    let (_cfg_dir, cfg) = write_temp_file(
        "dynkv.toml",
        // Anti-entropy would race read repair here; it gets a cluster of its own below.
        "tombstone-grace-secs = 3\nexpire-sweep-interval-ms = 50\nanti-entropy-interval-ms = 3600000\n",
    );
    let cfg = cfg.to_str().expect("utf-8 path").to_string();
    let mut m =
        Metered::start(
            ClusterSetup::new(4)
                .timeout_ms(500)
                .args(&["--config", &cfg, "--failure-timeout-ms", "1000"]),
        );
    let nodes = 4;
    let mut seen = Seen::default();

    // -- Plain traffic through every node: SET, GET, MSET/MGET over many slots, DEL. With
    // N=3 of 4 nodes, every node forwards the commands on keys it does not hold.
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    for n in 0..nodes {
        let sets: Vec<_> = (0..keys.len())
            .filter(|i| i % nodes == n)
            .map(|i| req(&[b"SET", keys[i].as_bytes(), format!("v{i}").as_bytes()]))
            .collect();
        for r in pipeline(&mut m.raw(n), &sets) {
            ok(&r, &format!("SET through node {n}"));
        }
    }
    let gets: Vec<_> = keys.iter().map(|k| req(&[b"GET", k.as_bytes()])).collect();
    for n in 0..nodes {
        for (i, r) in pipeline(&mut m.raw(n), &gets).into_iter().enumerate() {
            assert_eq!(r, Resp::bulk(format!("v{i}")), "GET {} through node {n}", keys[i]);
        }
    }
    let multi: Vec<String> = (0..32).map(|i| format!("multi:{i}")).collect();
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for k in &multi {
        mset.push(k.as_bytes());
        mset.push(b"m");
    }
    ok(&m.raw(1).cmd(&mset), "MSET through node 1");
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(multi.iter().map(|k| k.as_bytes()));
    let r = m.raw(2).cmd(&mget);
    assert!(
        r.items().iter().all(|v| *v == Resp::bulk("m")),
        "MGET through node 2: {r:?}"
    );

    // -- Errors: an unknown command, a wrong arity, AUTH without a password configured.
    let mut raw = m.raw(0);
    for bad in [&[&b"NOSUCHCOMMAND"[..]][..], &[b"GET"], &[b"AUTH", b"nope"]] {
        match raw.cmd(bad) {
            Resp::Error(_) => {}
            other => panic!("{bad:?} should fail: {other:?}"),
        }
    }

    // -- A conflict: two RESOLVEs with the same context through two nodes; reads then see
    // two siblings.
    let k: &[u8] = b"sib:k";
    ok(&m.raw(0).cmd(&[b"SET", k, b"v0"]), "SET sib:k");
    let ctx = m.raw(0).cmd(&[b"SIBLINGS", k]).items()[0].bytes();
    ok(&m.raw(1).cmd(&[b"RESOLVE", k, &ctx, b"left"]), "RESOLVE through node 1");
    ok(
        &m.raw(2).cmd(&[b"RESOLVE", k, &ctx, b"right"]),
        "RESOLVE through node 2",
    );
    let mut siblings = Resp::Nil;
    let both = eventually(Duration::from_secs(5), || {
        siblings = m.raw(0).cmd(&[b"SIBLINGS", k]);
        siblings.items()[1].items().len() == 2
    });
    assert!(both, "SIBLINGS should show both concurrent values: {siblings:?}");
    for n in 0..nodes {
        for _ in 0..3 {
            let _ = m.raw(n).cmd(&[b"GET", k]);
        }
    }

    // -- Dead records: deletes (tombstones) and values that expire.
    let dels: Vec<_> = keys[..20].iter().map(|k| req(&[b"DEL", k.as_bytes()])).collect();
    for r in pipeline(&mut m.raw(3), &dels) {
        assert_eq!(r, Resp::Int(1), "DEL through node 3");
    }
    let exps: Vec<_> = (0..10)
        .map(|i| req(&[b"SET", format!("exp:{i}").as_bytes(), b"x", b"PX", b"200"]))
        .collect();
    for r in pipeline(&mut m.raw(2), &exps) {
        ok(&r, "SET PX through node 2");
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..10 {
        let key = format!("exp:{i}");
        assert_eq!(
            m.raw(i % nodes).cmd(&[b"GET", key.as_bytes()]),
            Resp::Nil,
            "{key} expired"
        );
    }
    // The sweep counts the dead records and the conflicted key within the grace (3 s).
    let counted = eventually(Duration::from_secs(3), || {
        m.scrape_all(&mut seen, &[]);
        seen.moved.contains("dynkv_tombstones") && seen.moved.contains("dynkv_keys_with_siblings")
    });
    assert!(
        counted,
        "the sweep never reported dynkv_tombstones > 0 and dynkv_keys_with_siblings > 0 (moved: {:?})",
        seen.moved
    );
    // Node 3 restarts below; keep what it counted so far.
    m.scrape_all(&mut seen, &[]);

    // -- A failed quorum: a write through node 0 while all other nodes are paused gets one
    // acknowledgement of W=2 and fails at the deadline.
    let layout = slot_layout(&mut m.raw(0));
    let (p0, p2, p3) = (
        m.cluster.node(0).port(),
        m.cluster.node(2).port(),
        m.cluster.node(3).port(),
    );
    let mut raw0 = m.raw(0);
    let held_by = |raw: &mut Raw, k: &str, ports: &[u16]| {
        let replicas = &layout[keyslot(raw, k.as_bytes())];
        ports.iter().all(|p| replicas.contains(p))
    };
    let doomed = (0..)
        .map(|i| format!("doomed:{i}"))
        .find(|k| held_by(&mut raw0, k, &[p0, p2, p3]))
        .expect("a key on nodes 0, 2 and 3");
    // Every other node is paused, so neither the replicas nor a fallback can acknowledge,
    // whatever node 0's failure detector believes at this instant.
    for i in [1, 2, 3] {
        m.cluster.node(i).signal(libc::SIGSTOP);
        wait_stopped(m.cluster.node(i));
    }
    let t0 = Instant::now();
    let r = raw0.cmd(&[b"SET", doomed.as_bytes(), b"x"]);
    let took = t0.elapsed();
    for i in [1, 2, 3] {
        m.cluster.node(i).signal(libc::SIGCONT);
    }
    if !matches!(&r, Resp::Error(e) if e.contains("quorum")) {
        // Diagnostics: who took the write, and how node 0 saw the cluster.
        std::thread::sleep(Duration::from_millis(300));
        let holders: Vec<bool> = (0..nodes)
            .map(|i| m.cluster.local(i, doomed.as_bytes()).is_some())
            .collect();
        panic!(
            "SET {doomed} (replicas: nodes 0, 2, 3) with nodes 1, 2 and 3 paused should fail for want of a \
             quorum; got {r:?} after {took:?}; copies now on nodes {holders:?}\n{}",
            common::info(&mut raw0, "cluster")
        );
    }

    // -- Read repair: node 3 is killed while keys it replicates are written through node 0
    // (a replica of them too, so that it coordinates them itself), then restarted; reads
    // find its copies missing and repair them.
    let rr_keys: Vec<String> = (0..)
        .map(|i| format!("rr:{i}"))
        .filter(|k| held_by(&mut raw0, k, &[p0, p3]))
        .take(20)
        .collect();
    m.cluster.node_mut(3).kill9();
    let sets: Vec<_> = rr_keys.iter().map(|k| req(&[b"SET", k.as_bytes(), b"v"])).collect();
    for r in pipeline(&mut m.raw(0), &sets) {
        ok(&r, "SET through node 0 while node 3 is down");
    }
    m.cluster.node_mut(3).start_again();
    m.cluster.wait_known(nodes, common::JOIN_TIMEOUT);
    let rr_gets: Vec<_> = rr_keys.iter().map(|k| req(&[b"GET", k.as_bytes()])).collect();
    let repaired = eventually(Duration::from_secs(15), || {
        for r in pipeline(&mut m.raw(0), &rr_gets) {
            assert_eq!(r, Resp::bulk("v"), "GET through node 0 after node 3 came back");
        }
        std::thread::sleep(Duration::from_millis(100));
        let scrapes = m.scrape_all(&mut seen, &[]);
        scrapes
            .iter()
            .flatten()
            .any(|s| total(s, "dynkv_read_repairs_total") > 0.0)
    });
    assert!(repaired, "no read repair was counted after node 3 came back");

    // -- Sloppy quorum and hinted handoff: node 3 is paused until every other node sees it
    // down; writes then go to fallbacks that keep hints; once it runs again the hints are
    // delivered.
    m.cluster.node(3).signal(libc::SIGSTOP);
    let seen_down = eventually(Duration::from_secs(10), || {
        (0..3).all(|i| cluster_field(&mut m.raw(i), "peers_down") == 1)
    });
    if !seen_down {
        m.cluster.node(3).signal(libc::SIGCONT);
        panic!("the paused node was never seen down");
    }
    let hint_keys: Vec<String> = (0..60).map(|i| format!("hint:{i}")).collect();
    for (i, k) in hint_keys.iter().enumerate() {
        let r = m.raw(i % 3).cmd(&[b"SET", k.as_bytes(), b"h"]);
        if r != Resp::Simple("OK".into()) {
            m.cluster.node(3).signal(libc::SIGCONT);
            panic!("SET {k} while node 3 is paused: {r:?}");
        }
    }
    // The state gauges are published every 2 s: poll while the fault lasts.
    let mut hints_seen = false;
    let mut down_seen = false;
    eventually(Duration::from_secs(6), || {
        for s in m.scrape_all(&mut seen, &[3]).iter().flatten() {
            hints_seen |= total(s, "dynkv_hints_pending") > 0.0;
            down_seen |= total_with(s, "dynkv_peers", "down") > 0.0;
        }
        hints_seen && down_seen
    });
    m.cluster.node(3).signal(libc::SIGCONT);
    assert!(
        hints_seen,
        "no node reported dynkv_hints_pending > 0 while node 3 was paused"
    );
    assert!(
        down_seen,
        "no node reported a peer down in dynkv_peers while node 3 was paused"
    );
    let drained = eventually(Duration::from_secs(30), || {
        (0..nodes).all(|i| cluster_field(&mut m.raw(i), "hints_pending") == 0)
    });
    assert!(drained, "hints were not handed off after node 3 came back");

    // -- The sweep reaps the dead records once the grace has passed.
    let reaped = eventually(Duration::from_secs(15), || {
        m.scrape_all(&mut seen, &[])
            .iter()
            .flatten()
            .any(|s| total(s, "dynkv_tombstones_reaped_total") > 0.0)
    });
    assert!(reaped, "no dead record was reaped after the grace");

    // -- The final scrapes, with a client connected to every node.
    // The state gauges lag by up to 2 s: wait until every node counts a client and sees its
    // 3 peers up again.
    let _clients: Vec<Raw> = (0..nodes).map(|i| m.raw(i)).collect();
    let mut finals: Vec<Scrape> = Vec::new();
    eventually(Duration::from_secs(6), || {
        finals = m.scrape_all(&mut seen, &[]).into_iter().flatten().collect();
        finals
            .iter()
            .all(|s| total(s, "dynkv_connected_clients") > 0.0 && total_with(s, "dynkv_peers", "up") >= 3.0)
    });

    // -- Anti-entropy, on a 3-node cluster of its own: node 2 misses writes while it is
    // down (no node can stand in for it), and exchanges bring it up to date.
    let mut ae = Metered::start(ClusterSetup::new(3).args(&["--anti-entropy-interval-ms", "100"]));
    ae.cluster.node_mut(2).kill9();
    let ae_sets: Vec<_> = (0..50)
        .map(|i| req(&[b"SET", format!("ae:{i}").as_bytes(), b"v"]))
        .collect();
    for r in pipeline(&mut ae.raw(0), &ae_sets) {
        ok(&r, "SET with one of three replicas down");
    }
    ae.cluster.node_mut(2).start_again();
    ae.cluster.wait_known(3, common::JOIN_TIMEOUT);
    let mut ae_finals = Vec::new();
    let repaired = eventually(Duration::from_secs(15), || {
        ae_finals = ae.scrape_all(&mut seen, &[]).into_iter().flatten().collect();
        ae_finals
            .iter()
            .any(|s| total(s, "dynkv_antientropy_keys_repaired_total") > 0.0)
    });
    assert!(repaired, "anti-entropy never counted a repaired key");

    // -- A join: the new node pulls the partitions it gains.
    let joined = ae.add_node();
    let moved = eventually(Duration::from_secs(30), || {
        ae_finals = ae.scrape_all(&mut seen, &[]).into_iter().flatten().collect();
        ae_finals.get(joined).is_some_and(|s| {
            total(s, "dynkv_transfer_keys_total") > 0.0 && total(s, "dynkv_transfer_bytes_total") > 0.0
        })
    });
    assert!(moved, "the joining node counted no transferred keys");
    finals.extend(ae_finals);
    Outcome { finals, seen }
}

/// The union of the families the nodes export in their final scrapes.
fn exported(o: &Outcome) -> BTreeSet<String> {
    o.finals
        .iter()
        .flat_map(|s| s.iter().filter(|(_, f)| !f.samples.is_empty()).map(|(n, _)| n.clone()))
        .collect()
}

#[test]
fn every_family_is_exported_with_help_and_moves_under_traffic() {
    let o = outcome();
    let o = match o.as_ref() {
        Ok(o) => o,
        Err(e) => panic!("the metrics scenario failed: {e}"),
    };
    let declared = declared_families();
    let mut problems = Vec::new();
    for (name, kind) in &declared {
        let on: Vec<&Family> = o.finals.iter().filter_map(|s| s.get(name)).collect();
        if on.iter().all(|f| f.samples.is_empty()) {
            problems.push(format!("{name}: not exported by any node"));
            continue;
        }
        if !on.iter().any(|f| f.help) {
            problems.push(format!("{name}: no # HELP line"));
        }
        let types: BTreeSet<&str> = on.iter().filter_map(|f| f.kind.as_deref()).collect();
        if types != BTreeSet::from([*kind]) {
            problems.push(format!("{name}: # TYPE {types:?}, src/metrics.rs describes a {kind}"));
        }
        if !o.seen.moved.contains(name) {
            problems.push(format!("{name}: never moved (no sample > 0 in any scrape)"));
        }
        if *kind == "histogram" && name.ends_with("_seconds") {
            let les: Vec<f64> = on
                .iter()
                .flat_map(|f| f.samples.iter())
                .filter(|s| s.name.ends_with("_bucket"))
                .filter_map(le)
                .filter(|v| v.is_finite())
                .collect();
            if !les.iter().any(|&v| v < 0.001) {
                problems.push(format!("{name}: no bucket below 1 ms: {les:?}"));
            }
            if !les.iter().any(|&v| v >= 10.0) {
                problems.push(format!("{name}: no bucket up to 10 s: {les:?}"));
            }
        }
    }
    for cmd in ["set", "get", "mset", "mget", "del", "siblings", "resolve"] {
        if !o.seen.has_label("dynkv_commands_total", cmd) {
            problems.push(format!("dynkv_commands_total: no sample for command {cmd}"));
        }
    }
    for outcome in ["met", "sloppy", "failed"] {
        if !o.seen.has_label("dynkv_quorum_total", outcome) {
            problems.push(format!("dynkv_quorum_total: no sample with outcome {outcome}"));
        }
    }
    for kind in ["ERR", "QUORUM"] {
        if !o.seen.has_label("dynkv_errors_total", kind) {
            problems.push(format!("dynkv_errors_total: no {kind} errors counted"));
        }
    }
    if !o.seen.multi_sibling_read {
        problems.push("dynkv_siblings_per_read: no read saw more than one sibling".into());
    }
    // The first four scrapes are the 4-node cluster's (the rest, the anti-entropy one's).
    for (i, s) in o.finals.iter().take(4).enumerate() {
        if total_with(s, "dynkv_peers", "up") < 3.0 {
            problems.push(format!("dynkv_peers: node {i} does not see its 3 peers up at the end"));
        }
    }
    assert!(
        problems.is_empty(),
        "metrics problems:\n  {}\nmoved: {:?}",
        problems.join("\n  "),
        o.seen.moved
    );
}

// ---------------------------------------------------------------------------------------
// The dashboard
// ---------------------------------------------------------------------------------------

/// Every panel query (`expr`) in the dashboard, panels nested in rows included.
fn panel_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map {
                match (k.as_str(), val) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => panel_exprs(val, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| panel_exprs(i, out)),
        _ => {}
    }
}

/// The `dynkv_*` families an expression names (`_bucket`, `_count`, `_sum` stripped).
fn families_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("dynkv_") {
        let start = i + at;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            let mut name = &expr[start..end];
            for suffix in ["_bucket", "_count", "_sum"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base;
                    break;
                }
            }
            out.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// The label names in every `by (...)` / `without (...)` clause of an expression.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for kw in ["by", "without"] {
        for (at, _) in expr.match_indices(kw) {
            let before = expr[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = expr[at + kw.len()..].trim_start();
            let Some(rest) = rest.strip_prefix('(') else {
                continue;
            };
            let Some(close) = rest.find(')') else {
                continue;
            };
            out.extend(
                rest[..close]
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    out
}

/// The dashboard, its panel queries, and the queries of its template variables.
fn dashboard() -> (serde_json::Value, Vec<String>, Vec<String>) {
    let v: serde_json::Value = serde_json::from_str(DASHBOARD).expect("compat/grafana/dynkv.json is valid JSON");
    let mut exprs = Vec::new();
    panel_exprs(&v["panels"], &mut exprs);
    let vars = v["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|t| match &t["query"] {
            serde_json::Value::String(s) => Some(s.clone()),
            q => q["query"].as_str().map(str::to_string),
        })
        .collect();
    (v, exprs, vars)
}

/// Static checks: the dashboard is an importable Grafana dashboard whose every query names
/// only families of src/metrics.rs.
#[test]
fn the_dashboard_is_grafana_json_over_declared_families() {
    let (v, exprs, var_queries) = dashboard();
    assert!(v["schemaVersion"].as_u64().is_some_and(|s| s >= 36), "schemaVersion");
    assert!(v["uid"].as_str().is_some_and(|s| !s.is_empty()), "uid");
    let inputs = v["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input"
    );
    let vars = v["templating"]["list"].as_array().expect("templating.list");
    assert!(vars.iter().any(|t| t["name"] == "instance"), "an `instance` variable");
    assert!(exprs.len() >= 20, "too few queries: {}", exprs.len());
    let declared = declared_families();
    let mut unknown = BTreeSet::new();
    let mut used = BTreeSet::new();
    for e in &exprs {
        let fams = families_in(e);
        assert!(!fams.is_empty(), "a query that names no dynkv family: {e}");
        assert!(e.contains("$instance"), "a query not filtered by $instance: {e}");
        for f in fams {
            if !declared.contains_key(&f) {
                unknown.insert(f.clone());
            }
            used.insert(f);
        }
    }
    for q in &var_queries {
        for f in families_in(q) {
            if !declared.contains_key(&f) {
                unknown.insert(f);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries families src/metrics.rs does not name: {unknown:?}"
    );
    let unused: Vec<&String> = declared.keys().filter(|f| !used.contains(*f)).collect();
    assert!(unused.is_empty(), "families without a panel: {unused:?}");
    // Panel ids are unique (Grafana rewrites duplicates on import).
    let mut ids = HashSet::new();
    fn walk(v: &serde_json::Value, ids: &mut HashSet<u64>) {
        if let Some(panels) = v["panels"].as_array() {
            for p in panels {
                if let Some(id) = p["id"].as_u64() {
                    assert!(ids.insert(id), "duplicate panel id {id}");
                }
                walk(p, ids);
            }
        }
    }
    walk(&v, &mut ids);
}

/// The dashboard queries only families, and groups only by labels, that running nodes
/// export after the scenario's traffic.
#[test]
fn the_dashboard_queries_only_what_running_nodes_export() {
    let o = outcome();
    let o = match o.as_ref() {
        Ok(o) => o,
        Err(e) => panic!("the metrics scenario failed: {e}"),
    };
    let exported = exported(o);
    let labels: BTreeSet<String> = o
        .finals
        .iter()
        .flat_map(|s| s.values())
        .flat_map(|f| f.samples.iter())
        .flat_map(|s| s.labels.keys().cloned())
        .chain(["instance".to_string(), "job".to_string()])
        .collect();
    let (_, exprs, var_queries) = dashboard();
    let mut missing = BTreeSet::new();
    let mut bad_labels = BTreeSet::new();
    for e in exprs.iter().chain(&var_queries) {
        for f in families_in(e) {
            if !exported.contains(&f) {
                missing.insert(f);
            }
        }
        for l in grouping_labels(e) {
            if !labels.contains(&l) {
                bad_labels.insert((l, e.clone()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries families no node exports: {missing:?}\nexported: {exported:?}"
    );
    assert!(
        bad_labels.is_empty(),
        "the dashboard groups by labels no exported sample carries: {bad_labels:?}\nlabels: {labels:?}"
    );
}

// ---------------------------------------------------------------------------------------
// --metrics-addr off
// ---------------------------------------------------------------------------------------

/// The TCP ports process `pid` listens on (its socket inodes matched in /proc/net/tcp*).
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/pid/fd") {
        let Ok(entry) = entry else { continue };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            if let Some(port) = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) {
                out.insert(port);
            }
        }
    }
    out
}

#[test]
fn metrics_addr_off_opens_no_metrics_listener_and_the_node_works() {
    let s = Server::start(&["--metrics-addr", "off"]);
    let mut raw = s.raw();
    ok(&raw.cmd(&[b"SET", b"k", b"v"]), "SET");
    assert_eq!(raw.cmd(&[b"GET", b"k"]), Resp::bulk("v"), "GET");
    let ports = listening_ports(s.pid().expect("running"));
    assert!(
        !ports.contains(&DEFAULT_METRICS_PORT),
        "--metrics-addr off still listens on the default metrics port: {ports:?}"
    );
    assert_eq!(
        ports,
        BTreeSet::from([s.port()]),
        "--metrics-addr off: the node should listen on its RESP port only"
    );

    // The positive control: with an address the node listens there too and serves HELP.
    let mport = loop {
        let p = free_port();
        if p != s.port() && p != DEFAULT_METRICS_PORT {
            break p;
        }
    };
    let on = Server::start(&["--metrics-addr", &format!("127.0.0.1:{mport}")]);
    ok(&on.raw().cmd(&[b"SET", b"k", b"v"]), "SET with metrics on");
    assert_eq!(
        listening_ports(on.pid().expect("running")),
        BTreeSet::from([on.port(), mport]),
        "a node with --metrics-addr listens on its RESP and metrics ports"
    );
    let fams = scrape(mport);
    let cmds = fams.get("dynkv_commands_total").expect("dynkv_commands_total exported");
    assert!(cmds.help, "dynkv_commands_total has # HELP");
}

/// A free port for a node's metrics endpoint, never the default one (another node may
/// hold it).
fn metrics_port() -> u16 {
    loop {
        let p = free_port();
        if p != DEFAULT_METRICS_PORT {
            break p;
        }
    }
}

/// Error replies are counted by their code: WRONGPASS and NOAUTH from a node with a
/// password, ERR from an unknown command.
#[test]
fn errors_are_counted_by_kind() {
    let mport = metrics_port();
    let s = Server::start_with(Setup {
        password: Some("sekret".into()),
        ..Setup::args(&[
            "--requirepass",
            "sekret",
            "--metrics-addr",
            &format!("127.0.0.1:{mport}"),
        ])
    });
    let mut anon = Raw::connect(s.addr());
    assert!(matches!(anon.cmd(&[b"GET", b"k"]), Resp::Error(e) if e.starts_with("NOAUTH")));
    assert!(matches!(anon.cmd(&[b"AUTH", b"wrong"]), Resp::Error(e) if e.starts_with("WRONGPASS")));
    let mut raw = s.raw();
    assert!(matches!(raw.cmd(&[b"NOSUCHCOMMAND"]), Resp::Error(e) if e.starts_with("ERR")));
    let fams = scrape(mport);
    let errors = fams.get("dynkv_errors_total").expect("dynkv_errors_total exported");
    for kind in ["NOAUTH", "WRONGPASS", "ERR"] {
        let n: f64 = errors
            .samples
            .iter()
            .filter(|x| x.labels.get("kind").map(String::as_str) == Some(kind))
            .map(|x| x.value)
            .sum();
        assert!(
            n >= 1.0,
            "dynkv_errors_total{{kind=\"{kind}\"}} = {n}: {:?}",
            errors.samples
        );
    }
}

/// The metrics endpoint is a small HTTP responder of dynkv's own: it answers GET /metrics,
/// refuses other paths and methods with a status, closes on an oversized or stalled
/// request head, and keeps serving scrapes afterwards.
#[test]
fn the_metrics_endpoint_answers_bad_requests_with_a_status_and_keeps_serving() {
    let mport = metrics_port();
    let s = Server::start(&["--metrics-addr", &format!("127.0.0.1:{mport}")]);
    ok(&s.raw().cmd(&[b"SET", b"k", b"v"]), "SET");
    let addr = SocketAddr::from(([127, 0, 0, 1], mport));
    let _ = scrape(mport); // waits for the listener
    assert_eq!(http_get(addr, "/nowhere").expect("GET /nowhere").0, 404);
    let status_of = |request: &[u8]| -> String {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let _ = c.write_all(request);
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        status_of(b"POST /metrics HTTP/1.1\r\n\r\n").contains(" 405 "),
        "POST answered 405"
    );
    // Just over the 8 KiB limit, and all of it read by the server before it answers (a
    // close with unread bytes would reset the connection before the status is read).
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.resize(9000, b'a');
    assert!(status_of(&huge).contains(" 431 "), "an oversized head answered 431");
    // A client that sends half a request and stalls does not hold up others.
    let mut stalled = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stalled.write_all(b"GET /met").expect("half a request");
    let fams = scrape(mport);
    assert!(
        fams.contains_key("dynkv_commands_total"),
        "a scrape after bad requests still works"
    );
}
