//! How a user key becomes an LMDB key. Must not know about values or transactions.
//!
//! Layout: `partition (2 bytes, big endian) | xxh3-64(key) (8 bytes, BE) | tag | rest`.
//! The partition prefix makes each partition one contiguous range (handoff and Merkle
//! builds are range scans); the hash orders keys inside a partition so a SCAN cursor can
//! name a position with a plain integer. Keys up to [`INLINE_MAX`] bytes follow tag 0
//! verbatim; longer keys (LMDB keys are limited to 511 bytes) follow tag 1 as their
//! xxh3-128 digest, and the record keeps the full key.

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::ring::partition_of;

/// Longest user key stored verbatim inside the LMDB key.
pub const INLINE_MAX: usize = 511 - HEADER;
/// Bytes before the tag-dependent rest: partition, hash, tag.
const HEADER: usize = 2 + 8 + 1;
const TAG_INLINE: u8 = 0;
const TAG_DIGEST: u8 = 1;

/// The LMDB key of a user key.
pub fn encode(key: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; encoded_len(key)];
    fill(key, &mut out);
    out
}

/// Longest LMDB key built in [`StackKey`]'s own buffer (keys of up to 53 bytes).
const SHORT: usize = 64;

/// The LMDB key of a user key, built without allocating when it is short (the usual
/// case): reads use it to look a key up.
pub enum StackKey {
    /// Up to [`SHORT`] bytes, in place.
    Short([u8; SHORT], u8),
    /// A longer key.
    Long(Vec<u8>),
}

impl StackKey {
    /// Encodes `key`.
    #[inline]
    pub fn new(key: &[u8]) -> StackKey {
        let len = encoded_len(key);
        if len <= SHORT {
            let mut buf = [0u8; SHORT];
            fill(key, &mut buf[..len]);
            StackKey::Short(buf, len as u8)
        } else {
            StackKey::Long(encode(key))
        }
    }

    /// The encoded bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            StackKey::Short(buf, len) => &buf[..usize::from(*len)],
            StackKey::Long(v) => v,
        }
    }
}

/// The length of `key`'s LMDB key.
fn encoded_len(key: &[u8]) -> usize {
    if key.len() <= INLINE_MAX {
        HEADER + key.len()
    } else {
        HEADER + 16
    }
}

/// Writes `key`'s LMDB key into `out`, which is exactly [`encoded_len`] bytes long.
fn fill(key: &[u8], out: &mut [u8]) {
    out[..2].copy_from_slice(&partition_of(key).to_be_bytes());
    out[2..10].copy_from_slice(&xxh3_64(key).to_be_bytes());
    if key.len() <= INLINE_MAX {
        out[10] = TAG_INLINE;
        out[HEADER..].copy_from_slice(key);
    } else {
        out[10] = TAG_DIGEST;
        out[HEADER..].copy_from_slice(&xxh3_128(key).to_be_bytes());
    }
}

/// Whether the record stored under `key`'s LMDB key must carry the full user key.
pub fn needs_full_key(key: &[u8]) -> bool {
    key.len() > INLINE_MAX
}

/// The user key held inline in an LMDB key, or `None` when the key is a digest (the
/// record then holds it) or the bytes are not a record key.
pub fn inline_key(lmdb_key: &[u8]) -> Option<&[u8]> {
    match lmdb_key.get(HEADER - 1) {
        Some(&TAG_INLINE) => Some(&lmdb_key[HEADER..]),
        _ => None,
    }
}

/// The scan position of an LMDB key: its partition in the top 14 bits, then the top 50
/// bits of its hash. Positions increase along LMDB key order.
pub fn position(lmdb_key: &[u8]) -> u64 {
    let mut p = [0u8; 2];
    let mut h = [0u8; 8];
    if lmdb_key.len() >= 10 {
        p.copy_from_slice(&lmdb_key[..2]);
        h.copy_from_slice(&lmdb_key[2..10]);
    }
    (u64::from(u16::from_be_bytes(p)) << 50) | (u64::from_be_bytes(h) >> 14)
}

/// The smallest LMDB key at or after scan position `pos`.
pub fn position_start(pos: u64) -> [u8; 10] {
    let partition = (pos >> 50) as u16;
    let hash = (pos & ((1u64 << 50) - 1)) << 14;
    let mut out = [0u8; 10];
    out[..2].copy_from_slice(&partition.to_be_bytes());
    out[2..].copy_from_slice(&hash.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_inline_long_keys_digested() {
        let k = encode(b"hello");
        assert_eq!(inline_key(&k), Some(&b"hello"[..]));
        let long = vec![b'x'; 10_000];
        let lk = encode(&long);
        assert!(lk.len() <= 511);
        assert_eq!(inline_key(&lk), None);
        assert!(needs_full_key(&long));
        let edge = vec![b'y'; INLINE_MAX];
        assert_eq!(encode(&edge).len(), 511);
    }

    #[test]
    fn positions_follow_key_order() {
        let mut keys: Vec<Vec<u8>> = (0..2000u32).map(|i| encode(format!("k{i}").as_bytes())).collect();
        keys.sort();
        for w in keys.windows(2) {
            assert!(position(&w[0]) <= position(&w[1]));
        }
        for k in &keys {
            let start = position_start(position(k));
            assert!(start.as_slice() <= k.as_slice());
        }
    }

    #[test]
    fn the_stack_key_is_the_stored_key_on_both_sides_of_its_buffer() {
        for n in [
            0,
            1,
            SHORT - HEADER - 1,
            SHORT - HEADER,
            SHORT - HEADER + 1,
            INLINE_MAX,
            INLINE_MAX + 1,
            10_000,
        ] {
            let key: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let stored = encode(&key);
            assert_eq!(StackKey::new(&key).as_slice(), stored.as_slice(), "length {n}");
            assert_eq!(u16::from_be_bytes([stored[0], stored[1]]), partition_of(&key));
            assert_eq!(stored[2..10], xxh3_64(&key).to_be_bytes());
        }
    }

    #[test]
    fn empty_and_binary_keys() {
        let k = encode(b"");
        assert_eq!(inline_key(&k), Some(&b""[..]));
        let b = encode(b"a\0b\r\n");
        assert_eq!(inline_key(&b), Some(&b"a\0b\r\n"[..]));
    }
}
