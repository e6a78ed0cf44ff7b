//! Handshake and frame encoding shared by the server and the client (see the module doc of `rpc`).

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{FRAME_HEADER, Identity, MAX_IDENTITY, RpcError};

/// Magic + protocol version opening a handshake.
pub(crate) const MAGIC: &[u8; 6] = b"DYNKV\x01";
/// Length of each side's handshake nonce.
pub(crate) const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 proof.
pub(crate) const PROOF_LEN: usize = 32;
/// Domain separation prefix of every proof.
const PROOF_DOMAIN: &[u8] = b"dynkv-rpc";
/// Role byte of the client's proof.
pub(crate) const ROLE_CLIENT: u8 = b'C';
/// Role byte of the server's proof.
pub(crate) const ROLE_SERVER: u8 = b'S';

/// Frame kind of a request.
pub(crate) const KIND_REQUEST: u8 = 1;
/// Frame kind of a response.
pub(crate) const KIND_RESPONSE: u8 = 2;

/// Payloads at most this large are copied into the writer's batch buffer; larger ones are written directly.
const COPY_LIMIT: usize = 16 * 1024;
/// The writer flushes its batch buffer once it holds this much.
const BATCH_LIMIT: usize = 256 * 1024;
/// Largest buffer reserved ahead of payload bytes actually received, so a declared length costs no memory by itself.
const READ_CHUNK: usize = 1024 * 1024;

/// One frame after the length prefix.
#[derive(Debug)]
pub(crate) struct Frame {
    /// [`KIND_REQUEST`] or [`KIND_RESPONSE`].
    pub kind: u8,
    /// Request id, echoed by the response.
    pub id: u64,
    /// Opaque payload.
    pub payload: Bytes,
}

type HmacSha256 = Hmac<Sha256>;

/// Computes the proof of `role` for this handshake.
pub(crate) fn proof(secret: &[u8], role: u8, client_nonce: &[u8], server_nonce: &[u8], identity: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(PROOF_DOMAIN);
    mac.update(&[role]);
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac.update(identity);
    mac
}

/// Whether `tag` is the right proof (constant-time comparison).
pub(crate) fn verify(
    secret: &[u8],
    role: u8,
    client_nonce: &[u8],
    server_nonce: &[u8],
    identity: &[u8],
    tag: &[u8],
) -> bool {
    proof(secret, role, client_nonce, server_nonce, identity)
        .verify_slice(tag)
        .is_ok()
}

/// A fresh random nonce.
pub(crate) fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

/// Encodes `u32 len | identity | proof`.
pub(crate) fn encode_identity_proof(identity: &[u8], proof: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + identity.len() + proof.len());
    out.extend_from_slice(&(identity.len() as u32).to_le_bytes());
    out.extend_from_slice(identity);
    out.extend_from_slice(proof);
    out
}

/// Reads `u32 len | identity | proof`, refusing identities above [`MAX_IDENTITY`].
pub(crate) async fn read_identity_proof<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Result<(Identity, [u8; PROOF_LEN]), String>> {
    let len = r.read_u32_le().await? as usize;
    if len > MAX_IDENTITY {
        return Ok(Err(format!("identity of {len} bytes exceeds {MAX_IDENTITY}")));
    }
    let mut identity = vec![0u8; len];
    r.read_exact(&mut identity).await?;
    let mut tag = [0u8; PROOF_LEN];
    r.read_exact(&mut tag).await?;
    Ok(Ok((Bytes::from(identity), tag)))
}

/// Reads `magic | nonce`; `Ok(None)` if the magic is wrong.
pub(crate) async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<[u8; NONCE_LEN]>> {
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Ok(None);
    }
    let mut nonce = [0u8; NONCE_LEN];
    r.read_exact(&mut nonce).await?;
    Ok(Some(nonce))
}

/// Encodes `magic | nonce`.
pub(crate) fn encode_hello(nonce: &[u8; NONCE_LEN]) -> [u8; MAGIC.len() + NONCE_LEN] {
    let mut out = [0u8; MAGIC.len() + NONCE_LEN];
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    out[MAGIC.len()..].copy_from_slice(nonce);
    out
}

/// Client side of the handshake: returns the server's identity. The caller bounds it in time.
pub(crate) async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    my_identity: &[u8],
) -> Result<Identity, RpcError> {
    if my_identity.len() > MAX_IDENTITY {
        return Err(RpcError::Protocol(format!("own identity exceeds {MAX_IDENTITY} bytes")));
    }
    let closed = |e: std::io::Error| RpcError::Protocol(format!("handshake: {e}"));
    let client_nonce = nonce();
    stream.write_all(&encode_hello(&client_nonce)).await.map_err(closed)?;
    let server_nonce = match read_hello(stream).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(RpcError::Protocol(
                "handshake: peer is not a dynkv internode port".into(),
            ));
        }
        // The server closes without a word on a bad magic only; ours was right, so treat it as a refusal.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(RpcError::Refused),
        Err(e) => return Err(closed(e)),
    };
    let tag = proof(secret, ROLE_CLIENT, &client_nonce, &server_nonce, my_identity)
        .finalize()
        .into_bytes();
    stream
        .write_all(&encode_identity_proof(my_identity, &tag))
        .await
        .map_err(closed)?;
    // The server closes the connection instead of answering when our proof is wrong.
    let (identity, tag) = match read_identity_proof(stream).await {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => return Err(RpcError::Protocol(msg)),
        Err(_) => return Err(RpcError::Refused),
    };
    if !verify(secret, ROLE_SERVER, &client_nonce, &server_nonce, &identity, &tag) {
        return Err(RpcError::Refused);
    }
    Ok(identity)
}

/// Why a server-side handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// The peer does not speak the protocol or did not prove the secret: worth a warning.
    Refused(String),
    /// I/O failed (peer went away, reset, ...).
    Io(std::io::Error),
}

/// Server side of the handshake: returns the client's identity. The caller bounds it in time.
pub(crate) async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    my_identity: &[u8],
) -> Result<Identity, HandshakeFailure> {
    let client_nonce = match read_hello(stream).await.map_err(HandshakeFailure::Io)? {
        Some(n) => n,
        None => return Err(HandshakeFailure::Refused("bad magic".into())),
    };
    let server_nonce = nonce();
    stream
        .write_all(&encode_hello(&server_nonce))
        .await
        .map_err(HandshakeFailure::Io)?;
    let (identity, tag) = read_identity_proof(stream)
        .await
        .map_err(HandshakeFailure::Io)?
        .map_err(HandshakeFailure::Refused)?;
    if !verify(secret, ROLE_CLIENT, &client_nonce, &server_nonce, &identity, &tag) {
        return Err(HandshakeFailure::Refused("wrong secret".into()));
    }
    let tag = proof(secret, ROLE_SERVER, &client_nonce, &server_nonce, my_identity)
        .finalize()
        .into_bytes();
    stream
        .write_all(&encode_identity_proof(my_identity, &tag))
        .await
        .map_err(HandshakeFailure::Io)?;
    Ok(identity)
}

/// Reads one frame. Errors: [`RpcError::FrameTooBig`] above `max_frame`, [`RpcError::Protocol`] for a length below
/// the header or an unknown kind, [`RpcError::Closed`] when the stream ends or fails.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max_frame: usize) -> Result<Frame, RpcError> {
    let len = r.read_u32_le().await.map_err(|_| RpcError::Closed)? as usize;
    if len > max_frame {
        return Err(RpcError::FrameTooBig);
    }
    if len < FRAME_HEADER {
        return Err(RpcError::Protocol(format!("frame length {len} below header size")));
    }
    let kind = r.read_u8().await.map_err(|_| RpcError::Closed)?;
    if kind != KIND_REQUEST && kind != KIND_RESPONSE {
        return Err(RpcError::Protocol(format!("unknown frame kind {kind}")));
    }
    let id = r.read_u64_le().await.map_err(|_| RpcError::Closed)?;
    let n = len - FRAME_HEADER;
    // Grow the buffer as bytes arrive rather than trusting the declared length up front.
    let mut buf = BytesMut::with_capacity(n.min(READ_CHUNK));
    while buf.len() < n {
        let want = n - buf.len();
        if buf.capacity() == buf.len() {
            buf.reserve(want.min(READ_CHUNK));
        }
        let read = (&mut *r)
            .take(want as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|_| RpcError::Closed)?;
        if read == 0 {
            return Err(RpcError::Closed);
        }
    }
    Ok(Frame {
        kind,
        id,
        payload: buf.freeze(),
    })
}

/// Appends the frame header (length, kind, id) to `buf`.
fn put_header(buf: &mut BytesMut, frame: &Frame) {
    buf.put_u32_le((FRAME_HEADER + frame.payload.len()) as u32);
    buf.put_u8(frame.kind);
    buf.put_u64_le(frame.id);
}

/// Writes frames from `rx` until the channel closes (then shuts the write side down) or a write fails, batching
/// whatever is queued into one write.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Frame>) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next {
            put_header(&mut buf, &frame);
            if frame.payload.len() <= COPY_LIMIT {
                buf.extend_from_slice(&frame.payload);
            } else {
                w.write_all(&buf).await?;
                buf.clear();
                w.write_all(&frame.payload).await?;
            }
            next = if buf.len() < BATCH_LIMIT {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            buf.clear();
        }
        if buf.capacity() > 4 * BATCH_LIMIT {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    w.shutdown().await
}
