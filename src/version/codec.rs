//! Binary encoding of [`SiblingSet`]s and the varint primitives shared with
//! the context token.
//!
//! Format version 1 (all integers are unsigned LEB128 varints unless noted;
//! varints must be minimal, i.e. no redundant trailing `0x80 .. 0x00` bytes,
//! and at most 10 bytes / 64 bits):
//!
//! ```text
//! set      := version:u8(=1) context siblings
//! context  := count { node counter }*count     nodes strictly increasing, counters >= 1
//! siblings := count { sibling }*count          dots strictly increasing
//! sibling  := node counter written_at_ms flags:u8 [expires_at_ms] len value[len]
//! flags    := bit0 tombstone | bit1 has_expiry  (other bits must be 0)
//! ```
//!
//! Every sibling dot must have a counter >= 1 and be covered by the context,
//! tombstones must carry an empty value, and no byte may follow the last
//! sibling. Because every choice is forced, the encoding is canonical:
//! whenever `decode(b)` succeeds, `encode` of the result reproduces `b`
//! exactly. Decoding is bounded: every element count is checked against the
//! bytes that remain before anything is allocated, and malformed input of
//! any shape yields a [`DecodeError`], never a panic.

use bytes::Bytes;

use super::sibling_set::{Sibling, SiblingSet};
use super::vector::{Dot, VersionVector};

/// Version byte written first by [`SiblingSet::encode`]; decoding rejects any
/// other value so the format can evolve without misreading old or new data.
pub const FORMAT_VERSION: u8 = 1;

/// Flag bit: the sibling is a tombstone (a delete marker).
const FLAG_TOMBSTONE: u8 = 0b01;
/// Flag bit: an `expires_at_ms` varint follows the flags byte.
const FLAG_HAS_EXPIRY: u8 = 0b10;

/// Smallest possible encoding of one context entry (two 1-byte varints);
/// used to bound counts before allocating.
pub(super) const MIN_ENTRY_BYTES: usize = 2;
/// Smallest possible encoding of one sibling (node, counter, written_at,
/// flags, length: five bytes); used to bound counts before allocating.
const MIN_SIBLING_BYTES: usize = 5;

/// Why a byte string is not a valid encoding (of a sibling set, or of the
/// payload inside a context token).
///
/// Each variant names one rule of the format so that corrupt data can be
/// diagnosed from logs; the `Display` text is lower-case and suitable for
/// embedding in a Redis `ERR ...` reply.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input has no bytes at all.
    #[error("empty input")]
    Empty,
    /// The leading version byte is not one this build understands.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The input ended in the middle of a field.
    #[error("truncated input")]
    Truncated,
    /// A varint does not fit in 64 bits.
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    /// A varint has redundant trailing zero groups (not minimal).
    #[error("non-canonical varint")]
    NonCanonicalVarint,
    /// A declared element count cannot possibly fit in the remaining bytes.
    #[error("count {count} exceeds remaining input")]
    CountTooLarge {
        /// The declared count.
        count: u64,
    },
    /// A value length exceeds the remaining bytes.
    #[error("value length {len} exceeds remaining input")]
    LengthTooLarge {
        /// The declared length.
        len: u64,
    },
    /// Version-vector nodes are not strictly increasing (unsorted or duplicate).
    #[error("version vector nodes not strictly increasing")]
    UnsortedNodes,
    /// A version-vector entry or a dot has counter zero.
    #[error("zero counter")]
    ZeroCounter,
    /// Sibling dots are not strictly increasing (unsorted or duplicate).
    #[error("sibling dots not strictly increasing")]
    UnsortedDots,
    /// A sibling's dot is not covered by the set's own context.
    #[error("sibling dot not covered by context")]
    DotNotCovered,
    /// The flags byte has bits set that this format does not define.
    #[error("invalid sibling flags {0:#04x}")]
    InvalidFlags(u8),
    /// A tombstone sibling carries a non-empty value.
    #[error("tombstone with non-empty value")]
    TombstoneWithValue,
    /// Bytes remain after the last field.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// Appends `v` as an unsigned LEB128 varint.
pub(super) fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes [`write_varint`] emits for `v`.
pub(super) fn varint_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// A bounds-checked cursor over untrusted input. Every accessor returns an
/// error instead of panicking when the input is short or malformed.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads one raw byte.
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads one minimal LEB128 varint of at most 64 bits.
    #[inline]
    pub(super) fn varint(&mut self) -> Result<u64, DecodeError> {
        // One byte (counts, lengths, flags-sized values) is the common case.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_long()
    }

    /// [`Reader::varint`] for a value of more than one byte (or a short input).
    fn varint_long(&mut self) -> Result<u64, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        if let Some(word) = rest.first_chunk::<8>() {
            // Eight bytes at once: the first byte without a continuation bit ends the
            // value; the 7-bit groups before it are packed together with three shifts.
            let word = u64::from_le_bytes(*word);
            let ends = !word & 0x8080_8080_8080_8080;
            let len = if ends == 0 {
                8
            } else {
                (ends.trailing_zeros() / 8 + 1) as usize
            };
            let kept = if len == 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
            let mut v = word & kept & 0x7f7f_7f7f_7f7f_7f7f;
            v = (v & 0x007f_007f_007f_007f) | ((v & 0x7f00_7f00_7f00_7f00) >> 1);
            v = (v & 0x0000_3fff_0000_3fff) | ((v & 0x3fff_0000_3fff_0000) >> 2);
            v = (v & 0x0000_0000_0fff_ffff) | ((v & 0x0fff_ffff_0000_0000) >> 4);
            if ends != 0 {
                if (word >> (8 * (len - 1))) & 0xff == 0 && len > 1 {
                    return Err(DecodeError::NonCanonicalVarint);
                }
                self.pos += len;
                return Ok(v);
            }
            // All eight carry on: a 9- or 10-byte value (a node id, say).
            return match (rest.get(8), rest.get(9)) {
                (Some(0), _) => Err(DecodeError::NonCanonicalVarint),
                (Some(&b8), _) if b8 < 0x80 => {
                    self.pos += 9;
                    Ok(v | u64::from(b8) << 56)
                }
                (Some(_), Some(&b9)) if b9 > 1 => Err(DecodeError::VarintOverflow),
                (Some(_), Some(0)) => Err(DecodeError::NonCanonicalVarint),
                (Some(&b8), Some(&b9)) => {
                    self.pos += 10;
                    Ok(v | u64::from(b8 & 0x7f) << 56 | u64::from(b9) << 63)
                }
                _ => Err(DecodeError::Truncated),
            };
        }
        // Fewer than eight bytes left: byte by byte (none can overflow), and a value
        // still going at the end is cut short.
        let mut result: u64 = 0;
        for (i, &b) in rest.iter().enumerate() {
            result |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::NonCanonicalVarint);
                }
                self.pos += i + 1;
                return Ok(result);
            }
        }
        Err(DecodeError::Truncated)
    }

    /// Reads an element count and checks that `count * min_size` bytes could
    /// still follow, so callers may allocate `count` elements safely.
    pub(super) fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let count = self.varint()?;
        let fits = (self.remaining() / min_size) as u64;
        if count > fits {
            return Err(DecodeError::CountTooLarge { count });
        }
        // `count <= fits <= usize::MAX`, so the conversion cannot fail.
        usize::try_from(count).map_err(|_| DecodeError::CountTooLarge { count })
    }

    /// Consumes `len` bytes and returns their range within the input.
    fn take(&mut self, len: u64) -> Result<std::ops::Range<usize>, DecodeError> {
        let n = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or(DecodeError::LengthTooLarge { len })?;
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    /// Fails unless the whole input has been consumed.
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

impl VersionVector {
    /// Appends the entry list (`count { node counter }*`) used both inside
    /// the sibling-set encoding and inside the context token.
    pub(super) fn encode_entries(&self, out: &mut Vec<u8>) {
        write_varint(out, self.len() as u64);
        for (node, counter) in self.iter() {
            write_varint(out, node);
            write_varint(out, counter);
        }
    }

    /// Exact size of [`VersionVector::encode_entries`]'s output.
    pub(super) fn encoded_entries_len(&self) -> usize {
        varint_len(self.len() as u64) + self.iter().map(|(n, c)| varint_len(n) + varint_len(c)).sum::<usize>()
    }

    /// Reads an entry list written by [`VersionVector::encode_entries`],
    /// strictly: nodes must be strictly increasing and counters non-zero.
    pub(super) fn decode_entries(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = r.count(MIN_ENTRY_BYTES)?;
        let mut entries = Vec::with_capacity(count);
        let mut prev: Option<u64> = None;
        for _ in 0..count {
            let node = r.varint()?;
            let counter = r.varint()?;
            if counter == 0 {
                return Err(DecodeError::ZeroCounter);
            }
            if prev.is_some_and(|p| p >= node) {
                return Err(DecodeError::UnsortedNodes);
            }
            prev = Some(node);
            entries.push((node, counter));
        }
        Ok(VersionVector::from_sorted_entries(entries))
    }
}

impl SiblingSet {
    /// Appends the binary encoding (format [`FORMAT_VERSION`], described in
    /// the `codec` module docs) to `out`. The first byte written is always
    /// [`FORMAT_VERSION`], so stored records can be migrated later.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(FORMAT_VERSION);
        self.context().encode_entries(out);
        write_varint(out, self.siblings().len() as u64);
        for s in self.siblings() {
            write_varint(out, s.dot.node);
            write_varint(out, s.dot.counter);
            write_varint(out, s.written_at_ms);
            let mut flags = 0;
            if s.tombstone {
                flags |= FLAG_TOMBSTONE;
            }
            if s.expires_at_ms.is_some() {
                flags |= FLAG_HAS_EXPIRY;
            }
            out.push(flags);
            if let Some(exp) = s.expires_at_ms {
                write_varint(out, exp);
            }
            write_varint(out, s.value.len() as u64);
            out.extend_from_slice(&s.value);
        }
    }

    /// Convenience wrapper around [`SiblingSet::encode`] returning a fresh
    /// buffer of exactly the right capacity.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Exact number of bytes [`SiblingSet::encode`] appends, so callers can
    /// size buffers or account storage without encoding.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        1 + self.context().encoded_entries_len()
            + varint_len(self.siblings().len() as u64)
            + self
                .siblings()
                .iter()
                .map(|s| {
                    varint_len(s.dot.node)
                        + varint_len(s.dot.counter)
                        + varint_len(s.written_at_ms)
                        + 1
                        + s.expires_at_ms.map_or(0, varint_len)
                        + varint_len(s.value.len() as u64)
                        + s.value.len()
                })
                .sum::<usize>()
    }

    /// Decodes a set written by [`SiblingSet::encode`], copying values out of
    /// `bytes`.
    ///
    /// Strict and bounded: unknown versions, truncation, trailing bytes,
    /// non-minimal varints, unsorted or duplicate nodes/dots, zero counters,
    /// dots not covered by the context, unknown flag bits and tombstones with
    /// values are all errors; counts are checked against the remaining input
    /// before allocating. Never panics, whatever the input.
    ///
    /// # Errors
    ///
    /// Returns the [`DecodeError`] naming the first rule the input breaks.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with(bytes, |range| Bytes::copy_from_slice(&bytes[range]))
    }

    /// Like [`SiblingSet::decode`], but values are zero-copy slices of `buf`
    /// (useful when the record was read into a shared `Bytes` buffer).
    ///
    /// # Errors
    ///
    /// Exactly as [`SiblingSet::decode`].
    pub fn decode_shared(buf: &Bytes) -> Result<Self, DecodeError> {
        decode_with(buf, |range| buf.slice(range))
    }
}

/// One sibling's fields as encoded, its value given as a range of the input.
struct Header {
    dot: Dot,
    written_at_ms: u64,
    expires_at_ms: Option<u64>,
    tombstone: bool,
    value: std::ops::Range<usize>,
}

/// Reads one sibling and checks every rule that does not need the context: counter,
/// order after `prev`, flags, tombstone without value, length in bounds.
fn sibling(r: &mut Reader<'_>, prev: &mut Option<Dot>) -> Result<Header, DecodeError> {
    let dot = Dot {
        node: r.varint()?,
        counter: r.varint()?,
    };
    if dot.counter == 0 {
        return Err(DecodeError::ZeroCounter);
    }
    if prev.is_some_and(|p| p >= dot) {
        return Err(DecodeError::UnsortedDots);
    }
    *prev = Some(dot);
    let written_at_ms = r.varint()?;
    let flags = r.u8()?;
    if flags & !(FLAG_TOMBSTONE | FLAG_HAS_EXPIRY) != 0 {
        return Err(DecodeError::InvalidFlags(flags));
    }
    let tombstone = flags & FLAG_TOMBSTONE != 0;
    let expires_at_ms = if flags & FLAG_HAS_EXPIRY != 0 {
        Some(r.varint()?)
    } else {
        None
    };
    let len = r.varint()?;
    if tombstone && len != 0 {
        return Err(DecodeError::TombstoneWithValue);
    }
    let value = r.take(len)?;
    Ok(Header {
        dot,
        written_at_ms,
        expires_at_ms,
        tombstone,
        value,
    })
}

/// Reads the version byte.
fn version(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    let version = r.u8().map_err(|_| DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    Ok(())
}

/// Shared decoder; `value` turns a validated in-bounds byte range of the
/// input into an owned value.
fn decode_with(bytes: &[u8], value: impl Fn(std::ops::Range<usize>) -> Bytes) -> Result<SiblingSet, DecodeError> {
    let mut r = Reader::new(bytes);
    version(&mut r)?;
    let context = VersionVector::decode_entries(&mut r)?;
    let count = r.count(MIN_SIBLING_BYTES)?;
    let mut siblings = Vec::with_capacity(count);
    let mut prev: Option<Dot> = None;
    for _ in 0..count {
        let h = sibling(&mut r, &mut prev)?;
        if !context.covers(h.dot) {
            return Err(DecodeError::DotNotCovered);
        }
        siblings.push(Sibling {
            dot: h.dot,
            written_at_ms: h.written_at_ms,
            expires_at_ms: h.expires_at_ms,
            tombstone: h.tombstone,
            value: value(h.value),
        });
    }
    r.finish()?;
    Ok(SiblingSet::from_validated_parts(context, siblings))
}

/// Context entries [`skim_winner`] keeps on the stack; a larger context takes the full decode.
const SKIM_CONTEXT: usize = 16;

/// What a plain read needs of an encoded set, without building it: the
/// [`SiblingSet::winner`] at `now_ms` (its value copied out, nothing else) and how many
/// siblings are live. Accepts and rejects exactly the inputs [`SiblingSet::decode`] does.
///
/// # Errors
///
/// As [`SiblingSet::decode`].
pub fn skim_winner(bytes: &[u8], now_ms: u64) -> Result<(Option<Sibling>, usize), DecodeError> {
    let mut r = Reader::new(bytes);
    version(&mut r)?;
    let entries = r.count(MIN_ENTRY_BYTES)?;
    if entries > SKIM_CONTEXT {
        let set = SiblingSet::decode(bytes)?;
        let live = set.live(now_ms).count();
        return Ok((set.into_winner(now_ms), live));
    }
    let mut context = [(0u64, 0u64); SKIM_CONTEXT];
    for i in 0..entries {
        let node = r.varint()?;
        let counter = r.varint()?;
        if counter == 0 {
            return Err(DecodeError::ZeroCounter);
        }
        if i > 0 && context[i - 1].0 >= node {
            return Err(DecodeError::UnsortedNodes);
        }
        context[i] = (node, counter);
    }
    let context = &context[..entries];
    let count = r.count(MIN_SIBLING_BYTES)?;
    let mut prev: Option<Dot> = None;
    let mut best: Option<Header> = None;
    let mut live = 0;
    for _ in 0..count {
        let h = sibling(&mut r, &mut prev)?;
        let covered = context
            .iter()
            .any(|&(node, counter)| node == h.dot.node && h.dot.counter <= counter);
        if !covered {
            return Err(DecodeError::DotNotCovered);
        }
        if !h.tombstone && h.expires_at_ms.is_none_or(|exp| exp > now_ms) {
            live += 1;
            if best
                .as_ref()
                .is_none_or(|b| (h.written_at_ms, h.dot) > (b.written_at_ms, b.dot))
            {
                best = Some(h);
            }
        }
    }
    r.finish()?;
    let winner = best.map(|h| Sibling {
        dot: h.dot,
        written_at_ms: h.written_at_ms,
        expires_at_ms: h.expires_at_ms,
        tombstone: false,
        value: Bytes::copy_from_slice(&bytes[h.value]),
    });
    Ok((winner, live))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::NewSibling;

    fn varint_bytes(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, v);
        out
    }

    fn sample() -> SiblingSet {
        let mut s = SiblingSet::new();
        let empty = VersionVector::new();
        s.write(
            &empty,
            1,
            0,
            NewSibling {
                value: Bytes::from_static(b"hello"),
                written_at_ms: 1_700_000_000_000,
                expires_at_ms: Some(1_700_000_060_000),
                tombstone: false,
            },
        );
        s.write(
            &empty,
            u64::MAX,
            1_700_000_000_000_000,
            NewSibling {
                value: Bytes::new(),
                written_at_ms: 5,
                expires_at_ms: None,
                tombstone: true,
            },
        );
        s
    }

    #[test]
    fn varint_roundtrip_and_len() {
        for v in [0, 1, 127, 128, 300, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let b = varint_bytes(v);
            assert_eq!(b.len(), varint_len(v), "len of {v}");
            let mut r = Reader::new(&b);
            assert_eq!(r.varint(), Ok(v));
            assert_eq!(r.finish(), Ok(()));
        }
    }

    /// The plain byte-at-a-time decoder the fast one must agree with.
    fn reference_varint(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
        let mut result = 0u64;
        for i in 0..10usize {
            let b = *buf.get(i).ok_or(DecodeError::Truncated)?;
            if i == 9 && b > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            result |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::NonCanonicalVarint);
                }
                return Ok((result, i + 1));
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    proptest::proptest! {
        #[test]
        fn varint_matches_reference_decoder(bytes in proptest::collection::vec(proptest::prop_oneof![proptest::prelude::any::<u8>(), proptest::sample::select(vec![0u8, 1, 2, 0x7f, 0x80, 0x81, 0xff])], 0..14), v in proptest::prelude::any::<u64>(), shift in 0u32..64, tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10)) {
            // Arbitrary bytes (mostly invalid or short), and valid encodings of values of
            // every length followed by arbitrary bytes.
            let mut valid = varint_bytes(v >> shift);
            valid.extend_from_slice(&tail);
            for buf in [&bytes[..], &valid[..]] {
                let mut r = Reader::new(buf);
                let got = r.varint().map(|v| (v, r.pos));
                proptest::prop_assert_eq!(got, reference_varint(buf));
            }
            let mut r = Reader::new(&valid);
            proptest::prop_assert_eq!(r.varint(), Ok(v >> shift));
        }
    }

    #[test]
    fn varint_rejects_overflow_and_overlong() {
        let mut r = Reader::new(&[0xff; 10]);
        assert_eq!(r.varint(), Err(DecodeError::VarintOverflow));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(r.varint(), Err(DecodeError::VarintOverflow));
        let mut r = Reader::new(&[0x80, 0x00]);
        assert_eq!(r.varint(), Err(DecodeError::NonCanonicalVarint));
        let mut r = Reader::new(&[0x80]);
        assert_eq!(r.varint(), Err(DecodeError::Truncated));
        // Nine- and ten-byte values, whose first eight bytes all carry on.
        let mut nine_zero = vec![0x80; 8];
        nine_zero.push(0);
        assert_eq!(Reader::new(&nine_zero).varint(), Err(DecodeError::NonCanonicalVarint));
        let mut ten_zero = vec![0x80; 9];
        ten_zero.push(0);
        assert_eq!(Reader::new(&ten_zero).varint(), Err(DecodeError::NonCanonicalVarint));
        assert_eq!(Reader::new(&[0x80; 9]).varint(), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&[0x80; 8]).varint(), Err(DecodeError::Truncated));
    }

    #[test]
    fn first_byte_is_format_version() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(SiblingSet::new().to_bytes(), vec![FORMAT_VERSION, 0, 0]);
    }

    #[test]
    fn roundtrip_and_encoded_len() {
        let s = sample();
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), s.encoded_len());
        assert_eq!(SiblingSet::decode(&bytes), Ok(s.clone()));
        assert_eq!(SiblingSet::decode_shared(&Bytes::from(bytes)), Ok(s));
    }

    #[test]
    fn rejects_unknown_version_and_empty() {
        assert_eq!(SiblingSet::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(SiblingSet::decode(&[2, 0, 0]), Err(DecodeError::UnsupportedVersion(2)));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = sample().to_bytes();
        bytes.push(0);
        assert_eq!(SiblingSet::decode(&bytes), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn every_truncation_fails() {
        let bytes = sample().to_bytes();
        for n in 0..bytes.len() {
            assert!(SiblingSet::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn rejects_huge_counts_without_allocating() {
        // Context count of u64::MAX.
        let mut b = vec![FORMAT_VERSION];
        write_varint(&mut b, u64::MAX);
        assert_eq!(
            SiblingSet::decode(&b),
            Err(DecodeError::CountTooLarge { count: u64::MAX })
        );
        // Sibling count far beyond the input.
        let b = vec![FORMAT_VERSION, 0, 0x80, 0x80, 0x04];
        assert!(matches!(SiblingSet::decode(&b), Err(DecodeError::CountTooLarge { .. })));
        // Value length far beyond the input.
        let mut b = vec![FORMAT_VERSION, 1, 1, 1, 1, 1, 1, 0, 0];
        write_varint(&mut b, u64::MAX);
        assert_eq!(
            SiblingSet::decode(&b),
            Err(DecodeError::LengthTooLarge { len: u64::MAX })
        );
    }

    #[test]
    fn rejects_structural_violations() {
        // ctx {1:1, 1:2} duplicate node.
        assert_eq!(
            SiblingSet::decode(&[1, 2, 1, 1, 1, 2, 0]),
            Err(DecodeError::UnsortedNodes)
        );
        // ctx {2:1, 1:1} unsorted.
        assert_eq!(
            SiblingSet::decode(&[1, 2, 2, 1, 1, 1, 0]),
            Err(DecodeError::UnsortedNodes)
        );
        // ctx {1:0}.
        assert_eq!(SiblingSet::decode(&[1, 1, 1, 0, 0]), Err(DecodeError::ZeroCounter));
        // Sibling (1,0).
        assert_eq!(
            SiblingSet::decode(&[1, 1, 1, 1, 1, 1, 0, 7, 0, 0]),
            Err(DecodeError::ZeroCounter)
        );
        // Sibling (1,2) not covered by ctx {1:1}.
        assert_eq!(
            SiblingSet::decode(&[1, 1, 1, 1, 1, 1, 2, 7, 0, 0]),
            Err(DecodeError::DotNotCovered)
        );
        // Two siblings with the same dot (1,1).
        assert_eq!(
            SiblingSet::decode(&[1, 1, 1, 2, 2, 1, 1, 7, 0, 0, 1, 1, 7, 0, 0]),
            Err(DecodeError::UnsortedDots)
        );
        // Siblings out of order: (1,2) then (1,1).
        assert_eq!(
            SiblingSet::decode(&[1, 1, 1, 2, 2, 1, 2, 7, 0, 0, 1, 1, 7, 0, 0]),
            Err(DecodeError::UnsortedDots)
        );
        // Unknown flag bit.
        assert_eq!(
            SiblingSet::decode(&[1, 1, 1, 1, 1, 1, 1, 7, 4, 0]),
            Err(DecodeError::InvalidFlags(4))
        );
        // Tombstone with a value.
        assert_eq!(
            SiblingSet::decode(&[1, 1, 1, 1, 1, 1, 1, 7, 1, 1, b'x']),
            Err(DecodeError::TombstoneWithValue)
        );
        // The well-formed neighbour of the cases above decodes.
        let ok = SiblingSet::decode(&[1, 1, 1, 1, 1, 1, 1, 7, 2, 9, 1, b'x']);
        let ok = ok.expect("valid encoding");
        assert_eq!(ok.siblings()[0].expires_at_ms, Some(9));
        assert_eq!(ok.siblings()[0].value, Bytes::from_static(b"x"));
    }

    #[test]
    fn error_display_is_readable() {
        assert_eq!(DecodeError::Truncated.to_string(), "truncated input");
        assert_eq!(
            DecodeError::UnsupportedVersion(9).to_string(),
            "unsupported format version 9"
        );
    }
}
