//! Store tests that need LMDB itself: the anti-entropy trees against their records.

use std::collections::BTreeMap;
use std::task::Poll;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::version::{NewSibling, SiblingSet, VersionVector};

fn set_of(node: u64, value: &[u8], tombstone: bool) -> SiblingSet {
    let mut s = SiblingSet::new();
    s.write(
        &VersionVector::new(),
        node,
        1,
        NewSibling {
            value: Bytes::copy_from_slice(value),
            written_at_ms: 1,
            expires_at_ms: None,
            tombstone,
        },
    );
    s
}

/// Every tree entry as it should be, computed from the records alone.
fn expected_trees(store: &Store) -> BTreeMap<Vec<u8>, u128> {
    let inner = &store.inner;
    let rtxn = inner.env.read_txn().expect("rtxn");
    let mut out: BTreeMap<Vec<u8>, u128> = BTreeMap::new();
    for entry in inner.data.iter(&rtxn).expect("iter") {
        let (k, v) = entry.expect("entry");
        let (p, leaf) = tree::leaf_of(k).expect("record key");
        let h = tree::record_hash(k, v);
        let pb = p.to_be_bytes();
        *out.entry(vec![1, pb[0], pb[1], leaf]).or_default() ^= h;
        *out.entry(vec![0, pb[0], pb[1]]).or_default() ^= h;
    }
    out.retain(|_, h| *h != 0);
    out
}

/// The trees as their readers see them: stored, with the changes pending in memory.
fn stored_trees(store: &Store) -> BTreeMap<Vec<u8>, u128> {
    let mut out = BTreeMap::new();
    let mut partitions = std::collections::BTreeSet::new();
    for (p, h) in store.tree_roots().expect("roots") {
        let pb = p.to_be_bytes();
        out.insert(vec![0, pb[0], pb[1]], h);
        partitions.insert(p);
    }
    // The partitions with records too, so a leaf left without its root shows.
    partitions.extend(expected_trees(store).keys().map(|k| u16::from_be_bytes([k[1], k[2]])));
    let partitions: Vec<u16> = partitions.into_iter().collect();
    for (p, leaf, h) in store.tree_leaves(&partitions).expect("leaves") {
        let pb = p.to_be_bytes();
        out.insert(vec![1, pb[0], pb[1], leaf], h);
    }
    out
}

/// The trees in the trees database alone.
fn raw_trees(store: &Store) -> BTreeMap<Vec<u8>, u128> {
    let inner = &store.inner;
    let rtxn = inner.env.read_txn().expect("rtxn");
    inner
        .trees
        .iter(&rtxn)
        .expect("iter")
        .map(|e| {
            let (k, v) = e.expect("entry");
            (k.to_vec(), u128::from_be_bytes(v.try_into().expect("16 bytes")))
        })
        .collect()
}

/// Puts under each key of `keys` a set of one sibling written by `node`, valued `value(k)`.
async fn put_each(store: &Store, keys: std::ops::Range<u8>, node: u64, value: impl Fn(u8) -> Vec<u8>) {
    for k in keys {
        let v = value(k);
        store
            .update(key(k), move |_| (Change::Put(set_of(node, &v, false)), ()))
            .await
            .expect("write");
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// What a queued write does with the key's current set.
type Decide = Box<dyn FnOnce(Option<SiblingSet>) -> Change + Send>;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Tomb(u8),
    Remove(u8),
    Merge(u8, u8),
}

fn key(k: u8) -> Bytes {
    // A few long keys so digest-keyed records are covered too.
    if k % 16 == 0 {
        Bytes::from(vec![k; 600])
    } else {
        Bytes::from(format!("key:{k}"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever sequence of writes, merges and removes, the stored trees equal the trees
    /// computed from the records, through map growth and replays.
    #[test]
    fn incremental_trees_match_the_records(ops in proptest::collection::vec(
        prop_oneof![
            (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            any::<u8>().prop_map(Op::Tomb),
            any::<u8>().prop_map(Op::Remove),
            (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Merge(k, v)),
        ],
        1..300,
    )) {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let store = Store::open(dir.path(), Fsync::No, 64 * 1024, 1).expect("open");
            // Ops are queued in runs of up to 7 before any is awaited, so that several
            // share one group commit (and its summed tree changes).
            let mut pending = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                let node = i as u64 + 1;
                let (k, f): (u8, Decide) = match op.clone() {
                    Op::Put(k, v) => (k, Box::new(move |_| Change::Put(set_of(node, &[v], false)))),
                    Op::Tomb(k) => (k, Box::new(move |_| Change::Put(set_of(node, b"", true)))),
                    Op::Remove(k) => (k, Box::new(|_| Change::Remove)),
                    Op::Merge(k, v) => (k, Box::new(move |cur: Option<SiblingSet>| {
                        let mut s = cur.unwrap_or_default();
                        s.merge(&set_of(node, &vec![v; 3000], false));
                        Change::Put(s)
                    })),
                };
                let queued = store
                    .submit_many(vec![key(k)], move |mut sets, _| (vec![f(sets.pop().flatten())], ()))
                    .await
                    .expect("queue");
                pending.push(queued);
                if i % 7 == 6 {
                    for p in pending.drain(..) {
                        p.await.expect("write");
                    }
                }
            }
            for p in pending.drain(..) {
                p.await.expect("write");
            }
            prop_assert_eq!(stored_trees(&store), expected_trees(&store));
            store.close().await.expect("close");
            drop(store);
            // Closing stores what was pending.
            let store = Store::open(dir.path(), Fsync::No, 64 * 1024, 1).expect("reopen");
            prop_assert!(store.trees_ready());
            prop_assert_eq!(raw_trees(&store), expected_trees(&store));
            store.close().await.expect("close");
            Ok(())
        })?;
    }
}

/// Tree changes wait in memory and are stored about once a second; a store that stops
/// without storing them (a crash: here, a copy of its file taken while it runs) rebuilds
/// its trees when opened, and one that closes has them stored.
#[test]
fn pending_tree_changes_are_stored_on_close_and_rebuilt_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crashed = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("open");
        put_each(&store, 0..200, 5, |k| vec![k]).await;
        let want = expected_trees(&store);
        assert_eq!(stored_trees(&store), want, "readers see the pending changes");
        assert_ne!(raw_trees(&store), want, "the changes are still pending");
        std::fs::copy(dir.path().join("data.mdb"), crashed.path().join("data.mdb")).expect("copy");
        // Once due, the next commit stores them all.
        tokio::time::sleep(tree::FLUSH_AFTER).await;
        store
            .update(key(0), |_| (Change::Put(set_of(6, b"later", false)), ()))
            .await
            .expect("write");
        assert_eq!(raw_trees(&store), expected_trees(&store), "stored once due");
        store.update(key(1), |_| (Change::Remove, ())).await.expect("remove");
        assert_ne!(raw_trees(&store), expected_trees(&store));
        // A store that has stopped writing stores them when asked once they are due.
        store.store_due_trees().await.expect("not due yet");
        assert_ne!(raw_trees(&store), expected_trees(&store), "stored before due");
        tokio::time::sleep(tree::FLUSH_AFTER).await;
        store.store_due_trees().await.expect("store");
        assert_eq!(raw_trees(&store), expected_trees(&store), "stored when asked");
        store.update(key(2), |_| (Change::Remove, ())).await.expect("remove");
        let want = expected_trees(&store);
        assert_ne!(raw_trees(&store), want);
        store.close().await.expect("close");
        drop(store);
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("reopen");
        assert!(store.trees_ready(), "a closed store's trees are sound");
        assert_eq!(raw_trees(&store), want, "closing stored the pending changes");
        store.close().await.expect("close");
        drop(store);

        let store = Store::open(crashed.path(), Fsync::No, 1 << 20, 1).expect("open the crashed copy");
        assert_eq!(store.trees_pending(), u32::from(PARTITIONS), "every tree is rebuilt");
        // Changes pending for a tree that is then rebuilt must not count twice.
        put_each(&store, 0..20, 8, |k| vec![k, 1]).await;
        while store.rebuild_tree_step().await.expect("step") {}
        assert_eq!(stored_trees(&store), expected_trees(&store));
        assert_eq!(expected_trees(&store).len(), 400, "200 records, a leaf and a root each");
        store.close().await.expect("close");
        drop(store);
        let store = Store::open(crashed.path(), Fsync::No, 1 << 20, 1).expect("reopen the copy");
        assert!(store.trees_ready());
        assert_eq!(raw_trees(&store), expected_trees(&store));
        store.close().await.expect("close");
    });
}

#[test]
fn a_store_without_trees_rebuilds_them_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("open");
        assert!(store.trees_ready(), "an empty store starts with sound trees");
        put_each(&store, 0..200, 7, |k| vec![k]).await;
        let want = expected_trees(&store);
        assert!(!want.is_empty());
        assert_eq!(stored_trees(&store), want);
        // Make it look like a store from before trees: none stored, no progress.
        {
            let mut wtxn = store.inner.env.write_txn().expect("wtxn");
            store.inner.trees.clear(&mut wtxn).expect("clear");
            store.inner.meta.delete(&mut wtxn, TREE_PROGRESS).expect("delete");
            wtxn.commit().expect("commit");
        }
        store.close().await.expect("close");
        drop(store);
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("reopen");
        assert!(!store.trees_ready());
        assert_eq!(store.trees_pending(), u32::from(PARTITIONS));
        // Stop part-way, reopen: the rebuild resumes, it does not start over.
        for _ in 0..4 {
            assert!(store.rebuild_tree_step().await.expect("step"));
        }
        let pending = store.trees_pending();
        assert!(pending < u32::from(PARTITIONS) && pending > 0, "{pending}");
        // Writes during the rebuild keep the rebuilt part right.
        store
            .update(key(1), |_| (Change::Put(set_of(9, b"new", false)), ()))
            .await
            .expect("write");
        store.close().await.expect("close");
        drop(store);
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("reopen");
        assert_eq!(store.trees_pending(), pending, "the rebuild resumes where it stopped");
        while store.rebuild_tree_step().await.expect("step") {}
        assert!(store.trees_ready());
        assert_eq!(stored_trees(&store), expected_trees(&store));
        store.close().await.expect("close");
        drop(store);
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("reopen");
        assert!(store.trees_ready(), "a finished rebuild is remembered");
        store.close().await.expect("close");
    });
}

#[test]
fn leaf_listing_and_hashes_agree_with_the_trees() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("open");
        put_each(&store, 0..100, 3, |k| vec![k]).await;
        let roots = store.tree_roots().expect("roots");
        let partitions: Vec<u16> = roots.iter().map(|(p, _)| *p).collect();
        let leaves = store.tree_leaves(&partitions).expect("leaves");
        for (p, root) in &roots {
            let x = leaves
                .iter()
                .filter(|(q, _, _)| q == p)
                .fold(0u128, |a, (_, _, h)| a ^ h);
            assert_eq!(x, *root, "leaves of partition {p} add up to its root");
        }
        let wanted: Vec<(u16, u8)> = leaves.iter().map(|(p, l, _)| (*p, *l)).collect();
        let records = store.leaf_records(&wanted).expect("records");
        assert_eq!(records.len(), 100);
        let lkeys: Vec<Vec<u8>> = records.iter().map(|(k, _)| k.clone()).collect();
        let items = store.records_at(&lkeys).expect("records_at");
        let keys: Vec<Bytes> = items.iter().map(|i| i.as_ref().expect("present").key.clone()).collect();
        let hh = store.hashes_and_hints(&keys).expect("hashes");
        for ((item, (_, h)), (stored, hinted)) in items.iter().zip(&records).zip(&hh) {
            let item = item.as_ref().expect("present");
            assert_eq!(Some(*h), *stored);
            assert_eq!(record_hash_of(&item.key, &item.set), *h);
            assert!(!hinted);
        }
        store.close().await.expect("close");
    });
}

/// A record's tree contribution is the same whether it is hashed in one pass (small
/// records) or streamed (large ones): trees built before and after agree.
#[test]
fn record_hash_one_pass_equals_streaming() {
    for key_len in [0usize, 1, 11, 27, 200, 252, 253, 300] {
        for record_len in [0usize, 1, 40, 200, 240, 241, 252, 253, 600] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 7) as u8).collect();
            let record: Vec<u8> = (0..record_len).map(|i| (i * 13 + 1) as u8).collect();
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&(key_len as u32).to_be_bytes());
            h.update(&key);
            h.update(&record);
            assert_eq!(
                tree::record_hash(&key, &record),
                h.digest128(),
                "key {key_len}, record {record_len}"
            );
        }
    }
}

/// A run of reads sees one snapshot, taken at its first read: a commit made meanwhile
/// shows once the run has ended. Reads of another store during the run use their own
/// transactions.
#[test]
fn a_run_of_reads_shares_one_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other_dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("open");
        let other = Store::open(other_dir.path(), Fsync::No, 1 << 20, 1).expect("open other");
        let put = |store: &Store, v: &'static [u8]| {
            let store = store.clone();
            async move {
                store
                    .submit_many(vec![key(1)], move |_, _| (vec![Change::Put(set_of(1, v, false))], ()))
                    .await
                    .expect("queue")
                    .await
                    .expect("commit");
            }
        };
        let value = |store: &Store| {
            store
                .get(&key(1))
                .expect("get")
                .and_then(|s| s.into_winner(0))
                .map(|s| s.value)
        };
        put(&store, b"one").await;
        put(&other, b"x").await;
        let run = store.read_run();
        assert_eq!(value(&store).as_deref(), Some(&b"one"[..]));
        put(&store, b"two").await;
        put(&other, b"y").await;
        assert_eq!(value(&store).as_deref(), Some(&b"one"[..]), "the run's snapshot");
        assert_eq!(value(&other).as_deref(), Some(&b"y"[..]), "another store reads afresh");
        drop(run);
        assert_eq!(value(&store).as_deref(), Some(&b"two"[..]), "after the run");
        let run = store.read_run();
        assert_eq!(value(&store).as_deref(), Some(&b"two"[..]));
        // Another task never reads through this run, even one left open while others
        // run: it reads afresh (here it cannot, as this thread's reader slot is taken,
        // and gets an error), never the run's older snapshot.
        put(&store, b"three").await;
        let s2 = store.clone();
        let seen = tokio::spawn(async move { s2.get(&key(1)).map(|s| s.and_then(|s| s.into_winner(0))) })
            .await
            .expect("task");
        assert!(
            !matches!(&seen, Ok(Some(s)) if s.value.as_ref() == b"two"),
            "another task read the run's snapshot"
        );
        drop(run);
        store.close().await.expect("close");
        other.close().await.expect("close other");
    });
}

#[test]
fn a_run_of_reads_judges_expiry_at_one_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("open");
    let other = Store::open(other_dir.path(), Fsync::No, 1 << 20, 1).expect("open other");
    let pause = || std::thread::sleep(std::time::Duration::from_millis(5));
    let run = store.read_run();
    let first = store.read_time_ms();
    pause();
    assert_eq!(store.read_time_ms(), first, "one time for the whole run");
    assert!(other.read_time_ms() > first, "another store's reads use the clock");
    drop(run);
    assert!(store.read_time_ms() > first, "after the run, the clock");
    let run = store.read_run();
    let second = store.read_time_ms();
    assert!(second > first, "a new run reads the clock again");
    drop(run);
    rt().block_on(async {
        store.close().await.expect("close");
        other.close().await.expect("close other");
    });
}

/// After a flush at time T, a late copy of a sibling written before T is not stored
/// (alone it leaves no record; beside a newer one it is dropped), writes made here are
/// dated T or later, and T survives a restart.
#[test]
fn a_flush_keeps_older_siblings_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written_at = |node: u64, at: u64| {
        let mut s = SiblingSet::new();
        s.write(
            &VersionVector::new(),
            node,
            1,
            NewSibling {
                value: Bytes::from(format!("from {node}")),
                written_at_ms: at,
                expires_at_ms: None,
                tombstone: false,
            },
        );
        s
    };
    let merge_in = |store: &Store, k: u8, set: SiblingSet| {
        let store = store.clone();
        async move {
            store
                .submit_many(vec![key(k)], move |mut sets, now_us| {
                    let mut cur = sets.pop().flatten().unwrap_or_default();
                    cur.merge(&set);
                    (vec![Change::Put(cur)], now_us)
                })
                .await
                .expect("queue")
                .await
                .expect("commit")
        }
    };
    // An hour ahead, as if the node that chose it had a clock running fast.
    let flush_at = crate::clock::now_ms() + 3_600_000;
    rt().block_on(async {
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("open");
        merge_in(&store, 1, written_at(1, flush_at - 5)).await;
        store.clear(flush_at).await.expect("clear");
        merge_in(&store, 1, written_at(1, flush_at - 5)).await;
        assert!(store.get(&key(1)).expect("get").is_none(), "a late copy came back");
        merge_in(&store, 2, written_at(2, flush_at)).await;
        merge_in(&store, 2, written_at(3, flush_at - 1)).await;
        let set = store.get(&key(2)).expect("get").expect("the newer sibling");
        let at: Vec<u64> = set.siblings().iter().map(|s| s.written_at_ms).collect();
        assert_eq!(at, vec![flush_at], "only the sibling written at the flush time stays");
        let now_us = merge_in(&store, 3, written_at(4, flush_at + 1)).await;
        assert!(
            now_us >= flush_at * 1000,
            "a write here is dated before the flush: {now_us}"
        );
        assert_eq!(stored_trees(&store), expected_trees(&store));
        store.close().await.expect("close");
    });
    rt().block_on(async {
        let store = Store::open(dir.path(), Fsync::No, 1 << 20, 1).expect("reopen");
        merge_in(&store, 1, written_at(5, flush_at - 1)).await;
        assert!(
            store.get(&key(1)).expect("get").is_none(),
            "the flush time was forgotten"
        );
        store.close().await.expect("close");
    });
}

/// One write of [`a_batch_of_writes_to_few_keys_matches_them_one_by_one`].
#[derive(Debug, Clone)]
enum HotOp {
    /// A plain put of a fresh version.
    Put(u8, u8),
    /// A merge with the current version (the decision reads it).
    Merge(u8, u8),
    /// A decision to change nothing.
    Keep(u8),
    Remove(u8),
    /// A put held as a hint for this owner.
    Hinted(u8, u8, u64),
    /// The hint for this owner delivered; the record goes too when asked and no other
    /// hint holds it.
    HandedOff(u8, u64, bool),
    /// Puts to two keys at once.
    Pair(u8, u8, u8),
}

/// What `op` does to the sets of its keys, given them (the same for the store and the
/// model).
fn hot_changes(op: &HotOp, node: u64, current: Vec<Option<SiblingSet>>) -> Vec<Change> {
    let mut current = current.into_iter();
    let mut cur = current.next().flatten();
    match *op {
        HotOp::Put(_, v) => vec![Change::Put(set_of(node, &[v], false))],
        HotOp::Merge(_, v) => {
            let mut s = cur.take().unwrap_or_default();
            s.merge(&set_of(node, &[v; 40], false));
            vec![Change::Put(s)]
        }
        HotOp::Keep(_) => vec![Change::Keep],
        HotOp::Remove(_) => vec![Change::Remove],
        HotOp::Hinted(_, v, owner) => vec![Change::PutHinted(set_of(node, &[v], false), vec![owner])],
        HotOp::HandedOff(_, owner, remove_record) => vec![Change::HandedOff { owner, remove_record }],
        HotOp::Pair(_, _, v) => vec![
            Change::Put(set_of(node, &[v], false)),
            Change::Put(set_of(node, &[v, v], false)),
        ],
    }
}

/// [`hot_changes`] for a one-key op given its set on loan (as [`Store::submit_one`]
/// lends it): it takes the set whenever its change replaces or removes the record, as
/// the coordinator does, and leaves it otherwise.
fn hot_change_lent(op: &HotOp, node: u64, cur: &mut Option<SiblingSet>) -> Change {
    match *op {
        HotOp::Keep(_) | HotOp::HandedOff(..) | HotOp::Pair(..) => {
            hot_changes(op, node, vec![cur.clone()]).swap_remove(0)
        }
        _ => hot_changes(op, node, vec![cur.take()]).swap_remove(0),
    }
}

fn hot_keys(op: &HotOp) -> Vec<u8> {
    match *op {
        HotOp::Put(k, _) | HotOp::Merge(k, _) | HotOp::Keep(k) | HotOp::Remove(k) => vec![k],
        HotOp::Hinted(k, _, _) | HotOp::HandedOff(k, _, _) => vec![k],
        HotOp::Pair(a, b, _) => vec![a, b],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Many writes to a few keys queued together (so that one group commit holds several
    /// writes of one key, which the writer combines) end in the records, hints and trees
    /// that applying them one at a time gives, each decision seeing the writes before it.
    /// (Short keys only: a hint of a gone record with a long key cannot name its key.)
    #[test]
    fn a_batch_of_writes_to_few_keys_matches_them_one_by_one(
        ops in proptest::collection::vec(
            prop_oneof![
                4 => (1..4u8, any::<u8>()).prop_map(|(k, v)| HotOp::Put(k, v)),
                3 => (1..4u8, any::<u8>()).prop_map(|(k, v)| HotOp::Merge(k, v)),
                1 => (1..4u8).prop_map(HotOp::Keep),
                1 => (1..4u8).prop_map(HotOp::Remove),
                1 => (1..4u8, any::<u8>(), 1..3u64).prop_map(|(k, v, o)| HotOp::Hinted(k, v, o)),
                1 => (1..4u8, 1..3u64, any::<bool>()).prop_map(|(k, o, r)| HotOp::HandedOff(k, o, r)),
                1 => (1..4u8, 1..4u8, any::<u8>()).prop_map(|(a, b, v)| HotOp::Pair(a, b, v)),
            ],
            1..60,
        ),
        group in 1usize..40,
        clear_at in proptest::option::of(0usize..60),
    ) {
        // The model: each key's set and the owners its hints are held for.
        let mut model: BTreeMap<u8, SiblingSet> = BTreeMap::new();
        let mut hints: BTreeMap<u8, std::collections::BTreeSet<u64>> = BTreeMap::new();
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let store = Store::open(dir.path(), Fsync::No, 64 * 1024, 1).expect("open");
            let mut pending = Vec::new();
            let mut clears = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                if clear_at == Some(i) {
                    // Queued behind the writes before it, in the same group commit when
                    // they are still waiting: polled once, it is sent, then awaited later.
                    let mut clear = Box::pin(store.clear(0));
                    let first = std::future::poll_fn(|cx| Poll::Ready(clear.as_mut().poll(cx))).await;
                    clears.push((first, clear));
                    model.clear();
                    hints.clear();
                }
                let node = i as u64 + 1;
                let ks = hot_keys(op);
                // The model, one write at a time (a repeated key sees the first state).
                let current: Vec<Option<SiblingSet>> = ks.iter().map(|k| model.get(k).cloned()).collect();
                for (k, change) in ks.iter().zip(hot_changes(op, node, current)) {
                    match change {
                        Change::Keep => {}
                        Change::Put(s) => {
                            model.insert(*k, s);
                        }
                        Change::PutHinted(s, owners) => {
                            model.insert(*k, s);
                            hints.entry(*k).or_default().extend(owners);
                        }
                        Change::Remove => {
                            model.remove(k);
                        }
                        Change::HandedOff { owner, remove_record } => {
                            let held = hints.entry(*k).or_default();
                            held.remove(&owner);
                            if remove_record && held.is_empty() {
                                model.remove(k);
                            }
                        }
                    }
                }
                let op = op.clone();
                // One-key ops go either way: as a job of many keys, or lent their set.
                let queued = if ks.len() == 1 && i % 2 == 0 {
                    store
                        .submit_one(key(ks[0]), move |cur, _| (hot_change_lent(&op, node, cur), ()))
                        .await
                        .expect("queue")
                } else {
                    store
                        .submit_many(ks.iter().map(|&k| key(k)).collect(), move |sets, _| {
                            (hot_changes(&op, node, sets), ())
                        })
                        .await
                        .expect("queue")
                };
                pending.push(queued);
                if pending.len() >= group {
                    for p in pending.drain(..) {
                        p.await.expect("write");
                    }
                }
            }
            for p in pending.drain(..) {
                p.await.expect("write");
            }
            for (first, clear) in clears {
                match first {
                    Poll::Ready(r) => r.expect("clear"),
                    Poll::Pending => clear.await.expect("clear"),
                }
            }
            for k in 1..4u8 {
                prop_assert_eq!(store.get(&key(k)).expect("get"), model.get(&k).cloned(), "key {}", k);
            }
            let (stored_hints, _) = store.hints(&[], 100).expect("hints");
            let stored_hints: std::collections::BTreeSet<(Bytes, u64)> =
                stored_hints.into_iter().map(|h| (h.key, h.owner)).collect();
            let model_hints: std::collections::BTreeSet<(Bytes, u64)> = hints
                .iter()
                .flat_map(|(k, owners)| owners.iter().map(move |o| (key(*k), *o)))
                .collect();
            prop_assert_eq!(stored_hints, model_hints);
            prop_assert_eq!(stored_trees(&store), expected_trees(&store));
            store.close().await.expect("close");
            Ok(())
        })?;
    }
}

/// Every record and hint of a store, for comparing two of them.
fn contents(store: &Store) -> (Vec<Option<SiblingSet>>, Vec<(u64, u64)>) {
    let records = (0..=255u8).map(|k| store.get(&key(k)).expect("get")).collect();
    (records, store.hint_counts().expect("hints"))
}

/// With `fsync = always`, LMDB commits without flushing and the log makes each commit
/// durable. A power cut after a checkpoint may leave on disk LMDB's newest meta page but
/// none of the pages written since the checkpoint (here: garbage in their place, or the
/// file as the checkpoint left it), and a log whose last record was cut short. The store
/// opened from that (with or without a log of its own) has every commit the log holds,
/// and sound trees. The same whether the client thread committed its writes or the
/// writer thread did.
#[test]
fn a_power_cut_after_a_checkpoint_loses_no_logged_commit() {
    for (garbage, reopen, threads) in [
        (false, Fsync::Always, 1),
        (true, Fsync::Always, 1),
        (true, Fsync::Always, 2),
        (true, Fsync::No, 1),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let crashed = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let store = Store::open(dir.path(), Fsync::Always, 1 << 20, threads).expect("open");
            put_each(&store, 0..40, 1, |k| vec![k; 100]).await;
            store.close().await.expect("close");
            drop(store);
            // Opening checkpoints: the file is now as the checkpoint left it.
            let store = Store::open(dir.path(), Fsync::Always, 1 << 20, threads).expect("reopen");
            let checkpoint = std::fs::read(dir.path().join("data.mdb")).expect("read");
            // Fewer commits than a checkpoint waits for (58 of 64), each logged: a
            // FLUSHALL, puts, removals, a hinted put, and a hot key written again and
            // again (LMDB would reuse the checkpoint's pages for these, were they not
            // pinned).
            store.clear(1).await.expect("clear");
            put_each(&store, 0..24, 2, |k| vec![k; 200]).await;
            for k in [3, 5] {
                store.update(key(k), |_| (Change::Remove, ())).await.expect("remove");
            }
            store
                .update(key(7), |_| (Change::PutHinted(set_of(3, b"held", false), vec![99]), ()))
                .await
                .expect("hinted put");
            for i in 0..30u8 {
                put_each(&store, 1..2, 10 + u64::from(i), |_| vec![i; 50]).await;
            }
            let want = contents(&store);
            let want_trees = expected_trees(&store);
            assert!(
                want.0.iter().flatten().count() == 22 && want.1 == vec![(99, 1)],
                "{:?}",
                want.1
            );
            let page = store.inner.env.stat().page_size as usize;
            let mut file = std::fs::read(dir.path().join("data.mdb")).expect("read");
            if garbage {
                // The newest meta pages reached the disk; no page written since did.
                let mut replaced = 0;
                for (i, p) in file.chunks_mut(page).enumerate().skip(2) {
                    if checkpoint.get(i * page..(i + 1) * page) != Some(&*p) {
                        p.fill(0xAB);
                        replaced += 1;
                    }
                }
                assert!(replaced > 10, "only {replaced} pages written since the checkpoint");
            } else {
                file = checkpoint;
            }
            std::fs::write(crashed.path().join("data.mdb"), &file).expect("write");
            let mut newest = (0, String::new(), Vec::new());
            for name in ["wal.0", "wal.1"] {
                let log = std::fs::read(dir.path().join(name)).expect("read the log");
                std::fs::write(crashed.path().join(name), &log).expect("copy the log");
                let generation = wal::header(&log).map_or(0, |(g, ..)| g);
                if generation > newest.0 {
                    newest = (generation, name.to_string(), log);
                }
            }
            // A last record cut short by the power cut: bytes after the last whole one.
            let (generation, name, mut log) = newest;
            let (_, _, mut at) = wal::header(&log).expect("a header");
            let mut records = 0;
            while let Some((_, next)) = wal::record(&log, at, generation) {
                at = next;
                records += 1;
            }
            assert!(records >= 56, "{records} records logged since the checkpoint");
            log[at..at + 7].copy_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
            std::fs::write(crashed.path().join(name), &log).expect("write");
            drop(store);

            let store = Store::open(crashed.path(), reopen, 1 << 20, 1).expect("open the crashed copy");
            assert!(
                contents(&store) == want,
                "garbage {garbage}, {threads} threads: a logged commit was lost"
            );
            assert_eq!(expected_trees(&store), want_trees);
            assert!(store.trees_ready(), "the trees need no rebuild");
            assert_eq!(stored_trees(&store), want_trees);
            for name in ["wal.0", "wal.1"] {
                assert_eq!(crashed.path().join(name).exists(), reopen == Fsync::Always, "{name}");
            }
            // It goes on from there, and reopens cleanly.
            put_each(&store, 100..110, 4, |k| vec![k]).await;
            let want = contents(&store);
            store.close().await.expect("close");
            drop(store);
            let store = Store::open(crashed.path(), reopen, 1 << 20, 1).expect("reopen");
            assert!(contents(&store) == want);
            assert_eq!(stored_trees(&store), expected_trees(&store));
            store.close().await.expect("close");
        });
    }
}

/// A second store on a directory in use is refused before it touches anything (a log's
/// restore rewrites LMDB's meta pages), and the directory is free again once closed.
#[test]
fn a_data_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let store = Store::open(dir.path(), Fsync::Always, 1 << 20, 1).expect("open");
        let err = Store::open(dir.path(), Fsync::Always, 1 << 20, 1)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("in use by another process"), "{err}");
        store.close().await.expect("close");
        drop(store);
        let store = Store::open(dir.path(), Fsync::Always, 1 << 20, 1).expect("reopen");
        store.close().await.expect("close");
    });
}

/// Checkpoints come due as commits add up (each after a flush of LMDB's file run ahead of
/// it), alternate between the two log files, and a store that stops without closing
/// (its newest commits only in the log) opens with every commit.
#[test]
fn checkpoints_come_due_and_a_store_stopped_between_them_opens_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generation = |dir: &std::path::Path| {
        ["wal.0", "wal.1"]
            .iter()
            .filter_map(|n| std::fs::read(dir.join(n)).ok())
            .filter_map(|b| wal::header(&b).map(|(g, ..)| g))
            .max()
            .unwrap_or(0)
    };
    rt().block_on(async {
        // Two client threads: the writes go to the writer thread, which lets go of the
        // store once it is dropped. (A client thread's own writer lives as long as its
        // runtime, and a server's store is never dropped before its runtimes end.)
        let store = Store::open(dir.path(), Fsync::Always, 1 << 20, 2).expect("open");
        assert_eq!(generation(dir.path()), 1, "opening checkpoints");
        for round in 0..4u8 {
            put_each(&store, 0..200, u64::from(round) + 1, |k| vec![k, round]).await;
        }
        assert!(
            generation(dir.path()) >= 3,
            "800 commits made {} checkpoints",
            generation(dir.path()) - 1
        );
        let want = contents(&store);
        drop(store);
        // The dropped store's writer lets go of the directory once it sees its queue closed.
        let mut reopened = Store::open(dir.path(), Fsync::Always, 1 << 20, 2);
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            reopened = Store::open(dir.path(), Fsync::Always, 1 << 20, 2);
        }
        let store = reopened.expect("reopen without a close");
        assert!(contents(&store) == want, "a commit was lost");
        // The trees had changes pending in memory at the checkpoint: they are rebuilt.
        while store.rebuild_tree_step().await.expect("step") {}
        assert_eq!(stored_trees(&store), expected_trees(&store));
        store.close().await.expect("close");
    });
}

/// With the writer on a thread of its own (`fsync = always`, several client threads), the
/// writes a client thread submits are acknowledged through that thread's acknowledger;
/// once the runtime it ran on is gone, the next runtime on the thread gets a new one, and
/// every write is still answered with its own result.
#[test]
fn writes_are_acknowledged_on_the_thread_that_submitted_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), Fsync::Always, 1 << 20, 2).expect("open");
    let id = store.inner.id;
    let ackers = || {
        ACKERS.with(|a| {
            a.borrow()
                .iter()
                .filter(|(i, _)| *i == id)
                .map(|(_, s)| s.is_closed())
                .collect::<Vec<_>>()
        })
    };
    for round in 0..2u8 {
        rt().block_on(async {
            let mut pending = Vec::new();
            for k in 0..200u8 {
                let set = set_of(1, &[round, k], false);
                let p = store
                    .submit_one(key(k), move |_, _| {
                        (Change::Put(set), u32::from(k) + 1000 * u32::from(round))
                    })
                    .await
                    .expect("queue");
                pending.push(p);
            }
            assert_eq!(ackers(), vec![false], "one live acknowledger for this thread");
            for (k, p) in pending.into_iter().enumerate() {
                assert_eq!(p.await.expect("commit"), k as u32 + 1000 * u32::from(round));
            }
        });
        assert_eq!(ackers(), vec![true], "the acknowledger ended with its runtime");
    }
    rt().block_on(async {
        for k in 0..200u8 {
            let set = store.get(&key(k)).expect("get").expect("present");
            assert_eq!(set, set_of(1, &[1, k], false), "key {k}");
        }
        store.close().await.expect("close");
    });
}

/// With `fsync = always` and one client thread, the thread commits its own writes: no
/// acknowledger, one writer of its own, and each write is in the flushed log when it is
/// acknowledged (a copy of the directory taken then, LMDB's file put back to its last
/// checkpoint, opens with it).
#[test]
fn one_client_thread_commits_its_own_writes_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), Fsync::Always, 1 << 20, 1).expect("open");
    let id = store.inner.id;
    let checkpoint = std::fs::read(dir.path().join("data.mdb")).expect("read");
    rt().block_on(async {
        let mut pending = Vec::new();
        for k in 0..50u8 {
            let set = set_of(1, &[k], false);
            let p = store
                .submit_one(key(k), move |_, _| (Change::Put(set), u32::from(k)))
                .await
                .expect("queue");
            pending.push(p);
        }
        for (k, p) in pending.into_iter().enumerate() {
            assert_eq!(p.await.expect("commit"), k as u32);
        }
        assert!(
            ACKERS.with(|a| a.borrow().iter().all(|(i, _)| *i != id)),
            "no acknowledger"
        );
        let writers = LOCAL_WRITERS.with(|w| w.borrow().iter().filter(|(i, _)| *i == id).count());
        assert_eq!(writers, 1, "one writer of this thread's own");
        // What a power cut now leaves: the log as flushed, LMDB's file as checkpointed.
        let crashed = tempfile::tempdir().expect("tempdir");
        std::fs::write(crashed.path().join("data.mdb"), &checkpoint).expect("write");
        for name in ["wal.0", "wal.1"] {
            if let Ok(log) = std::fs::read(dir.path().join(name)) {
                std::fs::write(crashed.path().join(name), &log).expect("copy the log");
            }
        }
        let copy = Store::open(crashed.path(), Fsync::No, 1 << 20, 1).expect("open the copy");
        for k in 0..50u8 {
            assert_eq!(copy.get(&key(k)).expect("get"), Some(set_of(1, &[k], false)), "key {k}");
        }
        copy.close().await.expect("close the copy");
        store.close().await.expect("close");
    });
}
