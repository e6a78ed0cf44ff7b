//! Merkle trees for anti-entropy, one per partition, kept in the `trees` database. Must
//! not know about peers.
//!
//! The trees are not written with every commit: with random keys that would dirty about
//! as many tree pages as record pages. A commit's tree changes join the [`Pending`]
//! changes in memory, which readers of the trees add to what is stored, and the writer
//! stores them all at once about once a second ([`FLUSH_AFTER`], or when they grow past
//! [`FLUSH_PAST`], and on close). While some are pending, a flag in the metadata says the
//! stored trees are behind their records, set in the first commit that leaves changes
//! pending and cleared by the one that stores them: a store opened with the flag set (a
//! crash) rebuilds its trees from the records.
//!
//! Every record contributes `h = xxh3-128(key length | LMDB key | record bytes)`. A tree
//! node's hash is the XOR of the contributions below it, so a write changes its leaf and
//! its partition's root by the same delta, `h(old) ^ h(new)`, whatever else the partition
//! holds: an update never rescans. The writer sums the deltas per leaf and writes each
//! touched leaf and root once. Record bytes are
//! canonical (sibling sets encode sorted), so replicas holding the same versions agree.
//!
//! A partition has 256 leaves, chosen by the top byte of the key hash (the byte after the
//! partition prefix in the LMDB key), so each leaf is one contiguous key range whose
//! records a range scan lists. Layout: `[0, partition] -> root`, `[1, partition, leaf] ->
//! leaf hash`, 16 bytes big endian; zero hashes are not stored (an empty partition and a
//! partition whose records cancel out are both absent).

use std::ops::Bound;
use std::time::{Duration, Instant};

use heed::types::Bytes as RawBytes;
use heed::{Database, RoTxn, RwTxn, WithTls};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

/// Version of the tree layout and record hash; a store built with another is rebuilt.
pub const TREE_FORMAT: u8 = 1;
/// Leaves per partition.
pub const LEAVES: usize = 256;

const ROOT: u8 = 0;
const LEAF: u8 = 1;

type Db = Database<RawBytes, RawBytes>;

/// Records up to this size (with their key) are hashed in one pass from a stack copy.
const ONE_PASS: usize = 256;

/// The contribution of one record (its LMDB key and stored bytes) to its tree.
pub fn record_hash(lmdb_key: &[u8], record: &[u8]) -> u128 {
    let len = 4 + lmdb_key.len() + record.len();
    if len <= ONE_PASS {
        // The same digest as the streaming hasher gives, without its large state.
        let mut buf = [0u8; ONE_PASS];
        buf[..4].copy_from_slice(&(lmdb_key.len() as u32).to_be_bytes());
        buf[4..4 + lmdb_key.len()].copy_from_slice(lmdb_key);
        buf[4 + lmdb_key.len()..len].copy_from_slice(record);
        return xxh3_128(&buf[..len]);
    }
    let mut h = Xxh3::new();
    h.update(&(lmdb_key.len() as u32).to_be_bytes());
    h.update(lmdb_key);
    h.update(record);
    h.digest128()
}

/// The partition and leaf of an LMDB record key (`None` for a key too short to be one).
pub fn leaf_of(lmdb_key: &[u8]) -> Option<(u16, u8)> {
    match lmdb_key {
        [a, b, leaf, ..] => Some((u16::from_be_bytes([*a, *b]), *leaf)),
        _ => None,
    }
}

fn root_key(partition: u16) -> [u8; 3] {
    let p = partition.to_be_bytes();
    [ROOT, p[0], p[1]]
}

fn leaf_key(partition: u16, leaf: u8) -> [u8; 4] {
    let p = partition.to_be_bytes();
    [LEAF, p[0], p[1], leaf]
}

fn decode_hash(bytes: &[u8]) -> u128 {
    bytes.try_into().map(u128::from_be_bytes).unwrap_or(0)
}

/// Tree changes of one write transaction not yet written: per (partition, leaf), the XOR
/// of the deltas (old contribution XOR new) of the records changed there.
#[derive(Debug, Default, Clone)]
pub struct Deltas {
    leaves: ahash::AHashMap<(u16, u8), u128>,
}

impl Deltas {
    /// Adds the delta of the record under `lmdb_key`.
    pub fn add(&mut self, lmdb_key: &[u8], delta: u128) {
        if let (Some(at), true) = (leaf_of(lmdb_key), delta != 0) {
            *self.leaves.entry(at).or_default() ^= delta;
        }
    }

    /// Drops everything pending (the trees were cleared).
    pub fn clear(&mut self) {
        self.leaves.clear();
    }

    /// Drops what is pending for one partition (its tree is being rebuilt).
    pub fn forget_partition(&mut self, partition: u16) {
        self.leaves.retain(|(p, _), _| *p != partition);
    }

    /// Whether there is no change.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Adds every change of `other`.
    pub fn absorb(&mut self, other: &Deltas) {
        for (&at, &delta) in &other.leaves {
            let d = self.leaves.entry(at).or_default();
            *d ^= delta;
            if *d == 0 {
                self.leaves.remove(&at);
            }
        }
    }
}

/// Pending changes are stored once they are this old...
pub const FLUSH_AFTER: Duration = Duration::from_secs(1);
/// ... or once this many leaves have one.
pub const FLUSH_PAST: usize = 1 << 16;

/// Tree changes committed with their records but not yet stored in the trees database
/// (see the module docs). Guarded by a mutex that a writer holds from before its commit
/// until it has updated these, and readers of the trees while they read, so a reader
/// sees each change either here or stored, never both or neither.
#[derive(Debug, Default)]
pub struct Pending {
    deltas: Deltas,
    /// When the oldest pending change was committed.
    since: Option<Instant>,
    /// Whether the stored metadata flags the stored trees as behind.
    pub flagged: bool,
}

impl Pending {
    /// Whether the pending changes should be stored with the next commit.
    pub fn due(&self) -> bool {
        self.deltas.leaves.len() >= FLUSH_PAST || self.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    /// The pending changes, for a commit that stores them.
    pub fn deltas(&self) -> &Deltas {
        &self.deltas
    }

    /// After a commit that stored everything pending.
    pub fn stored(&mut self) {
        self.deltas.clear();
        self.since = None;
        self.flagged = false;
    }

    /// After a commit that leaves its changes `batch` pending.
    pub fn add(&mut self, batch: &Deltas) {
        if !batch.is_empty() {
            self.deltas.absorb(batch);
            self.since.get_or_insert_with(Instant::now);
            self.flagged = true;
        }
    }

    /// The pending changes, for a commit that cleared the trees or rebuilt some: what was
    /// pending there is already counted in what that commit stored, and must be dropped.
    pub fn deltas_mut(&mut self) -> &mut Deltas {
        &mut self.deltas
    }

    /// The pending change of every partition root.
    fn roots(&self) -> ahash::AHashMap<u16, u128> {
        let mut roots: ahash::AHashMap<u16, u128> = ahash::AHashMap::new();
        for (&(p, _), &d) in &self.deltas.leaves {
            *roots.entry(p).or_default() ^= d;
        }
        roots
    }
}

/// Writes the pending deltas into their leaves and roots and empties `deltas` (on error
/// the caller replays the whole transaction, deltas included). The changes are applied in
/// key order along one range per partition (and one over the roots), so a partition's
/// changed leaves cost one B-tree search, not two for each (a read and a write).
pub fn flush(trees: &Db, wtxn: &mut RwTxn<'_>, deltas: &mut Deltas) -> Result<(), heed::Error> {
    let mut partitions: std::collections::BTreeMap<u16, Vec<(u8, u128)>> = std::collections::BTreeMap::new();
    for (&(partition, leaf), &delta) in &deltas.leaves {
        if delta != 0 {
            partitions.entry(partition).or_default().push((leaf, delta));
        }
    }
    let mut inserts = Vec::new();
    let mut roots = Vec::with_capacity(partitions.len());
    for (&partition, leaves) in partitions.iter_mut() {
        leaves.sort_unstable_by_key(|&(leaf, _)| leaf);
        let root = leaves.iter().fold(0u128, |a, &(_, d)| a ^ d);
        if root != 0 {
            roots.push((TreeKey::root(partition), root));
        }
        let changes: Vec<(TreeKey, u128)> = leaves.iter().map(|&(l, d)| (TreeKey::leaf(partition, l), d)).collect();
        merge(trees, wtxn, &changes, &mut inserts)?;
    }
    merge(trees, wtxn, &roots, &mut inserts)?;
    for (key, hash) in inserts {
        trees.put(wtxn, key.as_slice(), &hash.to_be_bytes())?;
    }
    deltas.clear();
    Ok(())
}

/// The key of a tree entry, without an allocation: a root's 3 bytes or a leaf's 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TreeKey {
    bytes: [u8; 4],
    len: u8,
}

impl TreeKey {
    fn root(partition: u16) -> TreeKey {
        let [a, b, c] = root_key(partition);
        TreeKey {
            bytes: [a, b, c, 0],
            len: 3,
        }
    }

    fn leaf(partition: u16, leaf: u8) -> TreeKey {
        TreeKey {
            bytes: leaf_key(partition, leaf),
            len: 4,
        }
    }

    fn of(bytes: &[u8]) -> TreeKey {
        let mut k = TreeKey { bytes: [0; 4], len: 0 };
        let n = bytes.len().min(4);
        k.bytes[..n].copy_from_slice(&bytes[..n]);
        k.len = n as u8;
        k
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The next entry of the range, copied out (the cursor may write before it is used).
fn next(range: &mut heed::RwRange<'_, RawBytes, RawBytes>) -> Result<Option<(TreeKey, u128)>, heed::Error> {
    Ok(range.next().transpose()?.map(|(k, v)| (TreeKey::of(k), decode_hash(v))))
}

/// XORs `changes` (in key order, all within one range of entries) into the stored
/// entries, deleting those that become zero; changes with no entry yet are added to
/// `inserts`, to be put once no cursor is open.
fn merge(
    trees: &Db,
    wtxn: &mut RwTxn<'_>,
    changes: &[(TreeKey, u128)],
    inserts: &mut Vec<(TreeKey, u128)>,
) -> Result<(), heed::Error> {
    let (Some((first, _)), Some((last, _))) = (changes.first(), changes.last()) else {
        return Ok(());
    };
    let span = (Bound::Included(first.as_slice()), Bound::Included(last.as_slice()));
    let mut range = trees.range_mut(wtxn, &span)?;
    let mut entry = next(&mut range)?;
    for &(key, delta) in changes {
        while let Some((k, _)) = entry
            && k.as_slice() < key.as_slice()
        {
            entry = next(&mut range)?;
        }
        match entry {
            Some((k, old)) if k == key => {
                let new = old ^ delta;
                // SAFETY: the entry was copied out; nothing borrowed from the cursor is held.
                unsafe {
                    if new == 0 {
                        range.del_current()?;
                    } else {
                        range.put_current(key.as_slice(), &new.to_be_bytes())?;
                    }
                }
                entry = next(&mut range)?;
            }
            _ => inserts.push((key, delta)),
        }
    }
    Ok(())
}

/// Recomputes one partition's tree from its records (a rebuild step; bounded by the
/// partition's size).
pub fn rebuild_partition(data: &Db, trees: &Db, wtxn: &mut RwTxn<'_>, partition: u16) -> Result<(), heed::Error> {
    let mut leaves = vec![0u128; LEAVES];
    {
        for entry in data.prefix_iter(wtxn, &partition.to_be_bytes())? {
            let (k, v) = entry?;
            if let Some((_, leaf)) = leaf_of(k) {
                leaves[leaf as usize] ^= record_hash(k, v);
            }
        }
    }
    let root = leaves.iter().fold(0u128, |a, b| a ^ b);
    let first = leaf_key(partition, 0);
    let last = leaf_key(partition, u8::MAX);
    trees.delete_range(
        wtxn,
        &(Bound::Included(first.as_slice()), Bound::Included(last.as_slice())),
    )?;
    trees.delete(wtxn, &root_key(partition))?;
    for (i, h) in leaves.iter().enumerate() {
        if *h != 0 {
            trees.put(wtxn, &leaf_key(partition, i as u8), &h.to_be_bytes())?;
        }
    }
    if root != 0 {
        trees.put(wtxn, &root_key(partition), &root.to_be_bytes())?;
    }
    Ok(())
}

/// Every non-zero partition root, stored and pending together, in partition order.
pub fn roots(trees: &Db, rtxn: &RoTxn<'_, WithTls>, pending: &Pending) -> Result<Vec<(u16, u128)>, heed::Error> {
    let mut all: std::collections::BTreeMap<u16, u128> = pending.roots().into_iter().collect();
    for entry in trees.prefix_iter(rtxn, &[ROOT])? {
        let (k, v) = entry?;
        if let [ROOT, a, b] = k {
            *all.entry(u16::from_be_bytes([*a, *b])).or_default() ^= decode_hash(v);
        }
    }
    Ok(all.into_iter().filter(|(_, h)| *h != 0).collect())
}

/// The non-zero leaves of one partition, stored and pending together, in leaf order.
pub fn leaves(
    trees: &Db,
    rtxn: &RoTxn<'_, WithTls>,
    pending: &Pending,
    partition: u16,
) -> Result<Vec<(u8, u128)>, heed::Error> {
    let p = partition.to_be_bytes();
    let mut all = [0u128; LEAVES];
    if !pending.deltas.is_empty() {
        for (leaf, h) in all.iter_mut().enumerate() {
            *h = pending
                .deltas
                .leaves
                .get(&(partition, leaf as u8))
                .copied()
                .unwrap_or(0);
        }
    }
    for entry in trees.prefix_iter(rtxn, &[LEAF, p[0], p[1]])? {
        let (k, v) = entry?;
        if let [LEAF, _, _, leaf] = k {
            all[*leaf as usize] ^= decode_hash(v);
        }
    }
    Ok(all
        .iter()
        .enumerate()
        .filter(|(_, h)| **h != 0)
        .map(|(l, h)| (l as u8, *h))
        .collect())
}

/// The records of one leaf: each LMDB key with its contribution, in key order.
pub fn leaf_records(
    data: &Db,
    rtxn: &RoTxn<'_, WithTls>,
    partition: u16,
    leaf: u8,
) -> Result<Vec<(Vec<u8>, u128)>, heed::Error> {
    let p = partition.to_be_bytes();
    let mut out = Vec::new();
    for entry in data.prefix_iter(rtxn, &[p[0], p[1], leaf])? {
        let (k, v) = entry?;
        out.push((k.to_vec(), record_hash(k, v)));
    }
    Ok(out)
}
