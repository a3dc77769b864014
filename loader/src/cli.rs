//! Command line of `tandem-loader` and the `serve` flow.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::hub::{Hub, HubConfig};
use crate::posture::Posture;
use crate::server::{self, Allowlist, SocketConfig};
use crate::source::ebpf::{EbpfArgs, EbpfSource};
#[cfg(feature = "dev-sources")]
use crate::source::replay::ReplaySource;
#[cfg(feature = "dev-sources")]
use crate::source::synthetic::SyntheticSource;
use crate::source::{EventSource, SourceContext};
use tandem_proto::process::{shutdown_on_signals, LogFormat};
use tandem_security::report::{Options, Report, SocketAllowlist, Stage};

/// Default socket path (shared with processors through a volume in Kubernetes).
pub const DEFAULT_SOCKET: &str = "/var/run/tandem/loader.sock";

#[derive(Debug, Parser)]
#[command(
    name = "tandem-loader",
    version,
    about = "tandem's privileged half: captures raw events and serves them to processors over a Unix socket",
    long_about = "tandem's privileged half. It captures raw events (processes, TCP connections, \
bytes read and written) and streams them, unparsed, to tandem processors over gRPC \
(tandem.loader.v1) on a Unix socket. It checks every peer's credentials against an \
allowlist and never parses payloads.\n\n\
Without a subcommand it serves. `record` writes events to a capture file instead. \
`capabilities` reports this process's capabilities and the kernel's facilities against \
what each feature needs (`--strict` for audits).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,

    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "TANDEM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, env = "TANDEM_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve events to processors over the Unix socket (the default).
    Serve(ServeArgs),
    /// Write events from a source to a capture file (.tcap), losing none.
    ///
    /// The file writer applies backpressure to its source: while its queue is full,
    /// the synthetic and replay sources wait, so every event they produce is written.
    /// The ebpf source waits too, but the kernel does not: traffic faster than the
    /// writer fills the kernel ring buffer, whose drops are counted and written as
    /// Loss events (location: kernel ring buffer), and the summary line says so
    /// (raise --ring-buffer-kib or lower --capture-bytes).
    ///
    /// Not in the loader image (built without the `dev-sources` feature).
    #[cfg(feature = "dev-sources")]
    Record(RecordArgs),
    /// Report this process's capabilities against what each loader feature needs.
    ///
    /// The five capability sets, uid/gid, no_new_privs, seccomp, the kernel's
    /// facilities, which features work and what each one misses, and what is held but
    /// needed by no feature (excess). Run it with the loader's privileges (same user,
    /// capabilities, container) to audit a deployment; see docs/security.md.
    Capabilities(CapabilitiesArgs),
}

/// Options of `tandem-loader capabilities`.
#[derive(Debug, Args, Clone)]
pub struct CapabilitiesArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Exit with status 3 when a capability is held that no checked feature needs
    /// (excess) or a checked feature is unavailable; 0 otherwise.
    #[arg(long)]
    pub strict: bool,

    /// Features to check (repeat or comma-separate): syscall_capture,
    /// sock_tracepoints, process_discovery, tls_uprobes [default: all].
    #[arg(long = "feature", value_delimiter = ',', value_name = "ID")]
    pub features: Vec<String>,

    /// Check what the features need once attached (the set the serving loader keeps
    /// after dropping) instead of what loading and attaching needs.
    #[arg(long)]
    pub running: bool,

    /// Uids allowed to connect, as for serving (shown in the report).
    #[arg(long = "allow-uid", env = "TANDEM_ALLOW_UIDS", value_delimiter = ',')]
    pub allow_uids: Vec<u32>,

    /// Gids allowed to connect, as for serving (shown in the report).
    #[arg(long = "allow-gid", env = "TANDEM_ALLOW_GIDS", value_delimiter = ',')]
    pub allow_gids: Vec<u32>,

    /// Group owning the socket, as for serving (shown in the report).
    #[arg(long, env = "TANDEM_SOCKET_GROUP")]
    pub socket_group: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// TCP traffic of the selected processes, captured by eBPF programs (needs
    /// root or CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE).
    Ebpf,
    /// Events from a capture file (--replay).
    #[cfg(feature = "dev-sources")]
    Replay,
    /// Deterministic demo HTTP traffic, for demos and benchmarks.
    #[cfg(feature = "dev-sources")]
    Synthetic,
}

/// Where events come from.
#[derive(Debug, Args, Clone)]
pub struct SourceArgs {
    /// Event source [default: replay when --replay is given, ebpf otherwise].
    #[arg(long, env = "TANDEM_SOURCE", value_enum)]
    pub source: Option<SourceKind>,

    /// Options of --source ebpf.
    #[command(flatten)]
    pub ebpf: EbpfArgs,

    /// Capture file for --source replay.
    #[cfg(feature = "dev-sources")]
    #[arg(long, env = "TANDEM_REPLAY_FILE", value_name = "FILE")]
    pub replay: Option<PathBuf>,

    /// Events per second for --source replay, and requests per second for
    /// --source synthetic; 0 means as fast as possible.
    #[cfg(feature = "dev-sources")]
    #[arg(long, env = "TANDEM_REPLAY_RATE", default_value_t = 0.0)]
    pub rate: f64,

    /// Number of subscriptions to wait for before replaying or generating anything.
    #[arg(long, env = "TANDEM_WAIT_SUBSCRIBERS", default_value_t = 1)]
    pub wait_subscribers: usize,

    /// HTTP exchanges produced by --source synthetic.
    #[cfg(feature = "dev-sources")]
    #[arg(long, default_value_t = 1000)]
    pub synthetic_requests: u64,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Unix socket to serve on. Its directory is created; the socket gets mode 0660.
    #[arg(long, env = "TANDEM_LOADER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Uids allowed to connect (repeat or comma-separate). Default: 0 and the loader's
    /// own uid. Giving any replaces the default uids.
    #[arg(long = "allow-uid", env = "TANDEM_ALLOW_UIDS", value_delimiter = ',')]
    pub allow_uids: Vec<u32>,

    /// Gids allowed to connect (repeat or comma-separate). Default: the --socket-group,
    /// if any.
    #[arg(long = "allow-gid", env = "TANDEM_ALLOW_GIDS", value_delimiter = ',')]
    pub allow_gids: Vec<u32>,

    /// Group (gid) to own the socket, so processors in that group can connect.
    #[arg(long, env = "TANDEM_SOCKET_GROUP")]
    pub socket_group: Option<u32>,

    /// Events each subscription may queue before the loader drops (and counts) them.
    #[arg(long, env = "TANDEM_QUEUE_CAPACITY", default_value_t = HubConfig::default().queue_capacity)]
    pub queue_capacity: usize,

    /// Most events per batch sent to a processor.
    #[arg(long, env = "TANDEM_MAX_BATCH", default_value_t = HubConfig::default().max_batch)]
    pub max_batch: usize,

    /// Seconds a named subscription keeps queueing after its processor went away.
    #[arg(long, env = "TANDEM_SUBSCRIPTION_RETENTION_SECS", default_value_t = HubConfig::default().retention.as_secs())]
    pub retention_secs: u64,
}

#[cfg(feature = "dev-sources")]
#[derive(Debug, Args, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Capture file to write.
    #[arg(long, short)]
    pub output: PathBuf,

    /// Stop after this many events (0: until the source ends or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub max_events: u64,

    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub duration_secs: u64,

    /// Events queued between the source and the file writer. Recording never drops
    /// them: a full queue holds the source back until the writer catches up.
    #[arg(long, default_value_t = HubConfig::default().queue_capacity)]
    pub queue_capacity: usize,
}

impl SourceArgs {
    /// Features of the capability model the chosen source uses with these options.
    pub fn features(&self) -> Vec<tandem_security::FeatureId> {
        match self.kind() {
            SourceKind::Ebpf => crate::source::ebpf::used_features(&self.ebpf),
            #[cfg(feature = "dev-sources")]
            SourceKind::Replay | SourceKind::Synthetic => Vec::new(),
        }
    }

    /// The chosen source: explicit, or implied by --replay, or ebpf.
    pub fn kind(&self) -> SourceKind {
        #[cfg(feature = "dev-sources")]
        if self.source.is_none() && self.replay.is_some() {
            return SourceKind::Replay;
        }
        self.source.unwrap_or(SourceKind::Ebpf)
    }

    /// Builds the chosen source, failing early on a bad file or option.
    pub fn build(&self, wait_subscribers: usize) -> anyhow::Result<Box<dyn EventSource>> {
        #[cfg(feature = "dev-sources")]
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            anyhow::bail!("--rate must be a finite number >= 0, got {}", self.rate);
        }
        #[cfg(not(feature = "dev-sources"))]
        let _ = wait_subscribers;
        match self.kind() {
            SourceKind::Ebpf => Ok(Box::new(EbpfSource::new(&self.ebpf)?)),
            #[cfg(feature = "dev-sources")]
            SourceKind::Replay => {
                let Some(path) = &self.replay else {
                    anyhow::bail!(
                        "--source replay needs a capture file: pass --replay FILE (or set TANDEM_REPLAY_FILE)"
                    );
                };
                Ok(Box::new(ReplaySource::open(
                    path,
                    self.rate,
                    wait_subscribers,
                )?))
            }
            #[cfg(feature = "dev-sources")]
            SourceKind::Synthetic => Ok(Box::new(SyntheticSource {
                requests: self.synthetic_requests,
                rate: self.rate,
                wait_subscribers,
            })),
        }
    }
}

impl ServeArgs {
    fn hub_config(&self) -> anyhow::Result<HubConfig> {
        if self.queue_capacity == 0 || self.max_batch == 0 {
            anyhow::bail!("--queue-capacity and --max-batch must be at least 1");
        }
        Ok(HubConfig {
            queue_capacity: self.queue_capacity,
            max_batch: self.max_batch,
            retention: Duration::from_secs(self.retention_secs),
            ..HubConfig::default()
        })
    }

    fn allowlist(&self) -> Allowlist {
        allowlist(&self.allow_uids, &self.allow_gids, self.socket_group)
    }
}

/// The socket allowlist from the --allow-uid / --allow-gid / --socket-group flags.
fn allowlist(allow_uids: &[u32], allow_gids: &[u32], socket_group: Option<u32>) -> Allowlist {
    {
        let uids = if allow_uids.is_empty() {
            let me = nix::unistd::geteuid().as_raw();
            let mut v = vec![0];
            if me != 0 {
                v.push(me);
            }
            v
        } else {
            allow_uids.to_vec()
        };
        let mut gids = allow_gids.to_vec();
        if let Some(g) = socket_group {
            if !gids.contains(&g) {
                gids.push(g);
            }
        }
        Allowlist { uids, gids }
    }
}

fn socket_allowlist(a: &Allowlist, socket_group: Option<u32>) -> SocketAllowlist {
    SocketAllowlist {
        uids: a.uids.clone(),
        gids: a.gids.clone(),
        socket_group,
    }
}

/// `tandem-loader capabilities`: prints the report; exit status 3 when `--strict`
/// fails, 1 when the process's status cannot be read.
pub fn capabilities(args: &CapabilitiesArgs) -> ExitCode {
    let allow = allowlist(&args.allow_uids, &args.allow_gids, args.socket_group);
    let mut opts = Options::all_features();
    if !args.features.is_empty() {
        opts.enabled = args.features.clone();
    }
    if args.running {
        opts.stage = Stage::Running;
    }
    opts.allowlist = Some(socket_allowlist(&allow, args.socket_group));
    let report = match Report::collect(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tandem-loader: cannot read /proc/self/status: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if args.strict && !report.strict_ok() {
        for p in &report.problems {
            eprintln!("strict: {p}");
        }
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

/// Runs the chosen command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Capabilities(args)) => {
            // Normally handled in main before the runtime starts.
            match capabilities(&args) {
                ExitCode::SUCCESS => Ok(()),
                _ => anyhow::bail!("capability report failed"),
            }
        }
        #[cfg(feature = "dev-sources")]
        Some(Command::Record(args)) => crate::record::record(args).await,
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let hub = Hub::new(args.hub_config()?);
    let source = args.source.build(args.source.wait_subscribers)?;
    hub.set_source(source.name());
    let allow = args.allowlist();
    let posture = Arc::new(Posture::new(
        &args.source.features(),
        Some(socket_allowlist(&allow, args.socket_group)),
    ));
    let socket = SocketConfig {
        path: args.socket.clone(),
        group: args.socket_group,
    };
    let listener = server::bind(&socket)?;
    let shutdown = shutdown_on_signals()?;

    let ctx = SourceContext {
        sink: hub.clone(),
        selection: hub.selection(),
        shutdown: shutdown.clone(),
        posture: posture.clone(),
    };
    let source_hub = hub.clone();
    let source_task = tokio::spawn(async move {
        let name = source.name();
        match source.run(ctx).await {
            Ok(()) => info!(source = name, "event source finished"),
            Err(e) => error!(source = name, "event source failed: {e:#}"),
        }
        source_hub.set_source_finished();
    });
    spawn_expiry(hub.clone(), shutdown.clone());

    let result = server::serve(
        listener,
        &socket.path,
        hub.clone(),
        posture,
        allow,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(5), source_task)
        .await
        .is_err()
    {
        warn!("event source did not stop within 5s");
    }
    let info = hub.info();
    info!(
        ingested = info.events_ingested,
        unrouted = info.events_unrouted,
        lost_at_source = info.events_lost_at_source,
        "loader stopped"
    );
    result
}

/// Periodically ends named subscriptions nobody came back for.
fn spawn_expiry(hub: Arc<Hub>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => hub.expire(Instant::now()),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}
