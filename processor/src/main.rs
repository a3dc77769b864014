//! `tandem-processor`: the unprivileged half of tandem.

mod client;
#[allow(dead_code)] // wired into the pipeline with issue 4
mod config;
#[allow(dead_code)] // wired in with issue 4
mod export;
// Contracts between the issue-4 stages (stitch, config, export); their users land
// with those stages.
#[allow(dead_code)]
mod model;
#[allow(dead_code)] // wired in with issue 4
mod pipeline;
mod printer;
#[allow(dead_code)] // wired into the pipeline with issue 4
mod protocols;
#[allow(dead_code)]
mod settings;
mod stats;
#[allow(dead_code)] // wired into the pipeline with issue 4
mod stitch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tandem_proto::v1::LossLocation;
use tandem_proto::{selection, Event, Selection};
use tracing::{info, warn};

use crate::client::ClientConfig;
use crate::printer::{PrintFormat, Printer};
use crate::stats::{SeqCheck, Stats};
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

    /// Select processes listening on these ports (OBI syntax: 80,443,8000-8999).
    #[arg(long, env = "OTEL_EBPF_OPEN_PORT", value_parser = parse_ports)]
    open_port: Option<Ports>,

    /// Select processes whose executable path matches this glob (e.g. */nginx).
    #[arg(long = "exe", env = "OTEL_EBPF_AUTO_TARGET_EXE")]
    exe_globs: Vec<String>,

    /// Select these pids (repeat or comma-separate).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,

    /// Select processes in these containers (id or unique prefix of >= 12 hex digits).
    #[arg(long = "container-id", value_delimiter = ',')]
    container_ids: Vec<String>,

    /// How to print received events on stdout.
    #[arg(long, env = "TANDEM_PRINT", value_enum, default_value = "text")]
    print: PrintFormat,

    /// Log format on stderr.
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, env = "TANDEM_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

/// Port ranges parsed from OBI's syntax (one clap value, not a list of values).
#[derive(Debug, Clone)]
struct Ports(Vec<tandem_proto::v1::PortRange>);

fn parse_ports(text: &str) -> Result<Ports, String> {
    selection::parse_port_ranges(text).map(Ports)
}

impl Cli {
    fn selection(&self) -> Selection {
        Selection {
            ports: self.open_port.clone().map(|p| p.0).unwrap_or_default(),
            exe_globs: self.exe_globs.clone(),
            pids: self.pids.clone(),
            container_ids: self.container_ids.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, level) = (cli.log_format, cli.log_level.clone());
    // Every error here is one of configuration or of refusal by the loader: exit 2.
    tandem_proto::process::run("tandem-processor", format, &level, 2, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let selection = cli.selection();
    if selection.is_empty() {
        warn!("no selection given (--open-port, --exe, --pid, --container-id): subscribing to every process");
    }
    let shutdown = shutdown_on_signals()?;
    let printer = Printer::new(cli.print);
    let mut stats = Stats::default();
    let config = ClientConfig {
        socket: cli.socket.clone(),
        name: cli.name.clone(),
        selection,
    };
    let result = client::run(config, shutdown, |batch| {
        let check = stats.record_batch(
            batch.subscription_epoch,
            batch.subscription_seq,
            &batch.events,
        );
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
                let marker = Event::loss(
                    batch.events.first().map_or(0, |e| e.mono_ns),
                    n,
                    LossLocation::InTransit,
                    "in transit: gap in the subscription sequence (a previous processor \
                     stopped with events in flight)",
                );
                print_or_warn(&printer, &[marker], batch.realtime_offset_ns);
            }
            SeqCheck::Restarted => {
                info!("subscription sequence restarted (new loader or expired subscription)")
            }
        }
        print_or_warn(
            &printer,
            &batch.events[check.skip()..],
            batch.realtime_offset_ns,
        );
    })
    .await;
    info!("processor stopped: {stats}");
    result.map_err(Into::into)
}

fn print_or_warn(printer: &Printer, events: &[Event], offset: i64) {
    if let Err(e) = printer.print(events, offset) {
        warn!("cannot write to stdout: {e}");
    }
}
