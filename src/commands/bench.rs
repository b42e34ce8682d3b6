//! `bunting bench`: drive a running node and print what it sustained; or, for scripts, prepare a
//! PostgreSQL-backed node for the experiment workload.

use std::process::ExitCode;

use crate::loadgen::{self, LoadConfig, SetupConfig};

use crate::error::CliError;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

pub fn run(config: LoadConfig) -> Result<ExitCode, CliError> {
    let runtime = runtime()?;
    let tracking = if config.workload == loadgen::Workload::Experiment {
        format!(" track_ratio={} event={}", config.track_ratio, config.event)
    } else {
        String::new()
    };
    println!(
        "target={} workload={:?} flag={} connections={} concurrency={} rate={}{tracking}",
        config.target,
        config.workload,
        config.flag,
        config.connections,
        config.concurrency,
        config
            .rate
            .map_or_else(|| "closed-loop".to_owned(), |r| format!("{r:.0}/s"))
    );
    let report = runtime.block_on(loadgen::run(config))?;
    println!("{report}");
    let track_failures = report.tracks.as_ref().map_or(0, |t| t.errors + t.uncounted);
    Ok(if report.errors == 0 && track_failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn setup(config: SetupConfig) -> Result<ExitCode, CliError> {
    let prepared = runtime()?.block_on(loadgen::prepare(&config))?;
    match prepared.experiment {
        Some(id) => println!(
            "flag {:?} in set {:?} served, experiment {id:?} running",
            prepared.flag,
            loadgen::FLAG_SET
        ),
        None => println!(
            "flag {:?} in set {:?} served, no experiment",
            prepared.flag,
            loadgen::FLAG_SET
        ),
    }
    Ok(ExitCode::SUCCESS)
}
