//! Sibling sets (DVV-sets): the per-key value container.
//!
//! A [`SiblingSet`] holds a causal context (a [`VersionVector`]) and the
//! siblings that are mutually concurrent within it. Two operations change it:
//!
//! * [`SiblingSet::write`]: a coordinator applies a client write carrying the
//!   context `C` the client last read. Siblings covered by `C` are replaced,
//!   concurrent ones are kept, and the new sibling gets a fresh dot.
//! * [`SiblingSet::merge`]: replicas exchange states; the result is the
//!   DVV-set sync (a join-semilattice join), so replication order and
//!   repetition do not matter.
//!
//! Invariants (kept by every operation and checked by the decoder): every
//! sibling's dot is covered by the context, siblings have distinct dots and
//! are sorted by dot, tombstones carry empty values.

use std::cmp::Ordering;

use bytes::Bytes;

use super::vector::{Dot, NodeId, VersionVector};

/// One concurrent version of a key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// The write that created this sibling; unique per key.
    pub dot: Dot,
    /// Coordinator wall-clock time of the write, in ms since the Unix epoch;
    /// used only for choosing a deterministic [`SiblingSet::winner`].
    pub written_at_ms: u64,
    /// Absolute expiry in ms since the Unix epoch; `None` never expires.
    pub expires_at_ms: Option<u64>,
    /// True for a delete marker; such siblings are never live.
    pub tombstone: bool,
    /// The stored value (always empty for tombstones).
    pub value: Bytes,
}

impl Sibling {
    /// Live = not a tombstone and not expired at `now_ms` (a sibling is
    /// expired when `expires_at_ms <= now_ms`). Only live siblings are
    /// visible to reads.
    #[must_use]
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.tombstone && self.expires_at_ms.is_none_or(|exp| exp > now_ms)
    }

    /// Total order used only when two replicas hold *different* payloads for
    /// the same dot (which correct operation never produces): picking the
    /// greater one keeps merge commutative and associative even then.
    fn payload_cmp(&self, other: &Sibling) -> Ordering {
        (self.written_at_ms, self.expires_at_ms, self.tombstone, &self.value).cmp(&(
            other.written_at_ms,
            other.expires_at_ms,
            other.tombstone,
            &other.value,
        ))
    }
}

/// What a coordinator writes: the new sibling's payload. The dot is assigned
/// by [`SiblingSet::write`], so callers cannot forge or reuse one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSibling {
    /// The value to store (ignored and stored empty when `tombstone`).
    pub value: Bytes,
    /// Coordinator wall-clock time of the write, in ms since the epoch.
    pub written_at_ms: u64,
    /// Absolute expiry in ms since the epoch, or `None` for no expiry.
    pub expires_at_ms: Option<u64>,
    /// True to write a delete marker instead of a value.
    pub tombstone: bool,
}

/// A key's causal context plus its concurrent siblings (a DVV-set).
///
/// Fields are private so the invariants (dots covered by the context,
/// distinct, sorted) can only be established by [`SiblingSet::write`],
/// [`SiblingSet::merge`] and the validating decoder. Because the
/// representation is canonical, derived equality is semantic equality.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiblingSet {
    context: VersionVector,
    siblings: Vec<Sibling>,
}

impl SiblingSet {
    /// The empty set: no context, no siblings (what a missing key reads as).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Assembles a set from parts the decoder has already validated.
    pub(super) fn from_validated_parts(context: VersionVector, siblings: Vec<Sibling>) -> Self {
        let s = SiblingSet { context, siblings };
        debug_assert!(s.invariant_violation().is_none());
        s
    }

    /// The causal context: every write this set has seen (kept or replaced).
    /// Clients read it (as a token) and send it back with their next write.
    #[must_use]
    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// All siblings, including tombstones and expired ones, sorted by dot so
    /// that iteration and encoding are deterministic.
    #[must_use]
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Applies a client write coordinated by `node` with client context `ctx`
    /// and returns the new sibling's dot.
    ///
    /// The dot counter is `max(max(self.context[node], ctx[node]) + 1,
    /// counter_floor)`: strictly above anything `node` issued for this key,
    /// and at least `counter_floor` (e.g. the wall clock in microseconds) so
    /// counters stay unique even if the record was reaped and recreated.
    /// Every sibling covered by `ctx` is removed (the client saw it and is
    /// replacing it), every other sibling is kept (it is concurrent), the new
    /// sibling is added, and the context becomes
    /// `join(self.context, ctx) + dot`. A tombstone's value is stored empty.
    pub fn write(&mut self, ctx: &VersionVector, node: NodeId, counter_floor: u64, new: NewSibling) -> Dot {
        let dot = next_dot(node, self.context.get(node).max(ctx.get(node)), counter_floor);
        self.siblings.retain(|s| !ctx.covers(s.dot));
        self.context.join(ctx);
        self.add(dot, new);
        dot
    }

    /// [`SiblingSet::write`] with this set's own context: the new value supersedes every
    /// sibling the set holds (a plain SET). Same result, without copying the context.
    pub fn write_current(&mut self, node: NodeId, counter_floor: u64, new: NewSibling) -> Dot {
        let dot = next_dot(node, self.context.get(node), counter_floor);
        let context = &self.context;
        self.siblings.retain(|s| !context.covers(s.dot));
        self.add(dot, new);
        dot
    }

    /// Adds `new` under `dot` and advances the context past it (the end of a write).
    fn add(&mut self, dot: Dot, new: NewSibling) {
        self.context.advance(dot);
        let sibling = Sibling {
            dot,
            written_at_ms: new.written_at_ms,
            expires_at_ms: new.expires_at_ms,
            tombstone: new.tombstone,
            value: if new.tombstone { Bytes::new() } else { new.value },
        };
        // A collision is only possible once a counter saturates at u64::MAX;
        // replacing keeps dots distinct even then.
        match self.siblings.binary_search_by(|s| s.dot.cmp(&dot)) {
            Ok(i) => self.siblings[i] = sibling,
            Err(i) => self.siblings.insert(i, sibling),
        }
    }

    /// Drops the siblings written before `before_ms`: a FLUSHALL at that time removed
    /// them, and a copy arriving late (a replica write still in flight, a repair, an
    /// anti-entropy push) must not bring them back. The context keeps their dots. True
    /// when any sibling is left.
    pub fn forget_written_before(&mut self, before_ms: u64) -> bool {
        self.siblings.retain(|s| s.written_at_ms >= before_ms);
        !self.siblings.is_empty()
    }

    /// Merges another replica's state into this one (DVV-set sync).
    ///
    /// Keeps each side's siblings that the other side's context does not
    /// cover (the other side has not seen them), plus siblings present on
    /// both sides (same dot); drops a sibling only when the other side has
    /// seen it and replaced it. The context becomes the join of both. This
    /// is a lattice join: commutative, associative and idempotent.
    pub fn merge(&mut self, other: &SiblingSet) {
        let mut out = Vec::with_capacity(self.siblings.len().max(other.siblings.len()));
        let mut mine = std::mem::take(&mut self.siblings).into_iter().peekable();
        let mut theirs = other.siblings.iter().peekable();
        loop {
            let order = match (mine.peek(), theirs.peek()) {
                (Some(a), Some(b)) => a.dot.cmp(&b.dot),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match order {
                Ordering::Less => {
                    if let Some(a) = mine.next()
                        && !other.context.covers(a.dot)
                    {
                        out.push(a);
                    }
                }
                Ordering::Greater => {
                    if let Some(b) = theirs.next()
                        && !self.context.covers(b.dot)
                    {
                        out.push(b.clone());
                    }
                }
                Ordering::Equal => {
                    if let (Some(a), Some(b)) = (mine.next(), theirs.next()) {
                        if b.payload_cmp(&a) == Ordering::Greater {
                            out.push(b.clone());
                        } else {
                            out.push(a);
                        }
                    }
                }
            }
        }
        self.siblings = out;
        self.context.join(&other.context);
    }

    /// The siblings visible to reads at `now_ms`: not tombstones, not expired.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &Sibling> + '_ {
        self.siblings.iter().filter(move |s| s.is_live(now_ms))
    }

    /// Deterministic winner among live siblings: greatest `written_at_ms`,
    /// ties broken by greatest dot. Used by plain `GET` so every replica and
    /// every coordinator answers the same value for the same state.
    #[must_use]
    pub fn winner(&self, now_ms: u64) -> Option<&Sibling> {
        self.live(now_ms).max_by_key(|s| (s.written_at_ms, s.dot))
    }

    /// The [`SiblingSet::winner`], moved out of the set (no copy of its value).
    #[must_use]
    pub fn into_winner(self, now_ms: u64) -> Option<Sibling> {
        let i = self
            .siblings
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_live(now_ms))
            .max_by_key(|(_, s)| (s.written_at_ms, s.dot))?
            .0;
        let mut siblings = self.siblings;
        Some(siblings.swap_remove(i))
    }

    /// True when no sibling is live (all tombstones/expired, or empty): the
    /// key reads as missing and the record is a candidate for reaping.
    #[must_use]
    pub fn is_dead(&self, now_ms: u64) -> bool {
        self.live(now_ms).next().is_none()
    }

    /// Describes the first broken invariant, if any (used by debug
    /// assertions and tests).
    fn invariant_violation(&self) -> Option<&'static str> {
        if !self.siblings.windows(2).all(|w| w[0].dot < w[1].dot) {
            return Some("sibling dots not strictly increasing");
        }
        if !self.siblings.iter().all(|s| self.context.covers(s.dot)) {
            return Some("sibling dot not covered by context");
        }
        if self.siblings.iter().any(|s| s.dot.counter == 0) {
            return Some("zero dot counter");
        }
        if self.siblings.iter().any(|s| s.tombstone && !s.value.is_empty()) {
            return Some("tombstone with value");
        }
        if self.context.iter().any(|(_, c)| c == 0) {
            return Some("zero context entry");
        }
        None
    }
}

/// The dot of a write by `node` whose context has seen `base` of its writes: the next
/// counter, and at least `counter_floor` (and 1).
fn next_dot(node: NodeId, base: u64, counter_floor: u64) -> Dot {
    Dot::new(node, base.saturating_add(1).max(counter_floor).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn put(v: &'static str, at: u64) -> NewSibling {
        NewSibling {
            value: Bytes::from_static(v.as_bytes()),
            written_at_ms: at,
            expires_at_ms: None,
            tombstone: false,
        }
    }

    fn del(at: u64) -> NewSibling {
        NewSibling {
            value: Bytes::from_static(b"ignored"),
            written_at_ms: at,
            expires_at_ms: None,
            tombstone: true,
        }
    }

    fn values(s: &SiblingSet) -> Vec<&[u8]> {
        s.siblings().iter().map(|x| &x.value[..]).collect()
    }

    fn check(s: &SiblingSet) {
        assert_eq!(s.invariant_violation(), None, "{s:?}");
    }

    fn empty() -> VersionVector {
        VersionVector::new()
    }

    #[test]
    fn first_write() {
        let mut s = SiblingSet::new();
        let d = s.write(&empty(), 7, 0, put("a", 10));
        assert_eq!(d, Dot::new(7, 1));
        assert_eq!(s.context().iter().collect::<Vec<_>>(), vec![(7, 1)]);
        assert_eq!(values(&s), vec![b"a"]);
        check(&s);
    }

    #[test]
    fn counter_rule() {
        let mut s = SiblingSet::new();
        assert_eq!(s.write(&empty(), 1, 0, put("a", 1)).counter, 1);
        // Floor above the local counter wins.
        assert_eq!(s.write(&s.context().clone(), 1, 100, put("b", 2)).counter, 100);
        // Floor below: local + 1.
        assert_eq!(s.write(&s.context().clone(), 1, 50, put("c", 3)).counter, 101);
        // Client context ahead of local state (e.g. record reaped here).
        let mut ahead = VersionVector::new();
        ahead.advance(Dot::new(1, 500));
        let mut fresh = SiblingSet::new();
        assert_eq!(fresh.write(&ahead, 1, 0, put("d", 4)).counter, 501);
        assert_eq!(fresh.context().get(1), 501);
        // Other nodes' entries do not influence the counter.
        let mut other = VersionVector::new();
        other.advance(Dot::new(2, 900));
        assert_eq!(fresh.write(&other, 1, 0, put("e", 5)).counter, 502);
        check(&fresh);
    }

    #[test]
    fn sequential_writes_with_current_context_never_sibling() {
        let mut s = SiblingSet::new();
        for (i, node) in [1, 2, 3, 1, 1, 2].into_iter().enumerate() {
            let ctx = s.context().clone();
            s.write(&ctx, node, 0, put("x", i as u64));
            assert_eq!(s.siblings().len(), 1);
            check(&s);
        }
        assert_eq!(s.siblings()[0].dot, Dot::new(2, 2));
    }

    #[test]
    fn stale_context_creates_siblings_then_resolve_collapses() {
        let mut s = SiblingSet::new();
        s.write(&empty(), 1, 0, put("base", 1));
        let stale = s.context().clone();
        s.write(&stale, 1, 0, put("a", 2));
        s.write(&stale, 2, 0, put("b", 3));
        assert_eq!(values(&s), vec![&b"a"[..], b"b"]);
        check(&s);
        // Both writes are concurrent even from the same coordinator.
        let mut t = SiblingSet::new();
        t.write(&empty(), 1, 0, put("a", 1));
        t.write(&empty(), 1, 0, put("b", 2));
        assert_eq!(t.siblings().len(), 2);
        // A write carrying the merged context collapses them.
        let merged = s.context().clone();
        s.write(&merged, 3, 0, put("resolved", 4));
        assert_eq!(values(&s), vec![b"resolved"]);
        check(&s);
    }

    #[test]
    fn write_keeps_uncovered_siblings() {
        let mut a = SiblingSet::new();
        let mut b = SiblingSet::new();
        a.write(&empty(), 1, 0, put("a", 1));
        b.write(&empty(), 2, 0, put("b", 2));
        let ctx_a = a.context().clone();
        a.merge(&b);
        assert_eq!(a.siblings().len(), 2);
        // Client had only seen "a": "b" must survive.
        a.write(&ctx_a, 1, 0, put("a2", 3));
        assert_eq!(values(&a), vec![&b"a2"[..], b"b"]);
        check(&a);
    }

    #[test]
    fn tombstone_value_is_cleared_and_not_live() {
        let mut s = SiblingSet::new();
        s.write(&empty(), 1, 0, put("a", 1));
        let ctx = s.context().clone();
        s.write(&ctx, 1, 0, del(2));
        assert_eq!(s.siblings().len(), 1);
        assert!(s.siblings()[0].tombstone);
        assert!(s.siblings()[0].value.is_empty());
        assert!(s.is_dead(0));
        assert_eq!(s.winner(0), None);
        check(&s);
    }

    #[test]
    fn saturated_counter_keeps_dots_distinct() {
        let mut s = SiblingSet::new();
        s.write(&empty(), 1, u64::MAX, put("a", 1));
        s.write(&empty(), 1, 0, put("b", 2));
        assert_eq!(s.siblings().len(), 1);
        check(&s);
    }

    #[test]
    fn merge_rules() {
        let mut a = SiblingSet::new();
        a.write(&empty(), 1, 0, put("a", 1));
        let mut b = a.clone();
        // b overwrites a's sibling; a does not.
        let ctx = b.context().clone();
        b.write(&ctx, 2, 0, put("b", 2));
        let mut ab = a.clone();
        ab.merge(&b);
        assert_eq!(ab, b, "covered sibling dropped, newer kept");
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ba, b);
        // Concurrent write on a: both survive.
        a.write(&ctx, 1, 0, put("a2", 3));
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(values(&m), vec![&b"a2"[..], b"b"]);
        let mut m2 = b.clone();
        m2.merge(&a);
        assert_eq!(m, m2);
        // Idempotent; same-dot siblings appear once.
        let mut mm = m.clone();
        mm.merge(&m);
        assert_eq!(mm, m);
        check(&m);
        // Merging into / from empty.
        let mut e = SiblingSet::new();
        e.merge(&m);
        assert_eq!(e, m);
        let mut m3 = m.clone();
        m3.merge(&SiblingSet::new());
        assert_eq!(m3, m);
    }

    #[test]
    fn merge_conflicting_payloads_for_same_dot_is_deterministic() {
        let mut a = SiblingSet::new();
        a.write(&empty(), 1, 0, put("a", 1));
        let mut b = SiblingSet::new();
        b.write(&empty(), 1, 0, put("b", 1));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.siblings().len(), 1);
    }

    #[test]
    fn liveness_and_winner() {
        let mut s = SiblingSet::new();
        s.write(&empty(), 1, 0, put("old", 10));
        s.write(
            &empty(),
            2,
            0,
            NewSibling {
                expires_at_ms: Some(100),
                ..put("expiring", 50)
            },
        );
        s.write(&empty(), 3, 0, put("tie-low", 20));
        s.write(&empty(), 4, 0, put("tie-high", 20));
        s.write(&empty(), 5, 0, del(1000));
        assert_eq!(s.siblings().len(), 5);
        assert_eq!(s.live(99).count(), 4);
        assert_eq!(s.winner(99).map(|w| &w.value[..]), Some(&b"expiring"[..]));
        // Expired exactly at expires_at_ms.
        assert!(!s.siblings()[1].is_live(100));
        assert!(s.siblings()[1].is_live(99));
        assert_eq!(s.live(100).count(), 3);
        // Tie on written_at_ms broken by greatest dot (node 4 > node 3).
        assert_eq!(s.winner(100).map(|w| &w.value[..]), Some(&b"tie-high"[..]));
        assert!(!s.is_dead(100));
        assert!(SiblingSet::new().is_dead(0));
        assert_eq!(SiblingSet::new().winner(0), None);
        // into_winner moves out exactly the sibling winner picks.
        for now in [0, 99, 100, 5000] {
            assert_eq!(s.clone().into_winner(now).as_ref(), s.winner(now), "at {now}");
        }
        assert_eq!(SiblingSet::new().into_winner(0), None);
    }

    #[test]
    fn all_expired_is_dead() {
        let mut s = SiblingSet::new();
        s.write(
            &empty(),
            1,
            0,
            NewSibling {
                expires_at_ms: Some(5),
                ..put("a", 1)
            },
        );
        assert!(!s.is_dead(4));
        assert!(s.is_dead(5));
    }

    // ---------------------------------------------------------------------
    // Property tests over random histories.
    // ---------------------------------------------------------------------

    /// Node ids of the simulated replicas (deliberately sparse and large).
    const NODES: [NodeId; 3] = [3, 1 << 40, u64::MAX - 1];

    #[derive(Debug, Clone)]
    enum Op {
        /// A client reads replica `r` and remembers its context.
        Read(usize),
        /// Replica `r` coordinates a write with remembered context `ctx`.
        Write {
            r: usize,
            ctx: usize,
            floor: u64,
            tombstone: bool,
            ttl: Option<u64>,
            at: u64,
        },
        /// Replica `to` merges replica `from`'s state.
        Merge { from: usize, to: usize },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let r = 0..NODES.len();
        prop_oneof![
            2 => r.clone().prop_map(Op::Read),
            4 => (
                r.clone(),
                any::<usize>(),
                prop_oneof![3 => Just(0u64), 1 => 0..40u64],
                proptest::bool::weighted(0.2),
                proptest::option::weighted(0.3, 0..100u64),
                0..20u64,
            )
                .prop_map(|(r, ctx, floor, tombstone, ttl, at)| Op::Write {
                    r,
                    ctx,
                    floor,
                    tombstone,
                    ttl,
                    at
                }),
            3 => (r.clone(), r).prop_map(|(from, to)| Op::Merge { from, to }),
        ]
    }

    /// The outcome of replaying a history.
    struct History {
        replicas: Vec<SiblingSet>,
        /// Every state any replica passed through.
        snapshots: Vec<SiblingSet>,
        /// Every write: its dot, payload and the client context it carried.
        writes: Vec<(Sibling, VersionVector)>,
    }

    /// Replays `ops`, asserting after every step the structural invariants,
    /// the write rule (uncovered old siblings survive) and the merge rule
    /// (a sibling disappears only if the other side's context covers it).
    fn run(ops: &[Op]) -> History {
        let mut replicas = vec![SiblingSet::new(); NODES.len()];
        let mut contexts = vec![VersionVector::new()];
        let mut snapshots = vec![SiblingSet::new()];
        let mut writes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Read(r) => contexts.push(replicas[r].context().clone()),
                Op::Write {
                    r,
                    ctx,
                    floor,
                    tombstone,
                    ttl,
                    at,
                } => {
                    let ctx = contexts[ctx % contexts.len()].clone();
                    let before = replicas[r].clone();
                    let value = Bytes::from(format!("w{i}"));
                    let dot = replicas[r].write(
                        &ctx,
                        NODES[r],
                        floor,
                        NewSibling {
                            value,
                            written_at_ms: at,
                            expires_at_ms: ttl.map(|t| at + t),
                            tombstone,
                        },
                    );
                    let after = &replicas[r];
                    check(after);
                    assert!(!before.context().covers(dot), "fresh dot");
                    assert!(dot.counter >= floor);
                    for s in before.siblings() {
                        if !ctx.covers(s.dot) {
                            assert!(after.siblings().contains(s), "lost uncovered {s:?}");
                        } else {
                            assert!(!after.siblings().iter().any(|x| x.dot == s.dot));
                        }
                    }
                    assert_eq!(after.siblings().len(), {
                        let kept = before.siblings().iter().filter(|s| !ctx.covers(s.dot)).count();
                        kept + 1
                    });
                    let mut expect_ctx = before.context().clone();
                    expect_ctx.join(&ctx);
                    expect_ctx.advance(dot);
                    assert_eq!(after.context(), &expect_ctx);
                    let new = after
                        .siblings()
                        .iter()
                        .find(|s| s.dot == dot)
                        .cloned()
                        .expect("new sibling present");
                    writes.push((new, ctx));
                    snapshots.push(after.clone());
                }
                Op::Merge { from, to } => {
                    let other = replicas[from].clone();
                    let before = replicas[to].clone();
                    replicas[to].merge(&other);
                    let after = &replicas[to];
                    check(after);
                    for (x, y) in [(&before, &other), (&other, &before)] {
                        for s in x.siblings() {
                            let kept = after.siblings().contains(s);
                            let present_in_y = y.siblings().iter().any(|t| t.dot == s.dot);
                            if !y.context().covers(s.dot) || present_in_y {
                                assert!(kept, "lost {s:?}");
                            } else {
                                assert!(!kept, "resurrected {s:?}");
                            }
                        }
                    }
                    assert!(after.context().descends(before.context()));
                    assert!(after.context().descends(other.context()));
                    snapshots.push(after.clone());
                }
            }
        }
        History {
            replicas,
            snapshots,
            writes,
        }
    }

    fn merged(a: &SiblingSet, b: &SiblingSet) -> SiblingSet {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(arb_op(), 0..40)
    }

    proptest! {
        #[test]
        fn prop_history_invariants(ops in arb_ops()) {
            let h = run(&ops);
            // Dots are unique across the whole history: one payload per dot.
            let mut by_dot = BTreeMap::new();
            for (s, _) in &h.writes {
                prop_assert!(by_dot.insert(s.dot, s.clone()).is_none());
            }
            for snap in &h.snapshots {
                for s in snap.siblings() {
                    prop_assert_eq!(by_dot.get(&s.dot), Some(s));
                }
            }
        }

        #[test]
        fn prop_write_current_is_write_with_the_own_context(
            ops in arb_ops(),
            node in 0..NODES.len(),
            floor in prop_oneof![3 => Just(0u64), 1 => 0..40u64],
            tombstone in proptest::bool::weighted(0.2),
            at in 0..20u64,
        ) {
            let h = run(&ops);
            for snap in &h.snapshots {
                let new = NewSibling {
                    value: Bytes::from_static(b"v"),
                    written_at_ms: at,
                    expires_at_ms: None,
                    tombstone,
                };
                let mut general = snap.clone();
                let own = general.context().clone();
                let d1 = general.write(&own, NODES[node], floor, new.clone());
                let mut quick = snap.clone();
                let d2 = quick.write_current(NODES[node], floor, new);
                prop_assert_eq!(d1, d2);
                prop_assert_eq!(&quick, &general);
            }
        }

        #[test]
        fn prop_join_is_the_pointwise_maximum(
            a in proptest::collection::btree_map(0..6u64, 1..5u64, 0..5),
            b in proptest::collection::btree_map(0..6u64, 1..5u64, 0..5),
        ) {
            let vv = |m: &BTreeMap<u64, u64>| {
                let mut v = VersionVector::new();
                for (&n, &c) in m {
                    v.advance(Dot::new(n, c));
                }
                v
            };
            let mut joined = vv(&a);
            joined.join(&vv(&b));
            let mut want = a.clone();
            for (n, c) in &b {
                let e = want.entry(*n).or_insert(0);
                *e = (*e).max(*c);
            }
            prop_assert_eq!(joined, vv(&want));
        }

        #[test]
        fn prop_skim_agrees_with_decode(ops in arb_ops(), t in 0..120u64, flip in any::<(usize, u8)>(), cut in any::<usize>()) {
            let h = run(&ops);
            for snap in &h.snapshots {
                let mut bytes = Vec::new();
                snap.encode(&mut bytes);
                let (winner, live) = crate::version::skim_winner(&bytes, t).expect("a valid encoding skims");
                prop_assert_eq!(winner.as_ref(), snap.winner(t));
                prop_assert_eq!(live, snap.live(t).count());
                // Damaged encodings: skim accepts and rejects exactly what decode does.
                let mut flipped = bytes.clone();
                let at = flip.0 % flipped.len();
                flipped[at] ^= flip.1.max(1);
                let truncated = &bytes[..cut % bytes.len()];
                for damaged in [&flipped[..], truncated] {
                    let skimmed = crate::version::skim_winner(damaged, t);
                    match SiblingSet::decode(damaged) {
                        Ok(set) => {
                            let (w, l) = skimmed.expect("decode accepted it");
                            prop_assert_eq!(w.as_ref(), set.winner(t));
                            prop_assert_eq!(l, set.live(t).count());
                        }
                        Err(e) => prop_assert_eq!(skimmed.err(), Some(e)),
                    }
                }
            }
        }

        #[test]
        fn prop_merge_laws(ops in arb_ops(), i in any::<usize>(), j in any::<usize>(), k in any::<usize>()) {
            let h = run(&ops);
            let n = h.snapshots.len();
            let (a, b, c) = (&h.snapshots[i % n], &h.snapshots[j % n], &h.snapshots[k % n]);
            let ab = merged(a, b);
            check(&ab);
            prop_assert_eq!(&ab, &merged(b, a), "commutative");
            prop_assert_eq!(merged(&ab, c), merged(a, &merged(b, c)), "associative");
            prop_assert_eq!(&merged(a, a), a, "idempotent");
            prop_assert_eq!(&merged(a, &ab), &ab, "absorbing");
            prop_assert!(ab.context().descends(a.context()));
        }

        #[test]
        fn prop_convergence_matches_oracle(ops in arb_ops()) {
            let h = run(&ops);
            // Full anti-entropy: everyone merges everyone, then once more.
            let mut reps = h.replicas.clone();
            for _ in 0..2 {
                for to in 0..reps.len() {
                    for from in 0..reps.len() {
                        let other = reps[from].clone();
                        reps[to].merge(&other);
                    }
                }
            }
            for r in &reps {
                prop_assert_eq!(r, &reps[0]);
            }
            // Joining every state ever seen gives the same result.
            let mut all = SiblingSet::new();
            for s in &h.snapshots {
                all.merge(s);
            }
            prop_assert_eq!(&all, &reps[0]);
            // Oracle: surviving siblings are exactly the writes whose dot no
            // write's client context covers.
            let expected: BTreeSet<Dot> = h
                .writes
                .iter()
                .map(|(s, _)| s.dot)
                .filter(|&d| !h.writes.iter().any(|(_, c)| c.covers(d)))
                .collect();
            let actual: BTreeSet<Dot> = reps[0].siblings().iter().map(|s| s.dot).collect();
            prop_assert_eq!(actual, expected);
        }

        #[test]
        fn prop_sequential_writes_single_sibling(
            steps in proptest::collection::vec((0..NODES.len(), 0..30u64, any::<bool>()), 1..30)
        ) {
            let mut s = SiblingSet::new();
            for (r, floor, tombstone) in steps {
                let ctx = s.context().clone();
                s.write(&ctx, NODES[r], floor, NewSibling { tombstone, ..put("v", 0) });
                prop_assert_eq!(s.siblings().len(), 1);
                check(&s);
            }
        }

        #[test]
        fn prop_codec_roundtrip(ops in arb_ops(), cut in any::<usize>(), flip in any::<(usize, u8)>()) {
            let h = run(&ops);
            for s in h.snapshots.iter().chain(&h.replicas) {
                let bytes = s.to_bytes();
                prop_assert_eq!(bytes.len(), s.encoded_len());
                prop_assert_eq!(bytes[0], crate::version::FORMAT_VERSION);
                prop_assert_eq!(&SiblingSet::decode(&bytes).expect("roundtrip"), s);
                prop_assert_eq!(
                    &SiblingSet::decode_shared(&Bytes::from(bytes.clone())).expect("roundtrip"),
                    s
                );
                prop_assert!(SiblingSet::decode(&bytes[..cut % bytes.len()]).is_err());
                let mut mutated = bytes.clone();
                let pos = flip.0 % mutated.len();
                mutated[pos] ^= flip.1.max(1);
                if let Ok(d) = SiblingSet::decode(&mutated) {
                    prop_assert_eq!(d.to_bytes(), mutated, "accepted input is canonical");
                }
            }
        }

        #[test]
        fn prop_decode_random_bytes_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            prefix in any::<bool>()
        ) {
            let mut bytes = if prefix { vec![crate::version::FORMAT_VERSION] } else { Vec::new() };
            bytes.extend_from_slice(&body);
            if let Ok(s) = SiblingSet::decode(&bytes) {
                check(&s);
                prop_assert_eq!(s.to_bytes(), bytes);
            }
        }
    }
}
