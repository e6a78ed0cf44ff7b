//! The messages nodes send each other over the internode transport, and their encoding
//! (postcard over serde; sibling sets travel in their own stored byte format). Must not
//! act on messages: the coordinator's RPC handler does.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::MemberInfo;
use super::membership::MemberRecord;

/// Version of the message set; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u8 = 2;

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Read this replica's sibling set of a key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Merge this sibling set (encoded) into the replica's copy of the key, durably.
    Put {
        /// The key.
        key: Bytes,
        /// The encoded sibling set.
        set: Bytes,
        /// Set when the receiver is a fallback: the home replica it holds the copy for
        /// (sloppy quorum), to hand it back when that node answers again.
        hint_for: Option<u64>,
    },
    /// Are you there? (failure detection)
    Ping,
    /// Run a client command here as its coordinator and return the encoded reply.
    Forward {
        /// The client's protocol version (2 or 3), for the reply's encoding.
        proto: u8,
        /// The command and its arguments.
        args: Vec<Bytes>,
        /// Wall-clock time (ms) after which the sender has given up and told its client
        /// so: a forward that arrives later (a frame TCP retransmitted after a partition
        /// healed) must not run, or a write the client saw fail would land after the
        /// client's later writes.
        deadline_ms: u64,
    },
    /// Gossip: the sender's member table; the receiver merges it and answers with its
    /// own ([`Response::Members`]). A node asks to join by sending its own record.
    Gossip {
        /// The sender's records.
        records: Vec<MemberRecord>,
    },
    /// Scan local records from position `cursor` up to (not including) `end`.
    Scan {
        /// Start position (see the storage key layout).
        cursor: u64,
        /// End position, exclusive; 0 means the end of the key space.
        end: u64,
        /// Most records to examine.
        count: u32,
    },
    /// Scan local records of these partitions (ascending) from position `cursor` on;
    /// answered with [`Response::Scan`], whose `next` is 0 once all are done.
    ScanParts {
        /// The partitions, ascending.
        partitions: Vec<u16>,
        /// Start position (0: the first partition's start).
        cursor: u64,
        /// Most records to return.
        count: u32,
    },
    /// Count live keys in these partitions.
    Count {
        /// The partitions.
        partitions: Vec<u16>,
    },
    /// Remove every key of this node, and never store again a sibling written before
    /// `before_ms` (the FLUSHALL's time, the same for every node).
    Flush {
        /// Ms since the Unix epoch.
        before_ms: u64,
    },
    /// Anti-entropy, descending from the top: the sender's hashes of some groups of
    /// `size` consecutive partitions (group `i` holds partitions `i*size ..`), each the
    /// XOR of its roots of the shared partitions in the group; the receiver answers with
    /// the indices whose hash differs from its own ([`Response::Differ`]).
    AeGroups {
        /// The sender's membership fingerprint and N: the receiver refuses the exchange
        /// when its own differ (the two would disagree on which partitions they share).
        view: (u64, u8),
        /// Bitmap of the partitions both nodes replicate (bit `p` = partition `p`).
        partitions: Vec<u8>,
        /// Partitions per group (a power of two; 1 compares partition roots).
        size: u16,
        /// (group index, hash) pairs.
        groups: Vec<(u16, u128)>,
    },
    /// Anti-entropy: the receiver's non-zero tree leaves of these partitions.
    AeLeaves {
        /// The partitions.
        partitions: Vec<u16>,
    },
    /// Anti-entropy: the receiver's records in these tree leaves, as (LMDB key, hash).
    AeKeys {
        /// (partition, leaf) pairs.
        leaves: Vec<(u16, u8)>,
    },
    /// Anti-entropy: the receiver's records under these LMDB keys.
    AeFetch {
        /// LMDB keys, as [`Response::KeyHashes`] named them.
        keys: Vec<Bytes>,
    },
    /// Anti-entropy: merge these (key, encoded sibling set) into the receiver's copies.
    AeMerge {
        /// The records.
        items: Vec<(Bytes, Bytes)>,
    },
    /// Tombstone reaping, first step: for each key, the hash of the receiver's record and
    /// whether the receiver holds a hint for it.
    ReapCheck {
        /// The sender's membership fingerprint and N (refused when they differ here).
        view: (u64, u8),
        /// User keys.
        keys: Vec<Bytes>,
    },
    /// Tombstone reaping, second step: remove each key whose record still has this hash.
    Reap {
        /// (user key, record hash) pairs.
        items: Vec<(Bytes, u128)>,
    },
}

/// A reply to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A replica's sibling set (encoded), or none.
    Set(Option<Bytes>),
    /// Done, durably.
    Ack,
    /// The request failed on the peer.
    Error(String),
    /// An encoded RESP reply to a forwarded command.
    Reply(Bytes),
    /// A member table.
    Members(Vec<MemberRecord>),
    /// Scanned records (key, encoded set) and the position to resume from.
    Scan {
        /// Resume position; equal to the request's `end` (or 0) when the range is done.
        next: u64,
        /// Records.
        items: Vec<(Bytes, Bytes)>,
    },
    /// Live keys, and how many of them have an expiry.
    Count(u64, u64),
    /// Anti-entropy: the indices of the groups whose hash differs.
    Differ(Vec<u16>),
    /// Anti-entropy: non-zero leaves as (partition, leaf, hash).
    Leaves(Vec<(u16, u8, u128)>),
    /// Anti-entropy: records as (LMDB key, hash).
    KeyHashes(Vec<(Bytes, u128)>),
    /// Anti-entropy: the records of a fetch, in request order, for a prefix of the keys
    /// asked (the sender stops early to bound the message); `None` for a key it lacks.
    Records(Vec<Option<(Bytes, Bytes)>>),
    /// Reaping: per key, the receiver's record hash (if any) and whether it holds a hint.
    ReapState(Vec<(Option<u128>, bool)>),
}

/// A message that could not be decoded.
#[derive(Debug, Error)]
#[error("bad internode message: {0}")]
pub struct MessageError(String);

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    // Serializing these plain enums into a Vec cannot fail; an empty message would be
    // refused by the peer as undecodable, which is the right outcome for a bug.
    Bytes::from(postcard::to_stdvec(msg).unwrap_or_default())
}

/// Decodes a message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, MessageError> {
    postcard::from_bytes(bytes).map_err(|e| MessageError(e.to_string()))
}

/// The identity a node presents in the internode handshake: protocol version and its
/// member information.
pub fn encode_identity(me: &MemberInfo) -> Bytes {
    let mut out = vec![PROTOCOL_VERSION];
    out.extend_from_slice(&encode(me));
    Bytes::from(out)
}

/// Reads a peer's handshake identity.
pub fn decode_identity(bytes: &[u8]) -> Result<MemberInfo, MessageError> {
    match bytes.split_first() {
        Some((&PROTOCOL_VERSION, rest)) => decode(rest),
        Some((v, _)) => Err(MessageError(format!(
            "protocol version {v}, expected {PROTOCOL_VERSION}"
        ))),
        None => Err(MessageError("empty identity".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let reqs = vec![
            Request::Get { key: Bytes::from("k") },
            Request::Put {
                key: Bytes::from("k"),
                set: Bytes::from_static(b"\x01\x00"),
                hint_for: Some(9),
            },
            Request::Ping,
            Request::Forward {
                proto: 3,
                args: vec![Bytes::from("GET"), Bytes::from("k")],
                deadline_ms: 1,
            },
            Request::Scan {
                cursor: 5,
                end: 0,
                count: 10,
            },
        ];
        for r in reqs {
            let b = encode(&r);
            assert_eq!(decode::<Request>(&b).expect("decode"), r);
        }
        let me = MemberInfo {
            id: 7,
            client_addr: "127.0.0.1:7001".into(),
            cluster_addr: "127.0.0.1:17001".into(),
            weight: 2.0,
        };
        assert_eq!(decode_identity(&encode_identity(&me)).expect("identity"), me);
    }

    #[test]
    fn garbage_is_an_error() {
        for g in [&b""[..], b"\xff\xff\xff", b"\x09"] {
            assert!(decode::<Request>(g).is_err());
        }
        assert!(decode_identity(b"\x02abc").is_err());
    }
}
