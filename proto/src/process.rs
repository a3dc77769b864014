//! Process plumbing shared by both ends of the API (`tandem-loader` and
//! `tandem-processor`): logging set-up, the async runtime, and signal handling.

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::ValueEnum;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global log subscriber on stderr. `RUST_LOG`, when set, overrides
/// `level`. Colours only on a terminal, and never with `NO_COLOR`.
pub fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v)
            .map_err(|e| anyhow::anyhow!("RUST_LOG={v:?} is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| {
            anyhow::anyhow!(
                "log level {level:?} is invalid (use error, warn, info, debug or trace): {e}"
            )
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Sets up logging, runs `main` on a multi-thread runtime (the OTLP exporters
/// deadlock on a current-thread one) and turns its outcome into an exit code: 0, or
/// `error_code` with the error on stderr (2 when logging cannot be set up).
pub fn run<F>(program: &str, format: LogFormat, level: &str, error_code: u8, main: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = init_logging(format, level) {
        eprintln!("{program}: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{program}: {e:#}");
            ExitCode::from(error_code)
        }
    }
}

/// Cancels the returned token on SIGTERM or SIGINT. Call inside the runtime.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
        t.cancel();
    });
    Ok(token)
}
