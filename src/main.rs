//! The `bunting` binary: argument parsing only. Each subcommand lives in `commands/`.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod error;
mod flag_file;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bunting: {e}");
            ExitCode::from(2)
        }
    }
}
