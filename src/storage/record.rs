//! The byte format of one stored record: a format version, flags, the full user key when
//! the LMDB key holds only its digest, then the sibling set. Must not touch LMDB.

use bytes::Bytes;

use crate::error::StoreError;
use crate::version::{Sibling, SiblingSet};

/// Version of the record envelope; bump when the layout changes, keep reading old ones.
pub const RECORD_FORMAT: u8 = 1;
const FLAG_FULL_KEY: u8 = 1;

/// Encodes a record; `full_key` is given only for keys stored under a digest.
pub fn encode(full_key: Option<&[u8]>, set: &SiblingSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(RECORD_FORMAT);
    match full_key {
        Some(k) => {
            out.push(FLAG_FULL_KEY);
            out.extend_from_slice(&(k.len() as u64).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.push(0),
    }
    set.encode(&mut out);
    out
}

/// Decodes a record into its full key (when stored) and sibling set.
pub fn decode(bytes: &[u8]) -> Result<(Option<Bytes>, SiblingSet), StoreError> {
    let (key, rest) = envelope(bytes)?;
    let set = SiblingSet::decode(rest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((key.map(Bytes::copy_from_slice), set))
}

/// A record's live winner and live sibling count at `now_ms`, without building its set
/// (see [`crate::version::skim_winner`]).
pub fn skim(bytes: &[u8], now_ms: u64) -> Result<(Option<Sibling>, usize), StoreError> {
    let (_, rest) = envelope(bytes)?;
    crate::version::skim_winner(rest, now_ms).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Splits a record into its full key (when stored) and the encoded sibling set.
fn envelope(bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), StoreError> {
    let corrupt = |m: &str| StoreError::Corrupt(m.to_string());
    let (&format, rest) = bytes.split_first().ok_or_else(|| corrupt("empty record"))?;
    if format != RECORD_FORMAT {
        return Err(corrupt("unknown record format"));
    }
    let (&flags, mut rest) = rest.split_first().ok_or_else(|| corrupt("truncated flags"))?;
    let mut key = None;
    if flags & FLAG_FULL_KEY != 0 {
        if rest.len() < 8 {
            return Err(corrupt("truncated key length"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&rest[..8]);
        let len = u64::from_le_bytes(len) as usize;
        rest = &rest[8..];
        if rest.len() < len {
            return Err(corrupt("truncated key"));
        }
        key = Some(&rest[..len]);
        rest = &rest[len..];
    }
    Ok((key, rest))
}
