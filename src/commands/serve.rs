//! `bunting serve`: run one node until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bunting_node::config::{Config, FlagSourceConfig};
use bunting_stores::file::BrokenFlags;
use tracing_subscriber::EnvFilter;

use crate::cli::BrokenFlagsArg;
use crate::error::CliError;

/// Where `bunting serve` without `--config` keeps per-user experiment state and statistics.
const EMBEDDED_DATA_DIR: &str = "bunting-data";

/// What the command line says over the config.
#[derive(Debug)]
pub struct Overrides {
    pub flags: Option<PathBuf>,
    pub port: Option<u16>,
    pub metrics_port: Option<u16>,
    pub http_port: Option<u16>,
    pub broken_flags: Option<BrokenFlagsArg>,
}

/// `RUST_LOG`'s filter (`info` without it), with ractor_cluster's node server held to errors
/// unless `RUST_LOG` names ractor_cluster: it warns on every session that ends, including the
/// losing side of two nodes dialling each other at once, which every healthy start has. The
/// cluster's connector reports sessions itself and warns only about those that matter (a
/// refused handshake whose peer never connected).
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let filter = rust_log
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    match rust_log.is_some_and(|spec| spec.contains("ractor_cluster")) {
        true => filter,
        false => match "ractor_cluster::node=error".parse() {
            Ok(directive) => filter.add_directive(directive),
            Err(_) => filter,
        },
    }
}

pub fn run(config: Option<&Path>, overrides: Overrides) -> Result<ExitCode, CliError> {
    let Overrides {
        flags,
        port,
        metrics_port,
        http_port,
        broken_flags: broken_flags_arg,
    } = overrides;
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .with_ansi(colour_logs())
        .init();
    let mut config = match config {
        Some(path) => Config::load(path)?,
        // The embedded defaults keep experiment state across restarts in the working directory;
        // a config file says where (`data_dir`), or leaves it in memory.
        None => Config {
            data_dir: Some(PathBuf::from(EMBEDDED_DATA_DIR)),
            ..Config::default()
        },
    };
    if let Some(path) = flags {
        let (set, broken_flags) = match &config.flags {
            FlagSourceConfig::File {
                set, broken_flags, ..
            } => (set.clone(), *broken_flags),
            FlagSourceConfig::Postgres { .. } => (config.default_set.clone(), Default::default()),
        };
        config.flags = FlagSourceConfig::File {
            path,
            set,
            broken_flags,
        };
    }
    if let Some(arg) = broken_flags_arg {
        match &mut config.flags {
            FlagSourceConfig::File { broken_flags, .. } => {
                *broken_flags = match arg {
                    BrokenFlagsArg::Refuse => BrokenFlags::Refuse,
                    BrokenFlagsArg::Serve => BrokenFlags::Serve,
                };
            }
            FlagSourceConfig::Postgres { .. } => {
                return Err(CliError::Usage(
                    "--broken-flags applies to a flag file; this config serves flags from \
                     PostgreSQL, which refuses a broken flag when it is written"
                        .to_owned(),
                ));
            }
        }
    }
    if let Some(port) = port {
        config.grpc_addr.set_port(port);
    }
    if let Some(port) = metrics_port {
        config.metrics_addr.set_port(port);
    }
    if let Some(port) = http_port {
        config.http_addr.set_port(port);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(bunting_node::server::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Colour codes only for a person at a terminal: a log written to a file or a pipe stays plain
/// text (issue 13), and `NO_COLOR` (no-color.org) turns them off anywhere.
fn colour_logs() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C still works");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
