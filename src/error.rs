//! What can stop a command before it produces an answer.

use std::path::PathBuf;

// `--node` may be a URL with credentials: errors name it redacted.
use bunting_stores::secret_url::RedactedUrl;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Definition {
        path: PathBuf,
        source: bunting_engine::DefinitionError,
    },
    #[error("--context: {0}")]
    ContextJson(serde_json::Error),
    #[error("--context: {0}")]
    Context(#[from] bunting_engine::ContextError),
    #[error(transparent)]
    Config(#[from] bunting_node::config::ConfigError),
    #[error(transparent)]
    Server(#[from] bunting_node::server::ServerError),
    #[error(transparent)]
    Load(#[from] crate::loadgen::LoadError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach node {node}: {source}")]
    Connect {
        node: RedactedUrl,
        source: tonic::transport::Error,
    },
    #[error("node {node} answered {code:?}: {message}")]
    Rpc {
        node: RedactedUrl,
        code: tonic::Code,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("node {node} answered {code:?} for experiment {id:?}: {message}")]
    ExperimentRpc {
        node: RedactedUrl,
        id: String,
        code: tonic::Code,
        message: String,
    },
    /// A paged list whose next cursor would not move on: following it would loop forever.
    #[error(
        "node {node} answered the page after {after:?} with next_after_id {next:?} and {count} \
         experiment(s); that does not move on, so the list stops here rather than loop"
    )]
    StuckPage {
        node: RedactedUrl,
        after: String,
        next: String,
        count: usize,
    },
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}
