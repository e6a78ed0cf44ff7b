//! The `dynkv` binary: command line and config loading only; builds the node and runs it.

use anyhow::Context;
use clap::{Parser, Subcommand};

use dynkv::config::{Config, ServerArgs};
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
    Server(ServerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Server(a)) => a,
        None => cli.server,
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DYNKV_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&args).context("invalid configuration")?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("DYNKV_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        builder.worker_threads(n);
    }
    let runtime = builder.enable_all().build().context("cannot start the async runtime")?;
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
