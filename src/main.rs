//! The `dynkv` binary: command line and config loading only; builds the node and runs it.

use anyhow::Context;
use clap::{Parser, Subcommand};

use dynkv::config::{Config, ServerArgs};

/// Redis ships with jemalloc for the same reason: a server that allocates per request
/// spends a quarter of its time in glibc's malloc under load (measured with perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
