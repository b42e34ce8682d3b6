//! `bunting bench`: drive a running node and print what it sustained.

use std::process::ExitCode;

use bunting::loadgen::{self, LoadConfig};

use crate::error::CliError;

pub fn run(config: LoadConfig) -> Result<ExitCode, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    println!(
        "target={} workload={:?} connections={} concurrency={} rate={}",
        config.target,
        config.workload,
        config.connections,
        config.concurrency,
        config
            .rate
            .map_or_else(|| "closed-loop".to_owned(), |r| format!("{r:.0}/s"))
    );
    let report = runtime.block_on(loadgen::run(config))?;
    println!("{report}");
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
