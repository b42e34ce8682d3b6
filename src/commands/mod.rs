//! One module per subcommand.

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::CliError;

mod eval;
mod serve;
mod validate;

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
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
