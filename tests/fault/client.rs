//! A client connection that never panics and never hangs: every call returns what
//! happened, distinguishing a request that was never sent (certainly not applied) from
//! one whose fate is unknown (sent, then a timeout or a broken connection).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{Raw, Resp, encode};

/// What one request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A reply that is not an error.
    Ok(Resp),
    /// An error reply (the write may still have reached some replica).
    Err(String),
    /// Sent, but no reply in time or the connection broke: may or may not be applied.
    Unknown(String),
    /// Not sent (connection failed): certainly not applied.
    NotSent(String),
}

/// A lazily (re)connected client with short timeouts.
pub struct Conn {
    addr: SocketAddr,
    timeout: Duration,
    raw: Option<Raw>,
}

impl Conn {
    /// A client of `addr` whose reads, writes and connects give up after `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Conn {
        Conn {
            addr,
            timeout,
            raw: None,
        }
    }

    fn connect(&mut self) -> Result<&mut Raw, String> {
        if self.raw.is_none() {
            // Probe with our own deadline first: Raw's connect waits 5 s on a dropped SYN.
            TcpStream::connect_timeout(&self.addr, self.timeout.min(Duration::from_secs(1)))
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            let mut raw = Raw::try_connect(self.addr).map_err(|e| format!("connect {}: {e}", self.addr))?;
            raw.set_timeout(self.timeout);
            self.raw = Some(raw);
        }
        Ok(self.raw.as_mut().expect("connected"))
    }

    /// Sends one request and reads its reply; after an unknown outcome the connection is
    /// dropped (a late reply must not be taken for the next request's).
    pub fn call(&mut self, args: &[&[u8]]) -> Reply {
        let raw = match self.connect() {
            Ok(r) => r,
            Err(e) => return Reply::NotSent(e),
        };
        // After an unknown outcome the connection is reset, not closed (see `Raw::abort`).
        if let Err(e) = raw.send(&encode(args)) {
            if let Some(r) = self.raw.take() {
                r.abort();
            }
            return Reply::Unknown(format!("send: {e}"));
        }
        match raw.read_reply() {
            Ok(Resp::Error(e)) => Reply::Err(e),
            Ok(r) => Reply::Ok(r),
            Err(e) => {
                if let Some(r) = self.raw.take() {
                    r.abort();
                }
                Reply::Unknown(format!("read: {e}"))
            }
        }
    }
}

/// A SIBLINGS-shaped reply (`[context, [values...]]`) as (context, values); `None` for nil.
pub fn sibling_set(r: &Resp) -> Result<Option<(String, Vec<String>)>, String> {
    match r {
        Resp::Nil => Ok(None),
        Resp::Array(v) if v.len() == 2 => {
            let ctx = match &v[0] {
                Resp::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                Resp::Simple(s) => s.clone(),
                other => return Err(format!("context is not a string: {other:?}")),
            };
            let Resp::Array(vals) = &v[1] else {
                return Err(format!("values are not an array: {:?}", v[1]));
            };
            let mut out = Vec::new();
            for val in vals {
                match val {
                    Resp::Bulk(b) => out.push(String::from_utf8_lossy(b).into_owned()),
                    other => return Err(format!("value is not a bulk string: {other:?}")),
                }
            }
            Ok(Some((ctx, out)))
        }
        other => Err(format!("not a sibling set: {other:?}")),
    }
}
