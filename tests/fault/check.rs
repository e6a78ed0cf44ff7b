//! The checkers: pure functions over a history and the final state read after healing.
//! Each is unit-tested below on hand-made histories, including ones that must fail.

use std::collections::{BTreeMap, BTreeSet};

use super::history::{FaultKind, FaultSpan, Kind, Op};

/// The elements encoded in one set value (comma-separated ids).
pub fn elements(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|e| !e.is_empty())
}

/// One read of a set key after healing: every live sibling's value (a nil reply is an
/// empty list). `source` names where it came from (e.g. `SIBLINGS via node 0`).
#[derive(Debug, Clone)]
pub struct SetView {
    /// Where it was read.
    pub source: String,
    /// The key.
    pub key: String,
    /// Every sibling's value.
    pub values: Vec<String>,
}

/// What the set checker found.
#[derive(Debug, Default)]
pub struct SetReport {
    /// Acknowledged adds.
    pub acked: usize,
    /// Adds sent (ok, error or unknown).
    pub attempted: usize,
    /// Adds not acknowledged whose element is present anyway (in the first view).
    pub unacked_present: usize,
    /// (source, key) → acknowledged elements missing there.
    pub lost: BTreeMap<(String, String), Vec<String>>,
    /// (source, key) → elements present that no client ever sent to that key.
    pub phantoms: BTreeMap<(String, String), Vec<String>>,
    /// Keys written but with no view at all.
    pub unread: Vec<String>,
}

impl SetReport {
    /// No acknowledged element lost, nothing invented, every key read.
    pub fn ok(&self) -> bool {
        self.lost.is_empty() && self.phantoms.is_empty() && self.unread.is_empty()
    }
}

/// Every element whose add was acknowledged must be in the union of every view of its
/// key; every element seen must have been sent to that key.
pub fn check_sets(history: &[Op], views: &[SetView]) -> SetReport {
    let mut rep = SetReport::default();
    let mut acked: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut attempted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.kind == Kind::Add) {
        if op.outcome.attempted() {
            rep.attempted += 1;
            attempted.entry(&op.key).or_default().insert(&op.value);
        }
        if op.outcome.ok() {
            rep.acked += 1;
            acked.entry(&op.key).or_default().insert(&op.value);
        }
    }
    let mut first_seen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for key in attempted.keys() {
        if !views.iter().any(|v| v.key == *key) {
            rep.unread.push(key.to_string());
        }
    }
    for v in views {
        let seen: BTreeSet<&str> = v.values.iter().flat_map(|s| elements(s)).collect();
        first_seen.entry(&v.key).or_insert_with(|| seen.clone());
        let empty = BTreeSet::new();
        let want = acked.get(v.key.as_str()).unwrap_or(&empty);
        let lost: Vec<String> = want.difference(&seen).map(|s| s.to_string()).collect();
        if !lost.is_empty() {
            rep.lost.insert((v.source.clone(), v.key.clone()), lost);
        }
        let sent = attempted.get(v.key.as_str()).unwrap_or(&empty);
        let phantoms: Vec<String> = seen.difference(sent).map(|s| s.to_string()).collect();
        if !phantoms.is_empty() {
            rep.phantoms.insert((v.source.clone(), v.key.clone()), phantoms);
        }
    }
    for (key, seen) in first_seen {
        let empty = BTreeSet::new();
        let a = acked.get(key).unwrap_or(&empty);
        rep.unacked_present += seen.iter().filter(|e| !a.contains(*e)).count();
    }
    rep
}

/// One read of a register key after healing.
#[derive(Debug, Clone)]
pub struct RegView {
    /// Where it was read.
    pub source: String,
    /// The key.
    pub key: String,
    /// `GET`'s answer, when this view has one (`Some(None)` = nil).
    pub get: Option<Option<String>>,
    /// Every live sibling's value.
    pub siblings: Vec<String>,
}

/// A register that does not hold an allowed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegViolation {
    /// Where it was read.
    pub source: String,
    /// The key.
    pub key: String,
    /// What is wrong.
    pub detail: String,
}

/// One writer per key writing increasing numbers: the key must hold (as GET's answer and
/// as one of its siblings) the last acknowledged value or a later attempted one; values
/// never sent are violations too.
pub fn check_registers(history: &[Op], views: &[RegView]) -> Vec<RegViolation> {
    let mut out = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.kind == Kind::Set) {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in &by_key {
        let num = |o: &&Op| o.value.parse::<u64>().expect("register values are numbers");
        let last_ok = ops.iter().filter(|o| o.outcome.ok()).map(num).max();
        let attempted: BTreeSet<u64> = ops.iter().filter(|o| o.outcome.attempted()).map(num).collect();
        let allowed = |v: &str| -> bool {
            match v.parse::<u64>() {
                Ok(n) => attempted.contains(&n) && last_ok.is_none_or(|l| n >= l),
                Err(_) => false,
            }
        };
        let describe = || match last_ok {
            Some(l) => format!(
                "last acknowledged {l}, later attempted {:?}",
                attempted.range(l + 1..).collect::<Vec<_>>()
            ),
            None => format!("nothing acknowledged, attempted {attempted:?}"),
        };
        let kviews: Vec<&RegView> = views.iter().filter(|v| v.key == *key).collect();
        if kviews.is_empty() && !attempted.is_empty() {
            out.push(RegViolation {
                source: "-".into(),
                key: key.to_string(),
                detail: "never read back".into(),
            });
        }
        for v in kviews {
            let mut bad = |detail: String| {
                out.push(RegViolation {
                    source: v.source.clone(),
                    key: key.to_string(),
                    detail: format!("{detail}; {}", describe()),
                })
            };
            if let Some(get) = &v.get {
                match get {
                    Some(g) if !allowed(g) => {
                        let older = ops
                            .iter()
                            .find(|o| o.value == *g && o.outcome.attempted() && !o.outcome.ok());
                        bad(match older {
                            Some(o) => format!(
                                "GET answered {g}, an older write that was NOT acknowledged ({:?}) yet took effect \
                                 after later acknowledged ones (a late-applied request?)",
                                o.outcome
                            ),
                            None => format!("GET answered {g}"),
                        })
                    }
                    None if last_ok.is_some() => bad("GET answered nil".into()),
                    _ => {}
                }
            }
            if v.siblings.is_empty() {
                if last_ok.is_some() {
                    bad("no sibling at all".into());
                }
            } else if !v.siblings.iter().any(|s| allowed(s)) {
                bad(format!("siblings {:?} hold neither", v.siblings));
            }
            let invented: Vec<&String> = v
                .siblings
                .iter()
                .filter(|s| s.parse::<u64>().map_or(true, |n| !attempted.contains(&n)))
                .collect();
            if !invented.is_empty() {
                bad(format!("siblings {invented:?} were never written"));
            }
        }
    }
    out
}

/// A node's own copy of a key: (context, values sorted), or `None` if it holds none.
pub type Copy = Option<(String, Vec<String>)>;

/// What the convergence checker found.
#[derive(Debug, Default)]
pub struct ConvReport {
    /// Keys whose holders disagree → every node's copy.
    pub diverged: BTreeMap<String, Vec<Copy>>,
    /// Key → how many nodes hold it.
    pub holders: BTreeMap<String, usize>,
}

impl ConvReport {
    /// Every holder of every key has the same context and values.
    pub fn converged(&self) -> bool {
        self.diverged.is_empty()
    }

    /// Keys held by some node but by other than `n` nodes (a key no node holds was never
    /// written, or lost: the set and register checkers judge that).
    pub fn not_on(&self, n: usize) -> BTreeMap<String, usize> {
        self.holders
            .iter()
            .filter(|(_, h)| **h != 0 && **h != n)
            .map(|(k, h)| (k.clone(), *h))
            .collect()
    }
}

/// `snapshot`: key → each node's copy (index = node). Every holder must agree.
pub fn check_convergence(snapshot: &BTreeMap<String, Vec<Copy>>) -> ConvReport {
    let mut rep = ConvReport::default();
    for (key, copies) in snapshot {
        let norm: Vec<Copy> = copies
            .iter()
            .map(|c| {
                c.clone().map(|(ctx, mut v)| {
                    v.sort();
                    (ctx, v)
                })
            })
            .collect();
        let held: Vec<&(String, Vec<String>)> = norm.iter().flatten().collect();
        rep.holders.insert(key.clone(), held.len());
        if held.windows(2).any(|w| w[0] != w[1]) {
            rep.diverged.insert(key.clone(), norm);
        }
    }
    rep
}

/// Where a client stood when it sent a write.
pub const CATEGORIES: [&str; 5] = [
    "no fault",
    "others cut away, client's node on the majority side",
    "client's node in a split's minority side",
    "client's node down, wiped, paused or isolated",
    "one-way loss only",
];

/// Category of a write sent at `t` by a client of `node`, given the faults.
pub fn category(t: u64, node: usize, spans: &[FaultSpan]) -> &'static str {
    let active: Vec<&FaultSpan> = spans.iter().filter(|s| s.active(t)).collect();
    if active.is_empty() {
        return CATEGORIES[0];
    }
    let own_down = active
        .iter()
        .any(|s| matches!(s.kind, FaultKind::Kill(i) | FaultKind::Wipe(i) | FaultKind::Pause(i) | FaultKind::Isolate(i) if i == node));
    if own_down {
        return CATEGORIES[3];
    }
    if active
        .iter()
        .any(|s| matches!(&s.kind, FaultKind::Split(side) if side.contains(&node)))
    {
        return CATEGORIES[2];
    }
    if active.iter().any(|s| !s.cut().is_empty()) {
        return CATEGORIES[1];
    }
    CATEGORIES[4]
}

/// Per category: (acknowledged writes, writes tried). Every write counts, never-sent
/// ones included (the client could not reach its node: the write was not available).
pub fn availability(history: &[Op], spans: &[FaultSpan]) -> BTreeMap<&'static str, (usize, usize)> {
    let mut out: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for op in history.iter().filter(|o| o.kind.is_write()) {
        let e = out.entry(category(op.start_ms, op.node, spans)).or_default();
        e.1 += 1;
        if op.outcome.ok() {
            e.0 += 1;
        }
    }
    out
}

/// A printable availability table.
pub fn availability_table(a: &BTreeMap<&'static str, (usize, usize)>) -> String {
    let mut s = String::new();
    for c in CATEGORIES {
        if let Some((ok, n)) = a.get(c) {
            s.push_str(&format!(
                "  {c:<52} {ok:>6}/{n:<6} = {:>5.1}% acknowledged\n",
                100.0 * *ok as f64 / (*n).max(1) as f64
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::history::Outcome;
    use super::*;

    fn op(client: usize, kind: Kind, key: &str, value: &str, outcome: Outcome) -> Op {
        Op {
            client,
            node: client,
            kind,
            key: key.into(),
            value: value.into(),
            start_ms: 0,
            end_ms: 1,
            outcome,
        }
    }

    fn add(c: usize, key: &str, e: &str, o: Outcome) -> Op {
        op(c, Kind::Add, key, e, o)
    }

    fn set(key: &str, v: u64, o: Outcome) -> Op {
        op(0, Kind::Set, key, &v.to_string(), o)
    }

    fn sview(source: &str, key: &str, values: &[&str]) -> SetView {
        SetView {
            source: source.into(),
            key: key.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn unknown() -> Outcome {
        Outcome::Unknown("timeout".into())
    }

    #[test]
    fn set_checker_passes_when_every_acked_element_is_in_some_sibling() {
        let h = vec![
            add(0, "s", "a", Outcome::Ok),
            add(1, "s", "b", Outcome::Ok),
            add(1, "s", "c", Outcome::Err("quorum".into())),
            add(2, "s", "d", unknown()),
            add(2, "s", "e", Outcome::NotSent("refused".into())),
        ];
        // a and b in two siblings; c (error) present, d (unknown) absent: both fine.
        let r = check_sets(&h, &[sview("v", "s", &["a,c", "b"])]);
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.acked, r.attempted, r.unacked_present), (2, 4, 1));
    }

    #[test]
    fn set_checker_reports_a_lost_acked_element_by_view_and_key() {
        let h = vec![
            add(0, "s", "a", Outcome::Ok),
            add(1, "s", "b", Outcome::Ok),
            add(0, "t", "x", Outcome::Ok),
        ];
        let r = check_sets(
            &h,
            &[
                sview("node0", "s", &["a"]),
                sview("node1", "s", &["a,b"]),
                sview("node0", "t", &[]),
            ],
        );
        assert!(!r.ok());
        assert_eq!(r.lost.len(), 2, "{r:?}");
        assert_eq!(r.lost[&("node0".to_string(), "s".to_string())], vec!["b".to_string()]);
        assert_eq!(r.lost[&("node0".to_string(), "t".to_string())], vec!["x".to_string()]);
    }

    #[test]
    fn set_checker_reports_phantoms_and_unread_keys() {
        let h = vec![
            add(0, "s", "a", Outcome::Ok),
            add(0, "u", "z", unknown()),
            add(0, "w", "q", Outcome::NotSent("down".into())),
        ];
        // "q" was never sent: its presence is a phantom; "u" was never read.
        let r = check_sets(&h, &[sview("v", "s", &["a,q"])]);
        assert!(!r.ok());
        assert_eq!(r.phantoms[&("v".to_string(), "s".to_string())], vec!["q".to_string()]);
        assert_eq!(r.unread, vec!["u".to_string()]);
    }

    fn rview(key: &str, get: Option<&str>, sibs: &[&str]) -> RegView {
        RegView {
            source: "v".into(),
            key: key.into(),
            get: Some(get.map(String::from)),
            siblings: sibs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn register_checker_accepts_last_acked_or_later_attempted() {
        let h = vec![
            set("r", 1, Outcome::Ok),
            set("r", 2, Outcome::Ok),
            set("r", 3, Outcome::Err("quorum".into())),
            set("r", 4, unknown()),
            set("r", 5, Outcome::NotSent("down".into())),
        ];
        for v in ["2", "3", "4"] {
            assert_eq!(check_registers(&h, &[rview("r", Some(v), &[v])]), vec![], "value {v}");
        }
        // Siblings of an older and an allowed value are fine (the allowed one is there).
        assert_eq!(check_registers(&h, &[rview("r", Some("4"), &["1", "4"])]), vec![]);
        // Nothing acknowledged at all: nil or any attempted value.
        let h2 = vec![set("q", 1, unknown())];
        assert_eq!(check_registers(&h2, &[rview("q", None, &[])]), vec![]);
        assert_eq!(check_registers(&h2, &[rview("q", Some("1"), &["1"])]), vec![]);
    }

    #[test]
    fn register_checker_rejects_stale_missing_and_invented_values() {
        let h = vec![
            set("r", 1, Outcome::Ok),
            set("r", 2, Outcome::Ok),
            set("r", 3, Outcome::NotSent("x".into())),
        ];
        let stale = check_registers(&h, &[rview("r", Some("1"), &["1"])]);
        assert_eq!(stale.len(), 2, "GET and siblings both stale: {stale:?}");
        assert!(stale[0].detail.contains("last acknowledged 2"), "{stale:?}");
        assert_eq!(check_registers(&h, &[rview("r", None, &[])]).len(), 2, "lost entirely");
        // 3 was never sent: holding it is a violation even though it is "later".
        let invented = check_registers(&h, &[rview("r", Some("3"), &["3"])]);
        assert!(
            invented.iter().any(|v| v.detail.contains("never written")),
            "{invented:?}"
        );
        // A GET winner that is stale while an allowed sibling exists still fails.
        assert_eq!(check_registers(&h, &[rview("r", Some("1"), &["1", "2"])]).len(), 1);
        assert_eq!(check_registers(&h, &[]).len(), 1, "never read back");
    }

    fn copy(ctx: &str, vals: &[&str]) -> Copy {
        Some((ctx.into(), vals.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn convergence_checker_compares_holders_only_and_ignores_sibling_order() {
        let mut snap = BTreeMap::new();
        snap.insert(
            "a".to_string(),
            vec![copy("c1", &["x", "y"]), None, copy("c1", &["y", "x"]), None],
        );
        snap.insert("b".to_string(), vec![None, None, None, None]);
        snap.insert("c".to_string(), vec![None, copy("c1", &["x"]), None, None]);
        let r = check_convergence(&snap);
        assert!(r.converged(), "{r:?}");
        assert_eq!(r.holders["a"], 2);
        assert_eq!(r.holders["b"], 0);
        assert_eq!(
            r.not_on(2).keys().collect::<Vec<_>>(),
            vec!["c"],
            "held by none is not judged here"
        );
        assert_eq!(r.not_on(1).keys().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn convergence_checker_finds_a_different_context_or_value() {
        let mut snap = BTreeMap::new();
        snap.insert("a".to_string(), vec![copy("c1", &["x"]), copy("c2", &["x"]), None]);
        snap.insert("b".to_string(), vec![copy("c1", &["x"]), copy("c1", &["x", "y"]), None]);
        snap.insert(
            "c".to_string(),
            vec![copy("c1", &["x"]), copy("c1", &["x"]), copy("c1", &["x"])],
        );
        let r = check_convergence(&snap);
        assert!(!r.converged());
        assert_eq!(r.diverged.keys().collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn availability_classifies_writes_by_the_faults_in_force() {
        let spans = vec![
            FaultSpan {
                kind: FaultKind::Split(vec![3, 4]),
                start_ms: 100,
                end_ms: 200,
            },
            FaultSpan {
                kind: FaultKind::Kill(1),
                start_ms: 300,
                end_ms: 400,
            },
            FaultSpan {
                kind: FaultKind::OneWay { to: 0, from: 2 },
                start_ms: 500,
                end_ms: 600,
            },
            FaultSpan {
                kind: FaultKind::Wipe(4),
                start_ms: 700,
                end_ms: 800,
            },
        ];
        let at = |t: u64, node: usize, ok: bool| Op {
            start_ms: t,
            node,
            ..op(node, Kind::Set, "r", "1", if ok { Outcome::Ok } else { unknown() })
        };
        let h = vec![
            at(50, 0, true),
            at(150, 0, true),
            at(150, 3, false),
            at(150, 4, true),
            at(350, 1, false),
            at(350, 2, true),
            at(550, 0, true),
            at(750, 4, false),
            at(750, 0, true),
            Op {
                kind: Kind::Read,
                ..at(150, 0, false)
            },
        ];
        let a = availability(&h, &spans);
        assert_eq!(a[CATEGORIES[0]], (1, 1));
        assert_eq!(a[CATEGORIES[1]], (3, 3));
        assert_eq!(a[CATEGORIES[2]], (1, 2));
        assert_eq!(a[CATEGORIES[3]], (0, 2));
        assert_eq!(a[CATEGORIES[4]], (1, 1));
        assert!(availability_table(&a).contains("50.0%"));
    }
}
