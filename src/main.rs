//! The `dynkv` binary: command line and config loading only; builds the node and runs it.

use anyhow::Context;
use clap::{Parser, Subcommand};

use dynkv::config::{Config, ServerArgs};

/// mimalloc as the allocator. Redis ships with jemalloc for the same reason: a server
/// that allocates per request spends a quarter of its time in glibc's malloc under load
/// (measured with perf).
///
/// Called directly rather than through the `mimalloc` crate, which sends every request
/// to `mi_malloc_aligned`: that entry's fast path misses for about one allocation in five
/// of a SET, and the detour cost 10% of a SET's instructions (callgrind). Every block
/// `mi_malloc` returns is aligned to 16 bytes, or to its size when smaller, so only
/// larger alignments need the aligned entry points.
struct MiMalloc;

/// The alignment `mi_malloc` guarantees (mimalloc's `MI_MAX_ALIGN_SIZE`).
const MI_MIN_ALIGN: usize = 16;

/// Whether `mi_malloc` of `size` bytes is aligned enough for `align`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= MI_MIN_ALIGN && align <= size
}

// SAFETY: each method forwards to the mimalloc function that meets the layout's size
// and alignment, and `mi_free` releases blocks from any of them.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        // SAFETY: plain calls into mimalloc with the layout's figures.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        // SAFETY: as for `alloc`.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if plain(new_size, layout.align()) {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;
use dynkv::shutdown::Shutdown;

/// dynkv: a Dynamo-style replicated key-value store that speaks the Redis protocol.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `dynkv` runs `dynkv server` with these flags.
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Server(Box<ServerArgs>),
    /// Start a local cluster of real dynkv processes; Ctrl-C stops them all.
    DevCluster {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Client port of the first node; the others follow (internode ports are 10000 above).
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
        /// Directory for the nodes' data and logs.
        #[arg(long, default_value = "./dynkv-dev-cluster")]
        data_dir: std::path::PathBuf,
        /// Extra flags passed to every node (e.g. `-- --fsync no`).
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Copy a live Redis's string keys, with their TTLs, into dynkv (resumable).
    Migrate(Box<dynkv::migrate::MigrateArgs>),
    /// Show or change the cluster's membership through any node (DYNKV.* commands).
    Admin {
        /// The node to talk to (`host:port`, its client port).
        #[arg(long, default_value = "127.0.0.1:6379")]
        node: String,
        /// Password, if the node requires one.
        #[arg(long)]
        password: Option<String>,
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Members, their states and weights, and partition transfers.
    Status,
    /// Partitions led and replicated per member, now and after the current change.
    Ring,
    /// Make the node (this one, or NODE) leave: its data moves to the others first.
    Leave {
        /// Node id (16 hex digits); default: the node talked to.
        node: Option<String>,
    },
    /// Remove a member that is gone for good; its replicas are rebuilt from the others.
    Remove {
        /// Node id (16 hex digits).
        node: String,
    },
    /// Change a member's placement weight.
    Weight {
        /// Node id (16 hex digits).
        node: String,
        /// The new weight (> 0).
        weight: f64,
    },
}

/// Runs one admin command against `node` and prints its answer.
fn admin(node: &str, password: Option<String>, action: AdminAction) -> anyhow::Result<()> {
    let mut args: Vec<String> = match action {
        AdminAction::Status => vec!["DYNKV.STATUS".into()],
        AdminAction::Ring => vec!["DYNKV.RING".into()],
        AdminAction::Leave { node } => std::iter::once("DYNKV.LEAVE".to_string()).chain(node).collect(),
        AdminAction::Remove { node } => vec!["DYNKV.REMOVE".into(), node],
        AdminAction::Weight { node, weight } => vec!["DYNKV.WEIGHT".into(), node, weight.to_string()],
    };
    let client = redis::Client::open(format!("redis://{node}/")).context("bad node address")?;
    let mut conn = client
        .get_connection()
        .with_context(|| format!("cannot reach {node}"))?;
    if let Some(p) = password {
        redis::cmd("AUTH").arg(p).exec(&mut conn).context("AUTH failed")?;
    }
    let name = args.remove(0);
    let reply: redis::Value = redis::cmd(&name)
        .arg(&args)
        .query(&mut conn)
        .with_context(|| format!("{name} failed"))?;
    match reply {
        redis::Value::BulkString(b) => print!("{}", String::from_utf8_lossy(&b)),
        redis::Value::Okay => println!("OK"),
        other => println!("{other:?}"),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Server(a)) => *a,
        None => cli.server,
        Some(Command::DevCluster {
            nodes,
            base_port,
            data_dir,
            extra,
        }) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            return runtime
                .block_on(dynkv::dev_cluster::run(nodes, base_port, data_dir, extra))
                .context("dev-cluster failed");
        }
        Some(Command::Admin { node, password, action }) => return admin(&node, password, action),
        Some(Command::Migrate(m)) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            return runtime.block_on(dynkv::migrate::run(*m)).context("migrate failed");
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DYNKV_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let config = Config::load(&args).context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = Shutdown::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down");
            signals.trigger();
        });
        dynkv::server::run(config, shutdown).await.context("dynkv failed")
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop dynkv with SHUTDOWN");
            std::future::pending::<()>().await;
        }
    }
}
