//! Dots, version vectors and the printable client context token.
//!
//! A [`VersionVector`] maps node ids to the highest write counter seen from
//! that node; it is the causal context of a sibling set. A [`Dot`] names one
//! write `(node, counter)`; a vector *covers* a dot when it has seen it.
//!
//! Clients never see node ids directly: `SIBLINGS` hands them an opaque
//! token ([`VersionVector::to_token`]) and `RESOLVE` takes it back
//! ([`VersionVector::from_token`]).
//!
//! Token format: base64url without padding (alphabet `A-Z a-z 0-9 - _`) of
//! the bytes `tag:u8(=1) count { node counter }*count`, where every integer
//! is a minimal LEB128 varint, nodes are strictly increasing and counters
//! are non-zero. The empty vector therefore has the fixed token `AQA`. The
//! token only contains characters that survive copy/paste in `redis-cli`
//! without quoting.

use super::codec::{DecodeError, Reader};

/// Identifier of a cluster node. Version vectors are indexed by node (the
/// coordinator of a write), never by client, so they stay cluster-sized.
pub type NodeId = u64;

/// One write event: the `counter`-th event coordinated by `node`.
///
/// Every sibling is tagged with the dot of the write that created it, which
/// lets a causal context state precisely which writes it has seen.
/// Dots order by `(node, counter)`; sibling sets keep siblings in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// The node that coordinated the write.
    pub node: NodeId,
    /// The node-local write counter (always >= 1 for real writes).
    pub counter: u64,
}

impl Dot {
    /// Builds a dot; a plain constructor for readability at call sites.
    #[must_use]
    pub fn new(node: NodeId, counter: u64) -> Self {
        Dot { node, counter }
    }
}

/// A version vector: for each node, the highest counter seen from it.
///
/// Stored as a vector of `(node, counter)` pairs sorted by node with no zero
/// counters, so the representation is canonical (derived equality is
/// semantic equality) and small vectors stay allocation-cheap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionVector {
    entries: Vec<(NodeId, u64)>,
}

/// Format tag: the first byte of a decoded context token.
const TOKEN_TAG: u8 = 1;

/// Why a client-supplied context token was rejected.
///
/// `Display` is lower-case `invalid context: <reason>`; the protocol layer
/// prefixes `ERR ` when replying.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    /// The token is the empty string.
    #[error("invalid context: empty token")]
    Empty,
    /// A byte outside the base64url alphabet (e.g. space, quote, `=`, `+`).
    #[error("invalid context: bad character at offset {0}")]
    InvalidCharacter(usize),
    /// The token length is impossible for base64 (length % 4 == 1).
    #[error("invalid context: bad token length")]
    InvalidLength,
    /// The last character has non-zero unused bits (non-canonical base64).
    #[error("invalid context: non-canonical encoding")]
    NonCanonical,
    /// The format tag is not one this build understands.
    #[error("invalid context: unknown format {0}")]
    UnknownFormat(u8),
    /// The decoded payload is malformed (truncated, trailing bytes,
    /// unsorted or duplicate nodes, zero counters, bad varints).
    #[error("invalid context: {0}")]
    Malformed(#[from] DecodeError),
}

impl VersionVector {
    /// The empty vector (has seen nothing).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a vector from entries that the caller guarantees are strictly
    /// sorted by node with non-zero counters (used by the decoders).
    pub(super) fn from_sorted_entries(entries: Vec<(NodeId, u64)>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        debug_assert!(entries.iter().all(|e| e.1 > 0));
        VersionVector { entries }
    }

    /// Highest counter seen from `node`; 0 when the node is absent.
    #[must_use]
    pub fn get(&self, node: NodeId) -> u64 {
        match self.entries.binary_search_by_key(&node, |e| e.0) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// True when this vector has seen `dot`, i.e. `dot.counter <= get(dot.node)`.
    #[must_use]
    pub fn covers(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.node)
    }

    /// Pointwise maximum with `other` (the least upper bound of the two
    /// histories), in place.
    pub fn join(&mut self, other: &VersionVector) {
        if other.entries.is_empty() {
            return;
        }
        if self.entries.is_empty() {
            self.entries.clone_from(&other.entries);
            return;
        }
        // The usual case in a write: the client's context is this one or older.
        if self.descends(other) {
            return;
        }
        let mut out = Vec::with_capacity(self.entries.len() + other.entries.len());
        let (mut a, mut b) = (self.entries.iter().peekable(), other.entries.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) => {
                    if x.0 < y.0 {
                        out.push(x);
                        a.next();
                    } else if y.0 < x.0 {
                        out.push(y);
                        b.next();
                    } else {
                        out.push((x.0, x.1.max(y.1)));
                        a.next();
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    out.push(x);
                    a.next();
                }
                (None, Some(&&y)) => {
                    out.push(y);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.entries = out;
    }

    /// Records that `dot` has been seen: the node's entry becomes
    /// `max(entry, dot.counter)`. A zero counter is a no-op.
    pub fn advance(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        match self.entries.binary_search_by_key(&dot.node, |e| e.0) {
            Ok(i) => self.entries[i].1 = self.entries[i].1.max(dot.counter),
            Err(i) => self.entries.insert(i, (dot.node, dot.counter)),
        }
    }

    /// True when `self >= other` pointwise, i.e. this history includes
    /// everything `other` has seen.
    #[must_use]
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|&(n, c)| self.get(n) >= c)
    }

    /// True when the vector has seen nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of nodes with a non-zero entry.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The non-zero entries `(node, counter)` in increasing node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// Opaque, printable context token for clients (`SIBLINGS` returns it,
    /// `RESOLVE` takes it back).
    ///
    /// It is base64url without padding of a 1-byte format tag followed by
    /// varint-encoded entries, so it contains only `A-Z a-z 0-9 - _` and can
    /// be copied in `redis-cli` without quoting. Every vector, including the
    /// empty one (`AQA`), has exactly one token.
    #[must_use]
    pub fn to_token(&self) -> String {
        let mut raw = Vec::with_capacity(1 + self.encoded_entries_len());
        raw.push(TOKEN_TAG);
        self.encode_entries(&mut raw);
        base64url_encode(&raw)
    }

    /// Parses a token produced by [`VersionVector::to_token`].
    ///
    /// Strict, because the token comes from untrusted clients: characters
    /// outside base64url, padding, non-canonical trailing bits, unknown
    /// format tags, truncation, trailing bytes, duplicate or unsorted nodes
    /// and zero counters are all errors. Never panics.
    ///
    /// # Errors
    ///
    /// Returns a [`ContextError`] describing why the token was rejected.
    pub fn from_token(token: &[u8]) -> Result<Self, ContextError> {
        if token.is_empty() {
            return Err(ContextError::Empty);
        }
        let raw = base64url_decode(token)?;
        let mut r = Reader::new(&raw);
        let tag = r.u8()?;
        if tag != TOKEN_TAG {
            return Err(ContextError::UnknownFormat(tag));
        }
        let vv = VersionVector::decode_entries(&mut r)?;
        r.finish()?;
        Ok(vv)
    }
}

/// The base64url alphabet (RFC 4648 section 5).
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Encodes `data` as unpadded base64url.
fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(B64[idx as usize]));
        }
    }
    out
}

/// Maps one base64url character to its 6-bit value.
fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Strictly decodes unpadded base64url: rejects foreign characters,
/// impossible lengths and non-zero unused bits, so each byte string has
/// exactly one accepted spelling.
fn base64url_decode(text: &[u8]) -> Result<Vec<u8>, ContextError> {
    if let Some(i) = text.iter().position(|&c| b64_value(c).is_none()) {
        return Err(ContextError::InvalidCharacter(i));
    }
    if text.len() % 4 == 1 {
        return Err(ContextError::InvalidLength);
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for (ci, chunk) in text.chunks(4).enumerate() {
        let mut n: u32 = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = b64_value(c).ok_or(ContextError::InvalidCharacter(ci * 4 + i))?;
            n |= u32::from(v) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let produced = chunk.len() - 1;
        // Bits below the produced bytes must be zero for a canonical encoding.
        let unused_mask = match produced {
            1 => 0xffff,
            2 => 0xff,
            _ => 0,
        };
        if n & unused_mask != 0 {
            return Err(ContextError::NonCanonical);
        }
        out.extend_from_slice(&bytes[..produced]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(entries: &[(NodeId, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(n, c) in entries {
            v.advance(Dot::new(n, c));
        }
        v
    }

    /// Builds a token from raw payload bytes (tag included).
    fn raw_token(raw: &[u8]) -> String {
        base64url_encode(raw)
    }

    #[test]
    fn get_covers_advance() {
        let mut v = VersionVector::new();
        assert_eq!(v.get(7), 0);
        assert!(v.covers(Dot::new(7, 0)));
        assert!(!v.covers(Dot::new(7, 1)));
        v.advance(Dot::new(7, 3));
        v.advance(Dot::new(7, 2));
        v.advance(Dot::new(1, 0));
        assert_eq!(v.get(7), 3);
        assert_eq!(v.len(), 1);
        assert!(v.covers(Dot::new(7, 3)));
        assert!(!v.covers(Dot::new(7, 4)));
        v.advance(Dot::new(2, 5));
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![(2, 5), (7, 3)]);
    }

    #[test]
    fn join_is_pointwise_max() {
        let mut a = vv(&[(1, 3), (2, 1), (5, 9)]);
        let b = vv(&[(0, 4), (2, 7), (5, 2), (9, 1)]);
        a.join(&b);
        assert_eq!(a, vv(&[(0, 4), (1, 3), (2, 7), (5, 9), (9, 1)]));
        let mut e = VersionVector::new();
        e.join(&b);
        assert_eq!(e, b);
        let mut c = b.clone();
        c.join(&VersionVector::new());
        assert_eq!(c, b);
    }

    #[test]
    fn descends() {
        let a = vv(&[(1, 3), (2, 1)]);
        let b = vv(&[(1, 2)]);
        assert!(a.descends(&b));
        assert!(!b.descends(&a));
        assert!(a.descends(&a));
        assert!(a.descends(&VersionVector::new()));
        assert!(!a.descends(&vv(&[(3, 1)])));
        assert!(VersionVector::new().is_empty());
    }

    #[test]
    fn base64_known_vectors() {
        assert_eq!(base64url_encode(b""), "");
        assert_eq!(base64url_encode(b"f"), "Zg");
        assert_eq!(base64url_encode(b"fo"), "Zm8");
        assert_eq!(base64url_encode(b"foo"), "Zm9v");
        assert_eq!(base64url_encode(b"foob"), "Zm9vYg");
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_decode(b"Zm9vYg"), Ok(b"foob".to_vec()));
        assert_eq!(base64url_decode(b"-_8"), Ok(vec![0xfb, 0xff]));
    }

    #[test]
    fn empty_vector_token() {
        let t = VersionVector::new().to_token();
        assert_eq!(t, "AQA");
        assert_eq!(VersionVector::from_token(t.as_bytes()), Ok(VersionVector::new()));
    }

    #[test]
    fn token_roundtrip_examples() {
        for v in [
            vv(&[(1, 1)]),
            vv(&[(0, u64::MAX), (u64::MAX, 1)]),
            vv(&[(1, 1_700_000_000_000_000), (2, 3), (3, 1_700_000_000_000_123)]),
        ] {
            let t = v.to_token();
            assert!(t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            assert_eq!(VersionVector::from_token(t.as_bytes()), Ok(v));
        }
    }

    #[test]
    fn token_rejects_garbage() {
        let good = vv(&[(1, 5), (2, 6)]).to_token();
        assert_eq!(VersionVector::from_token(b""), Err(ContextError::Empty));
        assert_eq!(
            VersionVector::from_token(b"AQ A"),
            Err(ContextError::InvalidCharacter(2))
        );
        for bad in [&b"AQA="[..], b"AQ+A", b"AQ/A", b"\"AQA\"", b"AQ\xffA"] {
            assert!(
                matches!(VersionVector::from_token(bad), Err(ContextError::InvalidCharacter(_))),
                "{bad:?}"
            );
        }
        assert_eq!(VersionVector::from_token(b"A"), Err(ContextError::InvalidLength));
        // "AQB": last char has a non-zero unused bit.
        assert_eq!(VersionVector::from_token(b"AQB"), Err(ContextError::NonCanonical));
        // Unknown tag.
        assert_eq!(
            VersionVector::from_token(raw_token(&[2, 0]).as_bytes()),
            Err(ContextError::UnknownFormat(2))
        );
        // Tag only: truncated.
        assert_eq!(
            VersionVector::from_token(raw_token(&[1]).as_bytes()),
            Err(ContextError::Malformed(DecodeError::Truncated))
        );
        // Count says two entries, only one present.
        assert!(VersionVector::from_token(raw_token(&[1, 2, 1, 1]).as_bytes()).is_err());
        // Trailing bytes.
        assert_eq!(
            VersionVector::from_token(raw_token(&[1, 1, 1, 1, 0]).as_bytes()),
            Err(ContextError::Malformed(DecodeError::TrailingBytes(1)))
        );
        // Duplicate and unsorted nodes.
        assert_eq!(
            VersionVector::from_token(raw_token(&[1, 2, 1, 1, 1, 2]).as_bytes()),
            Err(ContextError::Malformed(DecodeError::UnsortedNodes))
        );
        assert_eq!(
            VersionVector::from_token(raw_token(&[1, 2, 2, 1, 1, 1]).as_bytes()),
            Err(ContextError::Malformed(DecodeError::UnsortedNodes))
        );
        // Zero counter.
        assert_eq!(
            VersionVector::from_token(raw_token(&[1, 1, 1, 0]).as_bytes()),
            Err(ContextError::Malformed(DecodeError::ZeroCounter))
        );
        // Non-minimal varint.
        assert_eq!(
            VersionVector::from_token(raw_token(&[1, 1, 0x81, 0x00, 1]).as_bytes()),
            Err(ContextError::Malformed(DecodeError::NonCanonicalVarint))
        );
        // Every truncation of a good token fails.
        for n in 0..good.len() {
            assert!(VersionVector::from_token(&good.as_bytes()[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn context_error_display() {
        assert_eq!(ContextError::Empty.to_string(), "invalid context: empty token");
        assert_eq!(
            ContextError::Malformed(DecodeError::Truncated).to_string(),
            "invalid context: truncated input"
        );
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map(any::<u64>(), 1..=u64::MAX, 0..8)
            .prop_map(|m| VersionVector::from_sorted_entries(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn prop_token_roundtrip(v in arb_vv()) {
            let t = v.to_token();
            prop_assert!(t.bytes().all(|c| b64_value(c).is_some()));
            prop_assert_eq!(VersionVector::from_token(t.as_bytes()), Ok(v));
        }

        #[test]
        fn prop_token_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Accepted tokens must be canonical: re-encoding reproduces them.
            if let Ok(v) = VersionVector::from_token(&bytes) {
                prop_assert_eq!(v.to_token().into_bytes(), bytes);
            }
        }

        #[test]
        fn prop_token_b64_garbage_never_panics(s in "[A-Za-z0-9_-]{0,40}") {
            if let Ok(v) = VersionVector::from_token(s.as_bytes()) {
                prop_assert_eq!(v.to_token(), s);
            }
        }

        #[test]
        fn prop_base64_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(base64url_decode(base64url_encode(&data).as_bytes()), Ok(data));
        }

        #[test]
        fn prop_join_laws(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let mut ab = a.clone(); ab.join(&b);
            let mut ba = b.clone(); ba.join(&a);
            prop_assert_eq!(&ab, &ba);
            prop_assert!(ab.descends(&a) && ab.descends(&b));
            let mut ab_c = ab.clone(); ab_c.join(&c);
            let mut bc = b.clone(); bc.join(&c);
            let mut a_bc = a.clone(); a_bc.join(&bc);
            prop_assert_eq!(ab_c, a_bc);
            let mut aa = a.clone(); aa.join(&a);
            prop_assert_eq!(aa, a);
        }
    }
}
