//! `tandem-loader`: the privileged half of tandem.

mod analyse;
mod cli;
mod clock;
mod hub;
mod posture;
#[cfg(feature = "dev-sources")]
mod record;
mod selection;
mod server;
mod source;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The sandboxed ELF analyser (`analyse`): before anything else runs.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(analyse::CHILD_ARG) {
        analyse::child_main(&args[1..]);
    }
    let cli = cli::Cli::parse();
    if let Some(cli::Command::Capabilities(args)) = &cli.command {
        return cli::capabilities(args);
    }
    let (format, level) = (cli.log_format, cli.log_level.clone());
    tandem_proto::process::run("tandem-loader", format, &level, 1, cli::run(cli))
}
