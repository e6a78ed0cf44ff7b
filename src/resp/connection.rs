//! One client connection: read bytes, parse requests, run them, write replies in order.
//! Must not know any command's meaning beyond whether it is a write.
//!
//! Pipelined commands of one class run without waiting for each other: writes are queued
//! without waiting for each one's commit (a pipeline of writes lands in one group commit
//! and replicates concurrently), and reads that need replicas run at the same time. When
//! the class changes, or for any other command, the queued replies are awaited first, so a
//! read always sees this connection's earlier writes and never a later one.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{Client, ClientInfo};
use super::cmd::{self, Ctx, Outcome};
use super::parser::{Limits, RequestParser};
use super::reply::Reply;
use crate::coordinator::Pending;
use crate::metrics as m;
use crate::node::{Node, Stats};
use crate::storage::ReadRun;

/// Replies are sent once this many bytes are waiting.
const FLUSH_AT: usize = 64 * 1024;
/// Most writes queued on one connection before their replies are awaited.
const MAX_IN_FLIGHT: usize = 1024;

/// What may run alongside the commands queued before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Write,
    Read,
    Other,
}

/// The class of command `index` (`None`: unknown), from a table built once.
fn class_of(index: Option<usize>) -> Class {
    static CLASSES: OnceLock<Vec<Class>> = OnceLock::new();
    let classes = CLASSES.get_or_init(|| {
        cmd::COMMANDS
            .iter()
            .map(|s| {
                if s.flags.contains(&"write") {
                    Class::Write
                } else if s.flags.contains(&"readonly") {
                    Class::Read
                } else {
                    Class::Other
                }
            })
            .collect()
    });
    index.and_then(|i| classes.get(i).copied()).unwrap_or(Class::Other)
}

/// A reply that is ready, or one that follows a submitted write or read.
enum Answer {
    Ready(Reply),
    Waiting(Pending<Reply>),
}

/// A queued reply with what the metrics need: the command's name and arrival time.
struct Slot {
    reply: Answer,
    /// Position in the command table (`COMMANDS.len()` for an unknown command).
    cmd: usize,
    /// When the bytes holding the request were read.
    arrived: Instant,
}

/// Consecutive replies of one command that arrived together and were answered together
/// (so with one latency), counted with one record.
#[derive(Default)]
struct Run {
    cmd: usize,
    /// When the run's requests arrived and when they were answered.
    times: Option<(Instant, Instant)>,
    count: u64,
}

impl Run {
    /// Adds a reply, recording the run so far first when this one differs. The latency
    /// is computed once per run, not once per reply.
    fn add(&mut self, cmd: usize, arrived: Instant, answered: Instant) {
        if self.count > 0 && (self.cmd != cmd || self.times != Some((arrived, answered))) {
            self.record();
        }
        self.cmd = cmd;
        self.times = Some((arrived, answered));
        self.count += 1;
    }

    fn record(&mut self) {
        if let (true, Some((arrived, answered))) = (self.count > 0, self.times) {
            m::commands::record(self.cmd, self.count, answered.saturating_duration_since(arrived));
            self.count = 0;
        }
    }
}

struct Conn {
    socket: TcpStream,
    wbuf: BytesMut,
    queue: VecDeque<Slot>,
    /// The class of the commands in `queue`.
    queued: Class,
    node: Arc<Node>,
}

impl Conn {
    /// Awaits queued replies in order and encodes them. The clock is read once for the
    /// replies that were ready together, not once per reply.
    async fn drain(&mut self, proto: u8) -> std::io::Result<()> {
        let mut now: Option<Instant> = None;
        let mut run = Run::default();
        let result = self.drain_into(proto, &mut now, &mut run).await;
        run.record();
        result
    }

    async fn drain_into(&mut self, proto: u8, now: &mut Option<Instant>, run: &mut Run) -> std::io::Result<()> {
        while let Some(slot) = self.queue.pop_front() {
            let reply = match slot.reply {
                Answer::Ready(r) => r,
                Answer::Waiting(mut p) => {
                    // Already answered (the usual case after the first reply of a group
                    // commit): no new clock reading. Otherwise wait and read the clock.
                    let first = std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut p).poll(cx))).await;
                    match first {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            let r = p.await;
                            *now = None;
                            r
                        }
                    }
                    .unwrap_or_else(cmd::util::coord_error)
                }
            };
            let end = *now.get_or_insert_with(Instant::now);
            run.add(slot.cmd, slot.arrived, end);
            self.encode(&reply, proto);
            if self.wbuf.len() > self.node.config.max_output_buffer {
                return Err(std::io::Error::other("output buffer limit reached; connection closed"));
            }
            if self.wbuf.len() >= FLUSH_AT {
                self.flush().await?;
                *now = None;
            }
        }
        Ok(())
    }

    fn encode(&mut self, reply: &Reply, proto: u8) {
        if reply.is_error() {
            Stats::add(&self.node.stats.error_replies, 1);
            ::metrics::counter!(m::ERRORS, "kind" => error_kind(reply)).increment(1);
        }
        reply.encode(proto, &mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.socket.write_all(&self.wbuf).await?;
            Stats::add(&self.node.stats.net_output_bytes, self.wbuf.len() as u64);
            net_metrics().1.increment(self.wbuf.len() as u64);
            self.wbuf.clear();
            if self.wbuf.capacity() > 4 * FLUSH_AT {
                self.wbuf = BytesMut::with_capacity(FLUSH_AT);
            }
        }
        Ok(())
    }
}

/// Bytes in and out, registered once.
fn net_metrics() -> &'static (::metrics::Counter, ::metrics::Counter) {
    static HANDLES: OnceLock<(::metrics::Counter, ::metrics::Counter)> = OnceLock::new();
    HANDLES.get_or_init(|| (::metrics::counter!(m::NET_IN), ::metrics::counter!(m::NET_OUT)))
}

/// The metric label of an error reply: its code, from a fixed set (no unbounded labels).
fn error_kind(reply: &Reply) -> &'static str {
    let text = match reply {
        Reply::Error(e) => e.as_str(),
        Reply::Raw(b) => std::str::from_utf8(b.get(1..).unwrap_or_default()).unwrap_or("ERR"),
        _ => "ERR",
    };
    match m::error_kind(text) {
        "NOAUTH" => "NOAUTH",
        "WRONGPASS" => "WRONGPASS",
        "NOPROTO" => "NOPROTO",
        "CROSSSLOT" => "CROSSSLOT",
        "WRONGTYPE" => "WRONGTYPE",
        _ if text.contains("quorum not met") => "QUORUM",
        _ => "ERR",
    }
}

/// The command name a connection looked up last, as sent, and its position in the table:
/// a pipeline mostly repeats one command, and comparing its name costs less than hashing
/// it.
#[derive(Default)]
struct LastCommand {
    name: [u8; 16],
    len: usize,
    index: Option<usize>,
}

impl LastCommand {
    /// The position of command `name` in the table (`None`: unknown).
    fn lookup(&mut self, name: &[u8]) -> Option<usize> {
        if self.len > 0 && self.name.get(..self.len) == Some(name) {
            return self.index;
        }
        let index = cmd::lookup_index(name);
        if let Some(slot) = self.name.get_mut(..name.len()) {
            slot.copy_from_slice(name);
            self.len = name.len();
            self.index = index;
        }
        index
    }
}

/// Serves one client until it disconnects, sends bad input, asks to quit, or the node shuts down.
pub async fn serve(node: Arc<Node>, socket: TcpStream, info: Arc<ClientInfo>) {
    let _ = socket.set_nodelay(true);
    let mut client = Client {
        info,
        proto: 2,
        authenticated: node.config.requirepass.is_none(),
        closing: false,
        silent: false,
    };
    let limits = Limits {
        max_bulk_len: node.config.max_bulk_len,
        max_multibulk_len: node.config.max_multibulk_len,
        max_inline_len: node.config.max_inline_len,
        max_request_len: node.config.max_request_len,
    };
    let mut parser = RequestParser::new(limits);
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut conn = Conn {
        socket,
        wbuf: BytesMut::with_capacity(16 * 1024),
        queue: VecDeque::new(),
        queued: Class::Other,
        node: node.clone(),
    };
    let shutdown = node.shutdown.clone();
    if let Err(e) = run(&mut conn, &mut client, &mut parser, &mut rbuf, &shutdown).await {
        tracing::debug!(client = client.info.id, "connection ended: {e}");
    }
    let _ = conn.socket.shutdown().await;
}

async fn run(
    conn: &mut Conn,
    client: &mut Client,
    parser: &mut RequestParser,
    rbuf: &mut BytesMut,
    shutdown: &crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    let mut arrived = Instant::now();
    // One wait for the whole connection: registering a fresh one on every read costs
    // shared atomics and a lock on every request.
    let stop = shutdown.wait();
    tokio::pin!(stop);
    // On a single node, a run of reads among the requests that arrived together shares
    // one read transaction. The run ends before anything that may wait (see
    // `storage::ReadRun`).
    let node = conn.node.clone();
    let share_reads = node.coord.cluster().is_none();
    let mut reads: Option<ReadRun> = None;
    let mut last_command = LastCommand::default();
    loop {
        // Run every complete request already buffered.
        let mut parsed = 0u64;
        loop {
            let args = match parser.parse(rbuf) {
                Ok(Some(args)) => args,
                Ok(None) => break,
                Err(e) => {
                    drop(reads.take());
                    Stats::add(&conn.node.stats.commands_processed, parsed);
                    conn.drain(client.proto).await?;
                    conn.encode(&Reply::err(e.to_string()), client.proto);
                    conn.flush().await?;
                    return Ok(());
                }
            };
            parsed += 1;
            let index = last_command.lookup(&args[0]);
            let cmd_index = index.unwrap_or(cmd::COMMANDS.len());
            let class = class_of(index);
            if class == Class::Other || class != conn.queued || conn.queue.len() >= MAX_IN_FLIGHT {
                drop(reads.take());
                conn.drain(client.proto).await?;
            }
            conn.queued = class;
            if share_reads && class == Class::Read && reads.is_none() {
                reads = Some(node.coord.store().read_run());
            }
            let outcome = {
                let mut running = std::pin::pin!(cmd::run(
                    Ctx {
                        node: &node,
                        client: &mut *client,
                        args,
                        routed: false,
                    },
                    index,
                ));
                // A command that has to wait ends the run of reads first.
                match std::future::poll_fn(|cx| Poll::Ready(running.as_mut().poll(cx))).await {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => {
                        drop(reads.take());
                        running.await
                    }
                }
            };
            if client.silent {
                drop(reads.take());
                Stats::add(&conn.node.stats.commands_processed, parsed);
                conn.drain(client.proto).await?;
                conn.flush().await?;
                return Ok(());
            }
            conn.queue.push_back(Slot {
                reply: match outcome {
                    Outcome::Now(r) => Answer::Ready(r),
                    Outcome::Later(p) => Answer::Waiting(p),
                },
                cmd: cmd_index,
                arrived,
            });
            if client.closing {
                drop(reads.take());
                Stats::add(&conn.node.stats.commands_processed, parsed);
                conn.drain(client.proto).await?;
                conn.flush().await?;
                return Ok(());
            }
        }
        drop(reads.take());
        Stats::add(&conn.node.stats.commands_processed, parsed);
        conn.drain(client.proto).await?;
        if !conn.wbuf.is_empty() {
            // Let the thread's other ready connections run their requests first, so the
            // replies of one round go out together, as in Redis's event loop: a reply
            // sent on its own wakes a client that has gone to sleep in the meantime, and
            // on a VM that wake-up (an interrupt to another core) costs more than the
            // request did.
            tokio::task::yield_now().await;
        }
        conn.flush().await?;
        if shutdown.is_triggered() {
            return Ok(());
        }
        rbuf.reserve(parser.hint_needed().max(4096));
        // The socket first: a read that is ready needs no look at the shutdown signal,
        // which is checked above before every read anyway.
        let n = tokio::select! {
            biased;
            r = conn.socket.read_buf(rbuf) => r?,
            _ = &mut stop => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        arrived = Instant::now();
        super::spin::note_read();
        client.active_at(arrived);
        Stats::add(&conn.node.stats.net_input_bytes, n as u64);
        net_metrics().0.increment(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_command_cache_answers_as_the_table_does() {
        let mut last = LastCommand::default();
        let names: [&[u8]; 12] = [
            b"GET",
            b"GET",
            b"get",
            b"SET",
            b"nosuchcommand",
            b"nosuchcommand",
            b"GET",
            b"",
            b"a-command-name-longer-than-sixteen",
            b"GET",
            b"a-command-name-longer-than-sixteen",
            b"sEt",
        ];
        for name in names {
            assert_eq!(
                last.lookup(name),
                cmd::lookup_index(name),
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
