//! One module per subcommand.

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::CliError;

mod bench;
mod eval;
mod serve;
mod validate;

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Bench {
            target,
            workload,
            flag,
            connections,
            concurrency,
            seconds,
            rate,
            users,
        } => bench::run(bunting::loadgen::LoadConfig {
            target,
            workload: match workload {
                crate::cli::WorkloadArg::Single => bunting::loadgen::Workload::Single,
                crate::cli::WorkloadArg::Bulk => bunting::loadgen::Workload::Bulk,
            },
            flag,
            connections,
            concurrency,
            duration: std::time::Duration::from_secs(seconds),
            warm_up: std::time::Duration::from_secs(1),
            rate,
            users,
        }),
        Command::Serve {
            config,
            flags,
            port,
            metrics_port,
        } => serve::run(config.as_deref(), flags, port, metrics_port),
        Command::Eval {
            flags,
            flag,
            context,
            flag_type,
            options,
        } => eval::run(&flags, &flag, &context, flag_type, &options),
        Command::Validate { files, schema } => validate::run(&files, schema),
    }
}
