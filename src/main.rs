//! The `bunting` binary: argument parsing only. Each subcommand lives in `commands/`.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod error;
mod flag_file;
mod loadgen;

/// mimalloc, not the system allocator: glibc's per-thread arenas keep memory freed by closed
/// streams and replaced flag sets, so a node's RSS stayed near its peak; mimalloc returns freed
/// pages to the OS (figures in BENCHMARKS.md, "Memory comes back").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
