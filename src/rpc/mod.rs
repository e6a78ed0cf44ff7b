//! Internode RPC transport: persistent, multiplexed, authenticated TCP connections carrying opaque payloads.
//!
//! Every node listens on its internode port with [`serve`]; every node talks to its peers through a [`Pool`], which
//! keeps one persistent connection per peer address and multiplexes any number of concurrent calls over it.
//! Requests and responses are opaque [`Bytes`]: the layer above encodes its own messages.
//!
//! # Wire format
//!
//! All integers are little-endian. A connection starts with a mutual challenge-response handshake that proves both
//! ends know the shared cluster secret without sending it:
//!
//! 1. client → server: `"DYNKV" 0x01` (6-byte magic + version) `| client nonce (32 random bytes)`
//! 2. server → client: `"DYNKV" 0x01 | server nonce (32 random bytes)`
//! 3. client → server: `u32 identity length | client identity | client proof (32 bytes)`
//! 4. server → client: `u32 identity length | server identity | server proof (32 bytes)`
//!
//! A proof is `HMAC-SHA256(secret, "dynkv-rpc" || role || client nonce || server nonce || own identity)` with role
//! the byte `b'C'` for the client and `b'S'` for the server, so a proof can be replayed neither on another
//! connection (fresh nonces) nor in the other direction (role). The server checks the magic and the client proof
//! before it reveals anything of its own; on a wrong magic or a wrong proof it logs the peer address at warn level
//! and closes the connection, which the client reports as [`RpcError::Refused`]. The client checks the server proof
//! too. An identity is at most [`MAX_IDENTITY`] bytes and each side's whole handshake is bounded by
//! [`RpcConfig::handshake_timeout`].
//!
//! After the handshake both directions carry frames:
//!
//! `u32 length | u8 kind | u64 request id | payload`
//!
//! where `length` counts kind + id + payload (so it is at least [`FRAME_HEADER`] = 9), kind 1 is a request
//! (client → server) and kind 2 a response (server → client) carrying the id of the request it answers. A length
//! below 9 or above [`RpcConfig::max_frame`], an unknown kind, or a kind sent in the wrong direction closes that
//! connection (and only that one). Responses may come back in any order. Each end writes through a single writer
//! task per connection that batches queued frames into one write. A server runs at most [`MAX_IN_FLIGHT`] requests
//! per connection at once; beyond that it stops reading from that connection, so TCP flow control pushes back on the
//! sender.

mod client;
mod server;
mod wire;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use client::Pool;
pub use server::serve;

/// Size of a frame's header counted by its length field: kind (1 byte) + request id (8 bytes).
pub const FRAME_HEADER: usize = 9;

/// Largest identity blob accepted in a handshake, in bytes.
pub const MAX_IDENTITY: usize = 64 * 1024;

/// Most requests one server connection runs at once; further requests wait unread in the socket (back-pressure).
pub const MAX_IN_FLIGHT: usize = 256;

/// What the two ends learn about each other in the handshake: an opaque identity blob each side supplies.
pub type Identity = Bytes;

/// Settings shared by server and client.
#[derive(Clone)]
pub struct RpcConfig {
    /// Shared cluster secret; never sent on the wire, only proven with HMAC-SHA256.
    pub secret: Bytes,
    /// Largest frame accepted or sent (length field value); a larger incoming frame closes the connection.
    pub max_frame: usize,
    /// Longest a TCP connect may take.
    pub connect_timeout: Duration,
    /// Longest a whole handshake may take, on either side.
    pub handshake_timeout: Duration,
    /// Reconnect backoff after the first failed connect attempt to a peer.
    pub backoff_min: Duration,
    /// Upper bound of the exponentially growing reconnect backoff.
    pub backoff_max: Duration,
}

impl RpcConfig {
    /// A configuration with the given secret and the defaults: 64 MiB frames, 1 s connect timeout, 2 s handshake
    /// timeout, reconnect backoff from 50 ms to 2 s.
    pub fn new(secret: impl Into<Bytes>) -> RpcConfig {
        RpcConfig {
            secret: secret.into(),
            max_frame: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }

    /// `max_frame` clamped to what the u32 length field can express.
    fn frame_limit(&self) -> usize {
        self.max_frame.min(u32::MAX as usize)
    }
}

impl std::fmt::Debug for RpcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcConfig")
            .field("secret", &"<redacted>")
            .field("max_frame", &self.max_frame)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// Serves requests arriving on internode connections.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request from an authenticated peer; returns the response payload.
    ///
    /// Requests from one connection run concurrently (at most [`MAX_IN_FLIGHT`] at once). A handler that never
    /// completes holds one of those slots until the connection closes; a panicking handler sends no response, so
    /// the caller times out.
    fn handle(&self, peer: &Identity, request: Bytes) -> impl Future<Output = Bytes> + Send;
}

/// Why an RPC failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The call's overall timeout (connect + handshake + round trip) expired.
    #[error("rpc timed out")]
    Timeout,
    /// The TCP connection could not be established.
    #[error("rpc connect failed: {0}")]
    Connect(String),
    /// The peer refused the handshake (wrong secret) or failed to prove the secret itself.
    #[error("rpc handshake refused (secret mismatch?)")]
    Refused,
    /// The connection closed before the response arrived.
    #[error("rpc connection closed")]
    Closed,
    /// A recent connect attempt to this peer failed and the reconnect backoff has not expired yet.
    #[error("rpc peer in reconnect backoff")]
    Backoff,
    /// The request is larger than `max_frame` allows.
    #[error("rpc frame too big")]
    FrameTooBig,
    /// The peer broke the protocol (bad magic, malformed frame, ...).
    #[error("rpc protocol error: {0}")]
    Protocol(String),
}
