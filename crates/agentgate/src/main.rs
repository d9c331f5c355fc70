//! `agentgate`: the binary. Parses the command line, installs logging, dispatches to a
//! command, and turns the outcome into an exit status (64 for usage and config errors).

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { commands::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    agentgate_app::telemetry::init(cli.log_format == cli::LogFormat::Json);
    ExitCode::from(commands::dispatch(cli.command))
}
