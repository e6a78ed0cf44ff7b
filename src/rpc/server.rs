//! The internode server: accept loop, per-connection handshake, request dispatch and response writing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::wire::{self, Frame, HandshakeFailure, KIND_REQUEST, KIND_RESPONSE};
use super::{FRAME_HEADER, Handler, Identity, MAX_IN_FLIGHT, RpcConfig, RpcError};

/// Capacity of a connection's queue of responses waiting for the writer task.
const WRITE_QUEUE: usize = 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts internode connections until `shutdown` resolves, then closes every connection it accepted and returns.
///
/// Each connection first runs the handshake (a peer that does not prove the secret is logged at warn level with its
/// address and disconnected), then reads request frames and runs each request in its own task, at most
/// [`MAX_IN_FLIGHT`] at once per connection (beyond that the connection is not read: back-pressure), writing every
/// response tagged with its request id. A protocol violation closes that connection only.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    cfg: RpcConfig,
    my_identity: Identity,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let cfg = Arc::new(cfg);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer_addr)) => {
                    conns.spawn(connection(stream, peer_addr, cfg.clone(), my_identity.clone(), handler.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "internode accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    // Aborting a connection task drops its socket and aborts its in-flight requests.
    conns.shutdown().await;
}

/// Runs one accepted connection to its end.
async fn connection<H: Handler>(
    mut stream: TcpStream,
    peer_addr: SocketAddr,
    cfg: Arc<RpcConfig>,
    my_identity: Identity,
    handler: Arc<H>,
) {
    let _ = stream.set_nodelay(true);
    let handshake = wire::server_handshake(&mut stream, &cfg.secret, &my_identity);
    let peer = match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(HandshakeFailure::Refused(why))) => {
            warn!(peer = %peer_addr, reason = %why, "internode handshake refused");
            return;
        }
        Ok(Err(HandshakeFailure::Io(e))) => {
            debug!(peer = %peer_addr, error = %e, "internode handshake failed");
            return;
        }
        Err(_) => {
            warn!(peer = %peer_addr, "internode handshake timed out");
            return;
        }
    };
    debug!(peer = %peer_addr, "internode connection established");
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let (tx, rx) = mpsc::channel::<Frame>(WRITE_QUEUE);
    let mut writer = tokio::spawn(wire::write_loop(wr, rx));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut requests = JoinSet::new();
    let limit = cfg.frame_limit();
    let peer = Arc::new(peer);

    let outcome: Result<(), RpcError> = loop {
        // Reap finished request tasks so the set only ever holds (about) the in-flight ones.
        while requests.try_join_next().is_some() {}
        // Wait for a free slot before reading the next request: with all slots busy the socket is left unread.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
            _ = &mut writer => break Err(RpcError::Closed),
        };
        // Reading is cancelled only when the connection is being torn down anyway.
        let frame = tokio::select! {
            frame = wire::read_frame(&mut rd, limit) => frame,
            _ = &mut writer => break Err(RpcError::Closed),
        };
        let frame = match frame {
            Ok(f) if f.kind == KIND_REQUEST => f,
            Ok(f) => {
                break Err(RpcError::Protocol(format!(
                    "unexpected frame kind {} from client",
                    f.kind
                )));
            }
            Err(e) => break Err(e),
        };
        let (handler, peer, tx) = (handler.clone(), peer.clone(), tx.clone());
        requests.spawn(async move {
            let response = handler.handle(&peer, frame.payload).await;
            if FRAME_HEADER + response.len() > limit {
                warn!(size = response.len(), "internode response exceeds max_frame; dropped");
            } else {
                let _ = tx
                    .send(Frame {
                        kind: KIND_RESPONSE,
                        id: frame.id,
                        payload: response,
                    })
                    .await;
            }
            drop(permit);
        });
    };
    match outcome {
        Err(RpcError::Closed) | Ok(()) => debug!(peer = %peer_addr, "internode connection closed"),
        Err(e) => warn!(peer = %peer_addr, error = %e, "internode connection closed on protocol error"),
    }
    requests.abort_all();
    writer.abort();
}
