//! `tandem-loader`: the privileged half of tandem.

mod cli;
mod hub;
mod posture;
mod record;
mod selection;
mod server;
mod source;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Some(cli::Command::Capabilities(args)) = &cli.command {
        return cli::capabilities(args);
    }
    let (format, level) = (cli.log_format, cli.log_level.clone());
    tandem_proto::process::run("tandem-loader", format, &level, 1, cli::run(cli))
}
