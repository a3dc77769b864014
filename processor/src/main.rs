//! `tandem-processor`: the unprivileged half of tandem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tandem_proto::v1::LossLocation;
use tandem_proto::{selection, Event, EventKind, Selection};
use tracing::{info, warn};

use tandem_processor::client::{self, ClientConfig};
use tandem_processor::config::{Config, KubeEnable};
use tandem_processor::kube::discovery::KubeDiscovery;
use tandem_processor::pipeline::{self, Pipeline};
use tandem_processor::printer::{PrintFormat, Printer};
use tandem_processor::stats::{SeqCheck, Stats};
use tandem_processor::stitch::Stitcher;
use tandem_proto::process::{shutdown_on_signals, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "tandem-processor",
    version,
    about = "tandem's unprivileged half: subscribes to the loader's raw events and turns them into telemetry",
    long_about = "tandem's unprivileged half. It connects to the loader's Unix socket, subscribes \
with a selection of processes, and processes the raw events it receives. It needs no \
capabilities and should run as a non-root user.\n\n\
A processor reconnects (with backoff) when the loader is absent or restarts. Its \
subscription name makes the loader keep queueing for it while it is away: a processor \
started again with the same name receives what happened meanwhile."
)]
struct Cli {
    /// The loader's Unix socket.
    #[arg(
        long,
        env = "TANDEM_LOADER_SOCKET",
        default_value = "/var/run/tandem/loader.sock"
    )]
    socket: PathBuf,

    /// Subscription name. Processors running at the same time need different names; a
    /// replacement processor uses its predecessor's name to resume its subscription.
    #[arg(
        long,
        env = "TANDEM_PROCESSOR_NAME",
        default_value = "tandem-processor"
    )]
    name: String,

    /// OBI-style YAML configuration (default: $OTEL_EBPF_CONFIG_PATH). Environment
    /// variables override it; see docs/configuration.md.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Also select processes listening on these ports (OBI syntax: 80,443,8000-8999),
    /// in addition to OTEL_EBPF_OPEN_PORT / the configuration.
    #[arg(long, value_parser = parse_ports)]
    open_port: Option<Ports>,

    /// Also select processes whose executable path matches this glob (e.g. */nginx),
    /// in addition to OTEL_EBPF_AUTO_TARGET_EXE.
    #[arg(long = "exe")]
    exe_globs: Vec<String>,

    /// Select these pids (repeat or comma-separate).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,

    /// Select processes in these containers (id or unique prefix of >= 12 hex digits).
    #[arg(long = "container-id", value_delimiter = ',')]
    container_ids: Vec<String>,

    /// Also print the raw events received, one per line on stdout (for debugging;
    /// spans are printed by trace_printer / OTEL_EBPF_TRACE_PRINTER).
    #[arg(long, env = "TANDEM_PRINT", value_enum, default_value = "none")]
    print: PrintFormat,

    /// Refuse to start (exit status 2) when running as root or with any capability;
    /// without it the processor only warns. The processor needs no privileges.
    #[arg(long, env = "TANDEM_REFUSE_PRIVILEGED")]
    refuse_privileged: bool,

    /// Add the loader's capability posture (fetched on connect) to the resource of
    /// everything exported: tandem.loader.uid, .gid, .capabilities.effective,
    /// .capabilities.excess, .privileged, .no_new_privs. It is always logged.
    #[arg(long, env = "TANDEM_EXPORT_LOADER_POSTURE")]
    export_loader_posture: bool,

    /// Log format on stderr.
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace) [default: OTEL_EBPF_LOG_LEVEL, the
    /// configuration's log_level, or info]. RUST_LOG overrides it.
    #[arg(long)]
    log_level: Option<String>,
}

/// Port ranges parsed from OBI's syntax (one clap value, not a list of values).
#[derive(Debug, Clone)]
struct Ports(Vec<tandem_proto::v1::PortRange>);

fn parse_ports(text: &str) -> Result<Ports, String> {
    selection::parse_port_ranges(text).map(Ports)
}

impl Cli {
    /// The configuration's selection plus what the flags add.
    fn selection(&self, config: &Config) -> Selection {
        self.selection_with(config.selection())
    }

    /// `configured` plus what the flags add.
    fn selection_with(&self, configured: Selection) -> Selection {
        let flags = Selection {
            ports: self.open_port.clone().map(|p| p.0).unwrap_or_default(),
            exe_globs: self.exe_globs.clone(),
            pids: self.pids.clone(),
            container_ids: self.container_ids.clone(),
        };
        if flags.is_empty() {
            return configured;
        }
        if configured.is_empty() {
            return flags;
        }
        selection::union([&configured, &flags]).unwrap_or_default()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let privileged = tandem_security::privilege::privileges_held();
    if let (true, Some(why)) = (cli.refuse_privileged, &privileged) {
        eprintln!(
            "tandem-processor: refusing to run privileged (--refuse-privileged / \
             TANDEM_REFUSE_PRIVILEGED): this process {why}. The processor needs no \
             privileges: run it as a non-root user with no capabilities."
        );
        return ExitCode::from(2);
    }
    // Loaded before logging starts: it may set the log level.
    let config = match Config::load_from_process(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem-processor: {e}");
            return ExitCode::from(2);
        }
    };
    let level = cli
        .log_level
        .clone()
        .unwrap_or_else(|| config.log_level.map_or("info", |l| l.as_str()).to_owned());
    // Every error here is one of configuration or of refusal by the loader: exit 2.
    tandem_proto::process::run(
        "tandem-processor",
        cli.log_format,
        &level,
        2,
        run(cli, config, privileged),
    )
}

async fn run(cli: Cli, config: Config, privileged: Option<String>) -> anyhow::Result<()> {
    if let Some(why) = privileged {
        warn!(
            "running privileged: this process {why}. The processor needs no privileges; \
             whoever owns it gets them: run it as a non-root user with no capabilities \
             (--refuse-privileged makes this fatal)"
        );
    }
    // Kubernetes metadata (decoration, and discovery of k8s_* entries).
    let mut kube = None;
    if tandem_processor::kube::enabled(&config.kubernetes) {
        match tandem_processor::kube::Kube::start(&config.kubernetes).await {
            Ok(k) => kube = Some(k),
            Err(e) if config.kubernetes.enable == KubeEnable::True => return Err(e.into()),
            Err(e) => warn!("kubernetes metadata off (autodetect): {e}"),
        }
    }
    let discovery = KubeDiscovery::new(
        &config.discovery.instrument,
        &config.discovery.exclude_instrument,
    );
    for warning in config.warnings_for(kube.is_some()) {
        warn!("configuration: {warning}");
    }
    let mut selection_updates = None;
    let selection = match kube.as_mut() {
        Some(k) if discovery.is_active() => {
            let base = cli.selection_with(config.selection_without_kubernetes_entries());
            let rx = k.selection_updates(discovery, base);
            let first = rx.borrow().clone();
            selection_updates = Some(rx);
            first
        }
        _ => cli.selection(&config),
    };
    if selection.is_empty() {
        warn!("no selection given (OTEL_EBPF_OPEN_PORT, OTEL_EBPF_AUTO_TARGET_EXE, discovery.instrument, --open-port, --exe, --pid, --container-id): subscribing to every process");
    }
    let shutdown = shutdown_on_signals()?;
    let printer = Printer::new(cli.print);
    let mut pipeline = Pipeline::new(
        &config.routes,
        &config.export,
        pipeline::resource::local_host_name(),
    )?;
    if let Some(k) = &kube {
        pipeline.set_kubernetes(k.store.clone());
    }
    let mut stitcher = Stitcher::new();
    let mut stats = Stats::default();
    let mut transactions = Vec::new();
    let (posture_tx, mut posture_rx) = tokio::sync::watch::channel(None);
    let client_config = ClientConfig {
        socket: cli.socket.clone(),
        name: cli.name.clone(),
        selection,
        posture: Some(posture_tx),
        selection_updates,
    };
    let result = client::run(client_config, shutdown, |batch| {
        if posture_rx.has_changed().unwrap_or(false) {
            if let Some(summary) = posture_rx.borrow_and_update().as_ref() {
                pipeline.set_loader_posture(
                    &cli.name,
                    &pipeline::metrics::LoaderPosture {
                        excess: summary.excess.clone(),
                        privileged: summary.privileged.clone(),
                    },
                );
                if cli.export_loader_posture {
                    pipeline.set_loader_attributes(client::posture_attributes(summary));
                }
            }
        }
        let offset = batch.realtime_offset_ns;
        let check = stats.record_batch(
            batch.subscription_epoch,
            batch.subscription_seq,
            &batch.events,
        );
        let mut gap = None;
        match check {
            SeqCheck::Contiguous => {}
            SeqCheck::Duplicate(n) => info!(
                skipped = n,
                "skipped events sent again after a reconnection (already processed)"
            ),
            SeqCheck::Gap(n) => {
                warn!(
                    lost = n,
                    "events lost in transit (gap in the subscription sequence)"
                );
                gap = Some(Event::loss(
                    batch.events.first().map_or(0, |e| e.mono_ns),
                    n,
                    LossLocation::InTransit,
                    "in transit: gap in the subscription sequence (a previous processor \
                     stopped with events in flight)",
                ));
            }
            SeqCheck::Restarted => {
                info!("subscription sequence restarted (new loader or expired subscription)")
            }
        }
        let events = &batch.events[check.skip()..];
        for event in gap.iter().chain(events) {
            if let Some(EventKind::ProcessStarted(p)) = &event.kind {
                pipeline.on_process(p);
            }
            stitcher.push(event, offset, &mut transactions);
        }
        for tx in transactions.drain(..) {
            pipeline.on_transaction(&tx);
        }
        if let Some(marker) = &gap {
            print_or_warn(&printer, std::slice::from_ref(marker), offset);
        }
        print_or_warn(&printer, events, offset);
    })
    .await;
    let pipeline_stats = pipeline.shutdown().await;
    if let Some(k) = &kube {
        let (pods, deleted, replicasets, services) = k.store.sizes();
        info!(
            pods,
            deleted,
            replicasets,
            services,
            pods_synced = k.pods_synced(),
            pods_not_kept = k
                .store
                .overflow
                .pods
                .load(std::sync::atomic::Ordering::Relaxed),
            objects_not_kept = k
                .store
                .overflow
                .objects
                .load(std::sync::atomic::Ordering::Relaxed),
            "kubernetes metadata at exit"
        );
    }
    info!(
        stitch = ?stitcher.stats(),
        pipeline = ?pipeline_stats,
        "processor stopped: {stats}"
    );
    result.map_err(Into::into)
}

fn print_or_warn(printer: &Printer, events: &[Event], offset: i64) {
    if let Err(e) = printer.print(events, offset) {
        warn!("cannot write to stdout: {e}");
    }
}
