//! The `shoal` binary: one process per device (SYSTEM.md §1).

mod facts;
mod generate;
mod malloc_tuning;
mod metrics;
mod node_id;
mod progress;
mod startup;
mod watchdog;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_cluster::{Cluster, ClusterConfig, ClusterHandle, Faults};
use shoal_core::node::NodeConfig;
use shoal_net::NetConfig;
use shoal_net::cluster_key::ClusterKey;
use shoal_store::{Store, StoreConfig};
use shoal_types::model::NodeFact;
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
    Run(Box<RunArgs>),
    /// Delete the persisted node id, so the next start creates a new one (for cloned disks).
    ResetId(DataDirArg),
    /// Create a cluster key (a CA certificate and its private key in one file; §12). Give the same file to every
    /// node with `--cluster-key`.
    Keygen {
        /// Where to write the key; refuses to overwrite.
        #[arg(long, value_name = "FILE", default_value = "cluster.key")]
        out: PathBuf,
    },
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

/// `--runner-hung-after`: a positive number of seconds, at most a day (beyond that a hang is never caught).
fn hung_after_secs(text: &str) -> Result<f64, String> {
    const MAX_SECS: f64 = 86_400.0;
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if secs > 0.0 && secs <= MAX_SECS {
        Ok(secs)
    } else {
        Err(format!("must be more than 0 and at most {MAX_SECS} seconds"))
    }
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// Nodes of different namespaces on one network never see each other.
    #[arg(long, default_value = "default", value_parser = parse_namespace)]
    namespace: String,
    /// The HTTP API port (0: any free port; the log says which).
    #[arg(long, default_value_t = 52415)]
    api_port: u16,
    /// The zenoh port this node listens on.
    #[arg(long, default_value_t = shoal_net::ZENOH_PORT)]
    zenoh_port: u16,
    /// Listen on these zenoh endpoints instead of `tcp/[::]:<zenoh-port>` (repeatable; e.g. tcp/127.0.0.1:7000).
    #[arg(long, value_name = "ENDPOINT")]
    listen: Vec<String>,
    /// The UDP port of multicast scouting (group 224.0.0.224).
    #[arg(long, default_value_t = shoal_net::SCOUT_PORT)]
    scout_port: u16,
    /// `auto`, or a comma list of interfaces to scout on.
    #[arg(long, default_value = "auto")]
    scout_iface: String,
    /// Turn multicast scouting off (use --connect).
    #[arg(long)]
    no_multicast: bool,
    /// A peer to connect to, e.g. tcp/192.168.1.5:52414 (repeatable), for networks that block multicast.
    #[arg(long, value_name = "ENDPOINT")]
    connect: Vec<String>,
    /// Prefer this node in elections between equally up-to-date candidates.
    #[arg(long)]
    force_master: bool,
    /// Run no inference on this node (it reports no backends, so it is never given a model's layers).
    #[arg(long)]
    no_worker: bool,
    /// Serve no HTTP API.
    #[arg(long)]
    no_api: bool,
    /// The cluster key made by `shoal keygen`: only nodes holding it can join, and traffic is encrypted.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// Place this model once the cluster is up, unless it is deployed already (repeatable): a built-in id
    /// (smollm2-135m), a path to a .gguf file on this node, or hf:ORG/REPO/FILE.gguf (a split set by its first part).
    #[arg(long, value_name = "MODEL")]
    model: Vec<String>,
    /// A read-only directory that already holds model files, searched before `<data-dir>/models` (repeatable).
    #[arg(long, value_name = "DIR")]
    models_dir: Vec<PathBuf>,
    /// Sequences a runner of this node admits at once (continuous batching).
    #[arg(long, default_value_t = shoal_core::worker::DEFAULT_MAX_SEQS, value_parser = clap::value_parser!(u32).range(1..=256))]
    max_seqs: u32,
    /// Seconds a runner may stay silent, or inside one forward step, before it is killed as hung and its requests
    /// fail (raise it on very slow hardware, where one prefill chunk takes longer).
    #[arg(long, default_value_t = shoal_worker::RUNNER_HUNG_AFTER.as_secs_f64(), value_parser = hung_after_secs)]
    runner_hung_after: f64,
    /// Compute threads per runner [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Option<u32>,
    /// Element type of every runner's KV cache: f32 (greedy output identical to llama.cpp's `-ctk f32 -ctv f32`) or
    /// f16 (half the memory, what the placement budgets).
    #[arg(long, default_value_t = shoal_engine::KvType::F32, value_name = "f32|f16")]
    kv_cache: shoal_engine::KvType,
    /// Seconds a request waits for its task to appear in State before it fails with 504 (§11.3's ttl).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    stream_ttl: u64,
    /// Generations (streams) open at once on this node; one more is answered 429 with Retry-After.
    #[arg(long, default_value_t = shoal_api::streams::DEFAULT_MAX_STREAMS, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_streams: usize,
    /// HTTP connections served at once; one more is answered 503 with Retry-After.
    #[arg(long, default_value_t = shoal_api::server::DEFAULT_MAX_CONNECTIONS, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers or its body; a connection idle this long is closed.
    #[arg(long, default_value_t = shoal_api::server::DEFAULT_READ_TIMEOUT.as_secs(), value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_read_timeout: u64,
    /// Require this key on every HTTP endpoint but GET /health (`Authorization: Bearer KEY` or `x-api-key: KEY`).
    #[arg(long, env = "SHOAL_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Allow browsers on this origin only, e.g. http://localhost:3000 (repeatable) [default: any origin].
    #[arg(long, value_name = "ORIGIN", value_parser = parse_origin)]
    cors_origin: Vec<String>,
}

/// A key a client can send in a header: printable ASCII, no spaces. Checked here rather than by clap, whose error
/// would echo the key.
fn check_api_key(key: Option<&str>) -> anyhow::Result<()> {
    match key {
        Some(key) if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) => {
            anyhow::bail!("--api-key (or SHOAL_API_KEY): must be non-empty printable ASCII without spaces")
        }
        _ => Ok(()),
    }
}

fn parse_origin(text: &str) -> Result<String, String> {
    let valid = (text.starts_with("http://") || text.starts_with("https://"))
        && axum::http::HeaderValue::from_str(text).is_ok()
        && !text.ends_with('/');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("must be an origin such as https://example.com (scheme and host, no trailing slash)".to_owned())
    }
}

fn parse_namespace(text: &str) -> Result<String, String> {
    let valid = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("letters, digits, '-' and '_' only".to_owned())
    }
}

fn main() -> std::process::ExitCode {
    // First of all, while nothing else has run: this returns only if there is nothing to do or the exec failed.
    let untuned = malloc_tuning::reexec_if_untuned();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| LogSink(std::io::stderr()))
        .init();
    if let Some(error) = untuned {
        warn!(
            "running with glibc's default malloc thresholds (memory freed after large prompts may stay held): {error}"
        );
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Run(args)) => run(&args),
        None => run(&cli.run),
        Some(Cmd::ResetId(args)) => reset_id(&args),
        Some(Cmd::Keygen { out }) => keygen(&out),
        Some(Cmd::Generate { args, data }) => generate::run(&args, data_dir(&data).ok().as_deref()),
        Some(Cmd::Runner { socket }) => runner(&socket),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `shoal runner`: a pipeline rank, a child of its node's worker (§10.3). On Linux it asks the kernel for SIGKILL
/// when its parent dies, so a runner busy in a long forward pass does not outlive a SIGKILLed node until it next
/// reads its socket; elsewhere (and as a second line) it exits on EOF of that socket.
fn runner(socket: &Path) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let parent = rustix::process::getppid();
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .context("cannot set PR_SET_PDEATHSIG")?;
        // The parent may have died before the request took effect: then this process was already re-parented.
        if rustix::process::getppid() != parent {
            anyhow::bail!("the node that started this runner is gone");
        }
    }
    shoal_runner::run(socket).map_err(anyhow::Error::from)
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

/// The cards `--model` names: a built-in id or alias, a path to a GGUF file or `hf:ORG/REPO/FILE.gguf` (whose card
/// is derived from the header, read here, so a bad file stops the node at start), each with whether it is custom
/// (added to State before it is placed). An error names the flag.
fn models_to_place(
    names: &[String],
    store: &shoal_models::ModelStore,
) -> anyhow::Result<Vec<(shoal_types::ModelCard, bool)>> {
    let builtins = shoal_types::card::builtin_cards();
    names
        .iter()
        .map(|name| {
            if let Some(card) = shoal_types::card::find_card(&builtins, name) {
                return Ok((card.clone(), false));
            }
            if shoal_models::SourceSpec::looks_like_source(name) {
                let card = store
                    .card_for_source(name, None)
                    .map_err(|e| anyhow::anyhow!("--model {name}: {e}"))?;
                return Ok((card, true));
            }
            let known: Vec<String> = builtins
                .iter()
                .flat_map(|c| c.aliases.iter().cloned().chain([c.id.0.clone()]))
                .collect();
            Err(anyhow::anyhow!(
                "--model {name}: unknown model (built in: {}; or a path to a .gguf file, or hf:ORG/REPO/FILE.gguf)",
                known.join(", ")
            ))
        })
        .collect()
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    raise_open_files_limit();
    check_api_key(args.api_key.as_deref())?;
    for dir in &args.models_dir {
        if !dir.is_dir() {
            anyhow::bail!("--models-dir {}: not a directory", dir.display());
        }
    }
    let dir = data_dir(&args.data)?;
    prepare_data_dir(&dir)?;
    let models = models_to_place(
        &args.model,
        &shoal_models::ModelStore::new(dir.join("models"), args.models_dir.clone()),
    )?;
    let (node, created) = node_id::load_or_create(&dir)?;
    info!(%node, created, data_dir = %dir.display(), "node identity");
    let store_path = dir.join("store.redb");
    // The store logs what it recovered (and any repair) itself.
    let (store, _recovery) = Store::open(&store_path, store_config())
        .with_context(|| format!("cannot open the store {}", store_path.display()))?;

    let mut net = NetConfig::lan(args.namespace.clone(), node);
    net.listen = if args.listen.is_empty() {
        vec![format!("tcp/[::]:{}", args.zenoh_port)]
    } else {
        args.listen.clone()
    };
    net.connect = args.connect.clone();
    net.multicast = !args.no_multicast;
    net.scout_iface = args.scout_iface.clone();
    net.scout_port = args.scout_port;
    match &args.cluster_key {
        Some(path) => {
            let key = ClusterKey::load(path)?;
            net.tls = Some(key.issue_node_cert(node)?);
            info!(
                fingerprint = %key.fingerprint(),
                "cluster key loaded: the control plane (zenoh), the runners' data plane and model-file transfers run over mutual TLS"
            );
        }
        None => warn!(
            "no --cluster-key: this node joins an open cluster; anyone on the network can join it and read its \
             traffic (create a key with `shoal keygen`)"
        ),
    }
    // The runners use the node's certificate on the data plane (SYSTEM.md §10.4); every certificate of the cluster
    // carries NODE_DNS_NAME, the name a dialling rank checks.
    let data_plane_tls = net.tls.as_ref().map(|tls| shoal_runner::proto::DataPlaneTls {
        ca_pem: tls.ca_pem.clone(),
        cert_pem: tls.cert_pem.clone(),
        key_pem: tls.key_pem.clone(),
        server_name: shoal_net::cluster_key::NODE_DNS_NAME.to_owned(),
    });
    // And on the model-file server and the fetches from peers (issue 18).
    let share_tls = match &net.tls {
        Some(tls) => Some(shoal_share::ShareTls::new(tls).context("the model-file server's TLS")?),
        None => None,
    };
    let boot = u64::from_le_bytes(random_bytes()?);
    let mut node_config = NodeConfig::new(node, boot);
    // The instances' data-plane tokens derive from this secret, drawn from the OS, never from anything others see.
    getrandom::fill(&mut node_config.token_secret).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    node_config.priority = u8::from(args.force_master);
    let config = ClusterConfig {
        net,
        node: node_config,
        faults: Faults::from_env(boot),
        data_dir: dir.clone(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The signal handlers are installed before "node ready" is logged: a SIGTERM sent by whoever waited for that
    // line must reach our handler, not the default action.
    let shutdown = runtime.block_on(async { shutdown_signal() })?;
    let cluster = Cluster::start(config, store)?;
    let handle = cluster.handle();

    let watchdog = watchdog::start(watchdog::STALL_LIMIT)?;
    let beats = handle.clone();
    watchdog::spawn_bumper(watchdog, runtime.handle(), move || beats.loop_beats());
    let worker = if args.no_worker {
        None
    } else {
        let store = shoal_models::ModelStore::new(dir.join("models"), args.models_dir.clone());
        let config = shoal_worker::WorkerConfig {
            exe: std::env::current_exe().context("cannot find the shoal binary to start runners")?,
            max_seqs: args.max_seqs,
            hung_after: std::time::Duration::from_secs_f64(args.runner_hung_after),
            threads: args.threads.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                |t| t as usize,
            ),
            kv_cache: args.kv_cache,
            on_progress: progress::bars(),
            data_plane: data_plane(&args.listen),
            data_plane_tls: data_plane_tls.clone(),
            share_tls,
        };
        Some(shoal_worker::Worker::start(handle.clone(), store, config)?)
    };
    let file_server = worker
        .as_ref()
        .and_then(shoal_worker::Worker::file_server_port)
        .map(|port| (data_plane(&args.listen), port));
    spawn_fact_reporter(
        handle.clone(),
        dir.clone(),
        !args.no_worker,
        file_server,
        runtime.handle(),
    );
    for (card, custom) in models {
        runtime.spawn(startup::place_at_start(handle.clone(), card, custom, !args.no_worker));
    }

    let mut http = None;
    if !args.no_api {
        let listener = runtime.block_on(bind(args.api_port))?;
        let addr = listener.local_addr()?;
        info!(%addr, "api listening");
        // The API reads headers, hashes files and counts prompts with a store over the same directories as the
        // worker's.
        let store = std::sync::Arc::new(shoal_models::ModelStore::new(
            dir.join("models"),
            args.models_dir.clone(),
        ));
        let access = shoal_api::Access {
            api_key: args.api_key.clone(),
            cors_origins: args.cors_origin.clone(),
        };
        let mut collectors = worker.as_ref().map(metrics::collectors).unwrap_or_default();
        let http_counters = std::sync::Arc::new(shoal_api::server::Counters::default());
        collectors.push(Box::new(shoal_api::server::CountersCollector(http_counters.clone())));
        let limits = shoal_api::server::Limits {
            max_connections: args.max_connections,
            read_timeout: std::time::Duration::from_secs(args.http_read_timeout),
        };
        let api = runtime.block_on(async {
            shoal_api::Api::start(handle.clone(), args.stream_ttl * 1000, Some(store), access, collectors)
        });
        api.streams.set_max_open(args.max_streams);
        let router = shoal_api::router(api.clone());
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(async move {
            let stopped = async {
                let _ = http_stopped.await;
            };
            shoal_api::server::serve(listener, router, limits, http_counters, stopped).await;
        });
        http = Some((api, stop_http, server));
    }
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "node ready");
    runtime.block_on(shutdown);
    info!("shutting down");
    if let Some((api, stop_http, server)) = http {
        // Every open stream ends with an error and its dialect's terminator, new requests get 503, then the server
        // stops accepting and waits (bounded) for the responses in flight to be written.
        let closed = api.streams.stop_all("the node is shutting down", true);
        info!(closed, "open streams ended");
        let _ = stop_http.send(());
        // The timer needs the runtime's context: built inside the future.
        if runtime
            .block_on(async { tokio::time::timeout(HTTP_DRAIN, server).await })
            .is_err()
        {
            tracing::warn!("responses still open after {} ms; closing them", HTTP_DRAIN.as_millis());
        }
    }
    drop(worker);
    cluster.shutdown();
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// The log's writer: stderr, where a write that fails (the terminal or the pipe that read the log went away) is
/// dropped. tracing-subscriber reports a failed write by printing to stderr, which panics on a closed pipe and
/// would kill a node that must keep serving (or stop cleanly) without its log reader.
struct LogSink(std::io::Stderr);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// How long a stopping node waits for its open HTTP responses to be written.
const HTTP_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the API port; the caller logs the bound address (tests start nodes on port 0 and read it).
async fn bind(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--api-port {port}: cannot listen on {addr}: {e}"))
}

/// The runners' data plane follows the node's cluster endpoints: pinned `--listen` addresses (tests pin loopback)
/// pin it too; otherwise it listens on every interface and advertises the node's addresses.
fn data_plane(listen: &[String]) -> shoal_worker::DataPlane {
    let ips: Option<Vec<std::net::IpAddr>> = listen
        .iter()
        .map(|endpoint| {
            let addr = endpoint.split_once('/')?.1;
            let addr = addr.split('#').next()?;
            let ip = addr.parse::<std::net::SocketAddr>().ok()?.ip();
            (!ip.is_unspecified()).then_some(ip)
        })
        .collect();
    match ips {
        Some(ips) if !ips.is_empty() => shoal_worker::DataPlane::Only(ips),
        _ => shoal_worker::DataPlane::AllInterfaces,
    }
}

/// Every open client stream holds a socket: a node serving a thousand streams needs more than the usual soft limit
/// of 1,024 descriptors. Raises the soft limit to the hard one (what servers commonly do); a failure only logs.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "cannot raise the open files limit");
        }
    }
}

/// §13's store limits. The registry's snapshot test shrinks retention with `SHOAL_TEST_RETAIN_EVENTS` and
/// `SHOAL_TEST_CHECKPOINT_EVENTS`, so a lagging follower must re-sync by snapshot (never set them in production).
fn store_config() -> StoreConfig {
    let mut config = StoreConfig::default();
    let read = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = read("SHOAL_TEST_RETAIN_EVENTS") {
        config.retain_events = n;
    }
    if let Some(n) = read("SHOAL_TEST_CHECKPOINT_EVENTS") {
        config.checkpoint_every_events = n.max(1);
    }
    config
}

fn random_bytes() -> anyhow::Result<[u8; 8]> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(bytes)
}

/// §10.2 rule 9 and §13: facts at start, then memory sampled every second and reported when it moved enough, and
/// the interfaces every 10 s (a DHCP lease or a new NIC), with the model-file server's addresses on them (a node
/// with a worker; `file_server` is where it binds and its port).
fn spawn_fact_reporter(
    cluster: ClusterHandle,
    dir: PathBuf,
    worker: bool,
    file_server: Option<(shoal_worker::DataPlane, u16)>,
    runtime: &tokio::runtime::Handle,
) {
    let serves = move |interfaces: &[shoal_types::model::Iface]| {
        file_server
            .as_ref()
            .map_or_else(Vec::new, |(plane, port)| plane.advertised(interfaces, *port))
    };
    runtime.spawn(async move {
        let mut facts = facts::gather(&dir, worker);
        let interfaces = facts
            .iter()
            .find_map(|f| match f {
                NodeFact::Interfaces(i) => Some(i.clone()),
                _ => None,
            })
            .unwrap_or_default();
        facts.push(NodeFact::FileServer(serves(&interfaces)));
        let mut reported_memory = facts.iter().find_map(|f| match f {
            NodeFact::Memory(m) => Some(*m),
            _ => None,
        });
        if cluster.set_facts(facts.clone()).is_err() {
            return;
        }
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        for second in 1u64.. {
            ticker.tick().await;
            let mut changed = false;
            if let Ok(memory) = facts::memory()
                && reported_memory.is_none_or(|old| facts::memory_changed_enough(&old, &memory))
            {
                reported_memory = Some(memory);
                changed = true;
                for fact in &mut facts {
                    if let NodeFact::Memory(m) = fact {
                        *m = memory;
                    }
                }
            }
            if second % 10 == 0 {
                let interfaces = facts::interfaces();
                for fact in &mut facts {
                    if let NodeFact::Interfaces(old) = fact
                        && *old != interfaces
                    {
                        *old = interfaces.clone();
                        changed = true;
                    }
                }
                for fact in &mut facts {
                    if let NodeFact::FileServer(old) = fact {
                        *old = serves(&interfaces);
                    }
                }
            }
            if !changed {
                continue;
            }
            if cluster.set_facts(facts.clone()).is_err() {
                return;
            }
        }
    });
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let key = ClusterKey::generate()?;
    key.write_new(out)?;
    println!(
        "wrote cluster key {} (fingerprint {}); start every node with --cluster-key {}",
        out.display(),
        key.fingerprint(),
        out.display()
    );
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
