//! The `shoal` binary: one process per device (SYSTEM.md §1).

mod generate;
mod node_id;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_store::{Store, StoreConfig};
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "A zero-configuration distributed LLM inference cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a node (the default).
    Run(RunArgs),
    /// Delete the persisted node id, so the next start creates a new one (for cloned disks).
    ResetId(DataDirArg),
    /// Generate a reply on this machine alone, without a cluster: the way to try a model.
    Generate {
        #[command(flatten)]
        args: Box<generate::GenerateArgs>,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// A pipeline rank in a child process; started by a worker (or `generate --stages`), not by hand.
    #[command(hide = true)]
    Runner {
        /// The worker's Unix socket to connect to.
        #[arg(long)]
        socket: PathBuf,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct DataDirArg {
    /// Where the node keeps its id, store and models [default: the platform data directory + /shoal].
    #[arg(long, env = "SHOAL_HOME", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    data: DataDirArg,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Run(args)) => run(&args),
        None => run(&cli.run),
        Some(Cmd::ResetId(args)) => reset_id(&args),
        Some(Cmd::Generate { args, data }) => generate::run(&args, data_dir(&data).ok().as_deref()),
        Some(Cmd::Runner { socket }) => shoal_runner::run(&socket).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn data_dir(arg: &DataDirArg) -> anyhow::Result<PathBuf> {
    match &arg.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => dirs::data_dir()
            .map(|d| d.join("shoal"))
            .context("no platform data directory; pass --data-dir or set SHOAL_HOME"),
    }
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--data-dir {}: cannot create it", dir.display()))
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = data_dir(&args.data)?;
    prepare_data_dir(&dir)?;
    let (node, created) = node_id::load_or_create(&dir)?;
    info!(%node, created, data_dir = %dir.display(), "node identity");
    let store_path = dir.join("store.redb");
    // The store logs what it recovered (and any repair) itself.
    let (mut store, _recovery) = Store::open(&store_path, StoreConfig::default())
        .with_context(|| format!("cannot open the store {}", store_path.display()))?;
    // The cluster, worker and API arrive with their issues; until then the node holds its store and waits.
    // The signal handlers are installed before "node ready" is logged: a SIGTERM sent by whoever waited for that
    // line must reach our handler, not the default action.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let shutdown = runtime.block_on(async { shutdown_signal() })?;
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "node ready");
    runtime.block_on(shutdown);
    info!("shutting down");
    if let Err(e) = store.checkpoint_now() {
        warn!(error = %e, "final checkpoint failed; the log still holds every event");
    }
    Ok(())
}

fn reset_id(arg: &DataDirArg) -> anyhow::Result<()> {
    let dir = data_dir(arg)?;
    match node_id::reset(&dir)? {
        Some(old) => println!(
            "deleted node id {old} from {}; the next start creates a new one",
            dir.display()
        ),
        None => println!("no node id in {}; nothing to reset", dir.display()),
    }
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now; the returned future completes when either arrives.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
