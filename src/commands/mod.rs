//! One module per subcommand.

use std::process::ExitCode;

use crate::cli::{Cli, Command, FlagsAction};
use bunting_node::auth::client::{AuthChannel, Bearer};
use bunting_stores::secret_url::RedactedUrl;

use crate::error::CliError;

mod admin_client;
mod audit;
mod bench;
mod cluster;
mod eval;
mod experiment;
mod flags;
mod flags_read;
mod resolve;
mod rollback;
mod rollout;
mod schedule;
mod serve;
mod tokens;
mod validate;

/// The environment variable client commands read their token from when `--token` is not given.
pub const TOKEN_ENV: &str = "BUNTING_TOKEN";

/// The token every client command sends: set once from `--token` or `$BUNTING_TOKEN` before any
/// command runs, and read by [`connect`], so no command can forget it.
static BEARER: std::sync::OnceLock<Bearer> = std::sync::OnceLock::new();

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let token = cli.token.or_else(|| std::env::var(TOKEN_ENV).ok());
    let bearer = Bearer::new(token.as_deref())
        .map_err(|e| CliError::Usage(format!("--token / ${TOKEN_ENV}: {e}")))?;
    let _ = BEARER.set(bearer.clone());
    match cli.command {
        Command::Bench {
            target,
            flag,
            event,
            setup_flag,
            setup_experiment,
            ..
        } if setup_flag || setup_experiment => bench::setup(crate::loadgen::SetupConfig {
            target,
            flag,
            experiment_event: setup_experiment.then_some(event),
            bearer,
        }),
        Command::Bench {
            target,
            workload,
            flag,
            connections,
            concurrency,
            seconds,
            rate,
            users,
            track_ratio,
            event,
            routed,
            ..
        } => bench::run(crate::loadgen::LoadConfig {
            bearer,
            target,
            workload: match workload {
                crate::cli::WorkloadArg::Single => crate::loadgen::Workload::Single,
                crate::cli::WorkloadArg::Bulk => crate::loadgen::Workload::Bulk,
                crate::cli::WorkloadArg::Experiment => crate::loadgen::Workload::Experiment,
            },
            flag,
            connections,
            concurrency,
            duration: std::time::Duration::from_secs(seconds),
            warm_up: std::time::Duration::from_secs(1),
            rate,
            users,
            track_ratio,
            event,
            routed,
        }),
        Command::Serve {
            config,
            flags,
            port,
            metrics_port,
            http_port,
            broken_flags,
        } => serve::run(
            config.as_deref(),
            serve::Overrides {
                flags,
                port,
                metrics_port,
                http_port,
                broken_flags,
            },
        ),
        Command::Eval {
            flags,
            flag,
            context,
            flag_type,
            options,
        } => eval::run(&flags, &flag, &context, flag_type, &options),
        Command::Validate {
            files,
            schema,
            options,
        } => validate::run(&files, schema, options.fractional),
        Command::Tokens { node, action } => tokens::run(&node, action),
        Command::Cluster { node, action } => cluster::run(&node, action),
        Command::Experiment { node, action } => experiment::run(&node, action),
        Command::Rollout { node, action } => rollout::run(&node, action),
        Command::Schedule { node, action } => schedule::run(&node, action),
        Command::Resolve {
            node,
            flag,
            context,
        } => resolve::run(&node, flag.as_deref(), &context),
        Command::Flags { action } => flags_command(action),
        Command::Audit {
            node,
            set,
            limit,
            before,
            all,
            json,
        } => audit::run(&audit::Query {
            again: match &set {
                Some(set) => format!("bunting audit --set {set} --limit {limit}"),
                None => format!("bunting audit --limit {limit}"),
            },
            node: &node,
            set: set.as_deref(),
            key: None,
            limit,
            before,
            all,
            json,
        }),
    }
}

fn flags_command(action: FlagsAction) -> Result<ExitCode, CliError> {
    match action {
        FlagsAction::Push {
            file,
            set,
            node,
            actor,
            prune,
        } => flags::push(&flags::Push {
            file: &file,
            set: &set,
            node: &node,
            actor: &actor,
            prune,
        }),
        FlagsAction::List { set, node, json } => flags_read::list(&node, set.as_deref(), json),
        FlagsAction::Get {
            key,
            set,
            node,
            json,
        } => flags_read::get(&node, &set, &key, json),
        FlagsAction::Delete {
            key,
            set,
            node,
            actor,
        } => flags_read::delete(&node, &set, &key, &actor),
        FlagsAction::History {
            key,
            set,
            node,
            limit,
            before,
            json,
        } => audit::run(&audit::Query {
            again: match &key {
                Some(key) => format!("bunting flags history {key} --set {set} --limit {limit}"),
                None => format!("bunting flags history --set {set} --limit {limit}"),
            },
            node: &node,
            set: Some(&set),
            key: key.as_deref(),
            limit,
            before,
            all: false,
            json,
        }),
        FlagsAction::Rollback {
            set,
            to_version,
            node,
            actor,
            dry_run,
        } => rollback::run(&rollback::Rollback {
            node: &node,
            set: &set,
            to_version,
            actor: &actor,
            dry_run,
        }),
    }
}

/// A channel to a node's gRPC port, sending the command's token; `node` is `host:port` or a URL.
async fn connect(node: &str) -> Result<AuthChannel, CliError> {
    let endpoint = if node.contains("://") {
        node.to_owned()
    } else {
        format!("http://{node}")
    };
    let connect = tonic::transport::Endpoint::from_shared(endpoint)
        .map_err(|source| CliError::Connect {
            node: RedactedUrl::new(node),
            source,
        })?
        .connect()
        .await;
    let channel = connect.map_err(|source| CliError::Connect {
        node: RedactedUrl::new(node),
        source,
    })?;
    Ok(BEARER.get().cloned().unwrap_or_default().wrap(channel))
}

/// A node's error answer, naming the node.
fn rpc_error(node: &str, status: &tonic::Status) -> CliError {
    CliError::Rpc {
        node: RedactedUrl::new(node),
        code: status.code(),
        message: status.message().to_owned(),
    }
}
