//! `tandem-processor`: the unprivileged half of tandem.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tandem_proto::{selection, Selection};

use tandem_processor::config::Config;
use tandem_processor::printer::PrintFormat;
use tandem_processor::run::{run, RunOptions};
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
    /// Log format on stderr (default: the configuration's `log_format` /
    /// `OTEL_EBPF_LOG_FORMAT`, else text).
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,

    /// Log level (error, warn, info, debug, trace) [default: OTEL_EBPF_LOG_LEVEL, the
    /// configuration's log_level, or info]. RUST_LOG overrides it.
    #[arg(long)]
    log_level: Option<String>,

    /// How often the summary (what came in, went out, was lost) is logged, e.g. 60s,
    /// 5m; 0 logs it only at exit.
    #[arg(long, env = "TANDEM_SUMMARY_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    summary_interval: Duration,
}

/// Port ranges parsed from OBI's syntax (one clap value, not a list of values).
#[derive(Debug, Clone)]
struct Ports(Vec<tandem_proto::v1::PortRange>);

fn parse_ports(text: &str) -> Result<Ports, String> {
    selection::parse_port_ranges(text).map(Ports)
}

impl Cli {
    /// What the flags select.
    fn flag_selection(&self) -> Selection {
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
    let opts = RunOptions {
        socket: cli.socket.clone(),
        name: cli.name.clone(),
        extra_selection: cli.flag_selection(),
        print: cli.print,
        export_loader_posture: cli.export_loader_posture,
        summary_interval: cli.summary_interval,
    };
    // Every error here is one of configuration or of refusal by the loader: exit 2.
    let log_format = cli
        .log_format
        .or(config.log_format)
        .unwrap_or(LogFormat::Text);
    tandem_proto::process::run("tandem-processor", log_format, &level, 2, async move {
        let shutdown = shutdown_on_signals()?;
        run(opts, config, privileged, shutdown).await.map(|_| ())
    })
}
