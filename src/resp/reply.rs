//! Replies, and their encoding as RESP2 or RESP3: the hot forms by hand, the rest with the
//! `redis-protocol` crate. Must not know commands: handlers build a [`Reply`], the
//! connection encodes it for its protocol.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::{BytesFrame as Frame3, FrameMap, FrameSet, VerbatimStringFormat};

/// A reply, independent of the protocol version it will be encoded in.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A status line such as `PONG`.
    Status(Bytes),
    /// An error; the text starts with its code (`ERR`, `WRONGTYPE`, `NOAUTH`, ...).
    Error(String),
    /// An integer.
    Int(i64),
    /// A bulk (binary) string.
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// An array.
    Array(Vec<Reply>),
    /// A map: RESP3 `%`, a flat array of alternating keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A set: RESP3 `~`, an array in RESP2.
    Set(Vec<Reply>),
    /// A double: RESP3 `,`, a bulk string in RESP2.
    Double(f64),
    /// Text for people (INFO, CLIENT INFO): RESP3 verbatim `txt`, a bulk string in RESP2.
    Text(String),
    /// A reply already encoded by the node that ran the command (a forwarded request),
    /// in this connection's protocol version.
    Raw(Bytes),
}

impl Reply {
    /// An error reply from text that already carries its code.
    pub fn err(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    /// A bulk reply from anything byte-like.
    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    /// A status reply from a static string.
    pub fn status(s: &'static str) -> Reply {
        Reply::Status(Bytes::from_static(s.as_bytes()))
    }

    /// A bulk reply, or nil.
    pub fn opt_bulk(b: Option<Bytes>) -> Reply {
        b.map(Reply::Bulk).unwrap_or(Reply::Nil)
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_)) || matches!(self, Reply::Raw(b) if b.first() == Some(&b'-'))
    }

    /// Reads a RESP2 reply that a peer encoded (a forwarded sub-request), so that it can
    /// be combined with others. Peers are authenticated, but a malformed reply is still
    /// an error reply, never a panic.
    pub fn from_resp2(bytes: &Bytes) -> Reply {
        match redis_protocol::resp2::decode::decode_bytes(bytes) {
            Ok(Some((frame, _))) => from_frame2(frame),
            _ => Reply::err("ERR malformed reply from a peer"),
        }
    }

    /// Appends the encoding of this reply for protocol version `proto` (2 or 3).
    ///
    /// The replies of the hot commands (`+OK`, a bulk string, an integer, nil) are
    /// written here directly: the crate's encoder measures the frame with a `log10` per
    /// number and zero-fills before writing, which cost more than the GET that produced
    /// the reply. Everything else goes through the crate, and a property test holds the
    /// direct forms to the crate's bytes.
    pub fn encode(&self, proto: u8, out: &mut BytesMut) {
        match self {
            Reply::Raw(b) => return out.extend_from_slice(b),
            Reply::Ok => return out.extend_from_slice(b"+OK\r\n"),
            Reply::Bulk(b) => {
                put_line(out, b'$', b.len() as i64);
                out.extend_from_slice(b);
                return out.extend_from_slice(b"\r\n");
            }
            Reply::Int(i) => return put_line(out, b':', *i),
            Reply::Nil if proto >= 3 => return out.extend_from_slice(b"_\r\n"),
            Reply::Nil => return out.extend_from_slice(b"$-1\r\n"),
            _ => {}
        }
        // Encoding an in-memory frame into a growable buffer cannot fail; a failure would
        // be a bug in the frame we built, so it is logged and the connection gets an error.
        let res = if proto >= 3 {
            redis_protocol::resp3::encode::complete::extend_encode(out, &self.to_resp3(), false).map(|_| ())
        } else {
            redis_protocol::resp2::encode::extend_encode(out, &self.to_resp2(), false).map(|_| ())
        };
        if let Err(e) = res {
            tracing::error!("reply encoding failed: {e:?}");
            out.extend_from_slice(b"-ERR internal error encoding reply\r\n");
        }
    }

    fn to_resp2(&self) -> Frame2 {
        match self {
            Reply::Ok => Frame2::SimpleString(Bytes::from_static(b"OK")),
            Reply::Status(s) => Frame2::SimpleString(s.clone()),
            Reply::Error(e) => Frame2::Error(clean_line(e).into()),
            Reply::Int(i) => Frame2::Integer(*i),
            Reply::Bulk(b) => Frame2::BulkString(b.clone()),
            Reply::Nil => Frame2::Null,
            Reply::Array(v) | Reply::Set(v) => Frame2::Array(v.iter().map(Reply::to_resp2).collect()),
            Reply::Map(kv) => Frame2::Array(kv.iter().flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()]).collect()),
            Reply::Double(d) => Frame2::BulkString(Bytes::from(format_double(*d))),
            Reply::Text(t) => Frame2::BulkString(Bytes::from(t.clone())),
            Reply::Raw(_) => Frame2::Null,
        }
    }

    fn to_resp3(&self) -> Frame3 {
        match self {
            Reply::Ok => Frame3::SimpleString {
                data: Bytes::from_static(b"OK"),
                attributes: None,
            },
            Reply::Status(s) => Frame3::SimpleString {
                data: s.clone(),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: clean_line(e).into(),
                attributes: None,
            },
            Reply::Int(i) => Frame3::Number {
                data: *i,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Reply::Nil => Frame3::Null,
            Reply::Array(v) => Frame3::Array {
                data: v.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
            Reply::Set(v) => {
                let mut data = FrameSet::default();
                for r in v {
                    data.insert(r.to_resp3());
                }
                Frame3::Set { data, attributes: None }
            }
            Reply::Map(kv) => {
                let mut data = FrameMap::default();
                for (k, v) in kv {
                    data.insert(k.to_resp3(), v.to_resp3());
                }
                Frame3::Map { data, attributes: None }
            }
            Reply::Double(d) => Frame3::Double {
                data: *d,
                attributes: None,
            },
            Reply::Text(t) => Frame3::VerbatimString {
                data: Bytes::from(t.clone()),
                format: VerbatimStringFormat::Text,
                attributes: None,
            },
            Reply::Raw(_) => Frame3::Null,
        }
    }
}

/// Appends `kind`, the decimal form of `n`, and CRLF.
fn put_line(out: &mut BytesMut, kind: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.reserve(24);
    out.extend_from_slice(&[kind]);
    if n < 0 {
        out.extend_from_slice(b"-");
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

fn from_frame2(f: Frame2) -> Reply {
    match f {
        Frame2::SimpleString(s) if &s[..] == b"OK" => Reply::Ok,
        Frame2::SimpleString(s) => Reply::Status(s),
        Frame2::Error(e) => Reply::Error(e.to_string()),
        Frame2::Integer(i) => Reply::Int(i),
        Frame2::BulkString(b) => Reply::Bulk(b),
        Frame2::Array(v) => Reply::Array(v.into_iter().map(from_frame2).collect()),
        Frame2::Null => Reply::Nil,
    }
}

/// Error and status lines may not hold CR or LF; Redis replaces them with spaces.
fn clean_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Formats a double the way Redis prints one (`inf`, `-inf`, shortest round-trip form).
pub fn format_double(d: f64) -> String {
    if d.is_infinite() {
        if d > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{d}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: Reply, proto: u8) -> Vec<u8> {
        let mut b = BytesMut::new();
        r.encode(proto, &mut b);
        b.to_vec()
    }

    #[test]
    fn resp2_bytes() {
        assert_eq!(enc(Reply::Ok, 2), b"+OK\r\n");
        assert_eq!(enc(Reply::Nil, 2), b"$-1\r\n");
        assert_eq!(enc(Reply::Int(-3), 2), b":-3\r\n");
        assert_eq!(enc(Reply::bulk(&b"a\0b"[..]), 2), b"$3\r\na\0b\r\n");
        assert_eq!(enc(Reply::err("ERR x\r\ny"), 2), b"-ERR x  y\r\n");
        assert_eq!(
            enc(Reply::Map(vec![(Reply::bulk("k"), Reply::Int(1))]), 2),
            b"*2\r\n$1\r\nk\r\n:1\r\n"
        );
    }

    /// The crate's encoding of `r`, the reference for the replies written directly.
    fn by_crate(r: &Reply, proto: u8) -> Vec<u8> {
        let mut b = BytesMut::new();
        if proto >= 3 {
            redis_protocol::resp3::encode::complete::extend_encode(&mut b, &r.to_resp3(), false).unwrap();
        } else {
            redis_protocol::resp2::encode::extend_encode(&mut b, &r.to_resp2(), false).unwrap();
        }
        b.to_vec()
    }

    #[test]
    fn direct_forms_match_the_crate_at_the_edges() {
        for i in [0, 1, -1, 9, 10, -10, 99, 100, i64::MAX, i64::MIN, i64::MIN + 1] {
            for proto in [2, 3] {
                assert_eq!(enc(Reply::Int(i), proto), by_crate(&Reply::Int(i), proto), "{i}");
            }
        }
        for r in [Reply::Ok, Reply::Nil, Reply::bulk(""), Reply::bulk(vec![b'x'; 10_000])] {
            for proto in [2, 3] {
                assert_eq!(enc(r.clone(), proto), by_crate(&r, proto), "{r:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn direct_forms_match_the_crate(
            i in proptest::prelude::any::<i64>(),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            proto in 2u8..4,
        ) {
            for r in [Reply::Int(i), Reply::bulk(b.clone()), Reply::Ok, Reply::Nil] {
                proptest::prop_assert_eq!(enc(r.clone(), proto), by_crate(&r, proto));
            }
        }
    }

    #[test]
    fn resp3_bytes() {
        assert_eq!(enc(Reply::Nil, 3), b"_\r\n");
        assert_eq!(
            enc(Reply::Map(vec![(Reply::bulk("k"), Reply::Int(1))]), 3),
            b"%1\r\n$1\r\nk\r\n:1\r\n"
        );
        assert_eq!(enc(Reply::Double(1.5), 3), b",1.5\r\n");
    }
}
