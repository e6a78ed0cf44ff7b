//! Serves requests from peers on the internode port: replica reads and merges through the
//! coordinator's local store, forwarded client commands through the command dispatcher,
//! and the member list. Must not route: a forwarded command runs here, never hops again.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::cluster::messages::{self, Request, Response};
use crate::coordinator::antientropy;
use crate::node::Node;
use crate::resp::client::{Client, ClientInfo};
use crate::resp::cmd::{self, Ctx, Outcome};
use crate::rpc::{Handler, Identity};
use crate::version::SiblingSet;

/// The RPC handler of a node.
pub struct PeerHandler {
    node: Arc<Node>,
}

impl PeerHandler {
    /// A handler serving `node`.
    pub fn new(node: Arc<Node>) -> PeerHandler {
        PeerHandler { node }
    }
}

impl Handler for PeerHandler {
    fn handle(&self, _peer: &Identity, request: Bytes) -> impl std::future::Future<Output = Bytes> + Send {
        let node = self.node.clone();
        async move {
            node.coord.stats().peer_requests.fetch_add(1, Ordering::Relaxed);
            let response = match messages::decode::<Request>(&request) {
                Ok(req) => serve(&node, req).await,
                Err(e) => Response::Error(e.to_string()),
            };
            messages::encode(&response)
        }
    }
}

async fn serve(node: &Arc<Node>, req: Request) -> Response {
    let coord = &node.coord;
    let failed = |e: crate::error::CoordError| Response::Error(e.to_string());
    match req {
        Request::Get { key } => match coord.local(&key) {
            Ok(set) => Response::Set(set.map(|s| Bytes::from(s.to_bytes()))),
            Err(e) => failed(e),
        },
        Request::Ping => Response::Ack,
        Request::Put { key, set, hint_for } => match SiblingSet::decode(&set) {
            Ok(set) => match coord.merge_local(key, set, hint_for).await {
                Ok(_) => Response::Ack,
                Err(e) => failed(e),
            },
            Err(e) => Response::Error(format!("bad sibling set: {e}")),
        },
        Request::Forward { deadline_ms, .. } if crate::clock::now_ms() > deadline_ms => {
            Response::Error("forwarded request arrived after its deadline; not run".into())
        }
        Request::Forward { proto, args, .. } => Response::Reply(run_forwarded(node, proto, args).await),
        Request::Gossip { records } => match coord.cluster() {
            Some(c) => {
                c.membership.merge(&records);
                Response::Members(c.membership.view().records().to_vec())
            }
            None => Response::Error("not a cluster member".into()),
        },
        Request::Scan { cursor, end, count } => scanned(coord.scan_local(cursor, end, count as usize)),
        Request::ScanParts {
            mut partitions,
            cursor,
            count,
        } => {
            partitions.sort_unstable();
            partitions.dedup();
            scanned(coord.scan_parts(&partitions, cursor, (count as usize).clamp(1, 4096)))
        }
        Request::Count { partitions } => match coord.count_local(&partitions) {
            Ok((k, e)) => Response::Count(k, e),
            Err(e) => failed(e),
        },
        Request::Flush { before_ms } => match coord.flush_local(before_ms).await {
            Ok(()) => Response::Ack,
            Err(e) => failed(e),
        },
        req @ (Request::AeGroups { .. }
        | Request::AeLeaves { .. }
        | Request::AeKeys { .. }
        | Request::AeFetch { .. }
        | Request::AeMerge { .. }
        | Request::ReapCheck { .. }
        | Request::Reap { .. }) => antientropy::serve(coord.store(), &req, coord.view_fingerprint(), coord.ae_stats())
            .await
            .unwrap_or_else(|| Response::Error("not an anti-entropy request".into())),
    }
}

/// The answer to a scan of local records: the records (key, encoded set) and where to
/// resume.
fn scanned(result: Result<(u64, Vec<crate::storage::ScanItem>), crate::error::CoordError>) -> Response {
    match result {
        Ok((next, items)) => Response::Scan {
            next,
            items: items
                .into_iter()
                .map(|it| (it.key, Bytes::from(it.set.to_bytes())))
                .collect(),
        },
        Err(e) => Response::Error(e.to_string()),
    }
}

/// Runs a client command sent on by a peer, here, and encodes its reply for `proto`.
async fn run_forwarded(node: &Arc<Node>, proto: u8, args: Vec<Bytes>) -> Bytes {
    let proto = if proto == 3 { 3 } else { 2 };
    let mut out = BytesMut::new();
    if args.is_empty() {
        crate::resp::reply::Reply::err("ERR empty forwarded command").encode(proto, &mut out);
        return out.freeze();
    }
    let nowhere = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let id = node.next_client_id.fetch_add(1, Ordering::Relaxed);
    let mut client = Client {
        info: Arc::new(ClientInfo::new(id, nowhere, nowhere)),
        proto,
        authenticated: true,
        closing: false,
        silent: false,
    };
    let outcome = cmd::dispatch(Ctx {
        node,
        client: &mut client,
        args,
        routed: true,
    })
    .await;
    let reply = match outcome {
        Outcome::Now(r) => r,
        Outcome::Later(p) => p.await.unwrap_or_else(cmd::util::coord_error),
    };
    reply.encode(proto, &mut out);
    out.freeze()
}
