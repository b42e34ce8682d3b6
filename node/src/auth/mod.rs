//! Authentication and authorization of every gRPC call (ARCHITECTURE.md, "Security model").
//!
//! - [`token`]: `bnt_<id>_<secret>` API tokens, hashed, compared in constant time.
//! - [`scope`]: scopes and the table of which method needs which.
//! - [`principal`]: who a caller is and which flag sets it may touch.
//! - [`certificate`]: client certificates' subjects as callers (`[[auth.certificates]]`).
//! - [`registry`]: the tokens a node accepts, in memory.
//! - [`store`]: where tokens live (PostgreSQL, or a file) and how the registry follows them.
//! - [`layer`]: the tower layer enforcing all of it in front of every service.
//! - [`client`]: the interceptor clients send their token with.

pub mod certificate;
pub mod client;
pub mod layer;
pub mod principal;
pub mod rate;
pub mod registry;
pub mod scope;
pub mod store;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use certificate::Certificates;
pub use layer::{AuthLayer, Open, Policy};
pub use principal::{Caller, FlagSets, Principal, PrincipalId};
pub use registry::Registry;
pub use scope::{Scope, Scopes};
pub use token::{ApiToken, TokenId};

use crate::config::{Config, FlagSourceConfig};
use store::PgTokenStore;

/// The environment variable the first admin token's secret may come from.
pub const BOOTSTRAP_ENV: &str = "BUNTING_BOOTSTRAP_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{BOOTSTRAP_ENV}: {0}")]
    BootstrapEnv(token::TokenParseError),
    #[error("auth.bootstrap_token_file {path}: {message}")]
    BootstrapFile { path: PathBuf, message: String },
    #[error(transparent)]
    TokensFile(#[from] store::TokenFileError),
    #[error(transparent)]
    Store(#[from] store::TokenStoreError),
    #[error(transparent)]
    Certificates(#[from] certificate::CertificateGrantError),
}

/// A node's authorization, ready to serve: the layer's policy, and the store the registry
/// follows (`None` on a file-backed node, whose tokens were read at start-up).
#[derive(Debug)]
pub struct Auth {
    pub policy: Policy,
    pub store: Option<PgTokenStore>,
    /// The bootstrap token, while it still has to be offered to the store (PostgreSQL was not
    /// reachable at start-up).
    pub pending_bootstrap: Option<ApiToken>,
}

/// The bootstrap secret: set in the config by whoever built it in code (tests), else the
/// environment, else `[auth] bootstrap_token_file`.
pub fn bootstrap_token(config: &Config) -> Result<Option<ApiToken>, AuthSetupError> {
    if let Some(token) = &config.auth.bootstrap_token {
        return Ok(Some(token.clone()));
    }
    if let Ok(text) = std::env::var(BOOTSTRAP_ENV) {
        return ApiToken::parse(text.trim())
            .map(Some)
            .map_err(AuthSetupError::BootstrapEnv);
    }
    match &config.auth.bootstrap_token_file {
        None => Ok(None),
        Some(path) => read_token_file(path).map(Some),
    }
}

fn read_token_file(path: &Path) -> Result<ApiToken, AuthSetupError> {
    let error = |message: String| AuthSetupError::BootstrapFile {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    ApiToken::parse(text.trim()).map_err(|e| error(e.to_string()))
}

/// Loads what the node will authorize with. A PostgreSQL node records the bootstrap token (if
/// the table is empty) and reads the table once now, so a node that has started accepts the
/// tokens that existed; if PostgreSQL is unreachable, the node starts refusing every token and
/// [`store::follow`] catches up once it is back.
pub async fn start(config: &Config) -> Result<Auth, AuthSetupError> {
    let bootstrap = bootstrap_token(config)?;
    let zero_config =
        matches!(config.flags, FlagSourceConfig::File { .. }) && config.cluster.is_none();
    let open = config.auth.open(zero_config);
    let registry = Arc::new(Registry::new());
    let (store, pending_bootstrap) = match &config.flags {
        FlagSourceConfig::File { .. } => {
            let mut entries = match &config.auth.tokens_file {
                Some(path) => store::load_file(path)?,
                None => Vec::new(),
            };
            // A file node has no table to record it in: accepted from memory, every start.
            entries.extend(bootstrap.as_ref().map(store::bootstrap_entry));
            registry.replace(entries);
            (None, None)
        }
        FlagSourceConfig::Postgres { url, .. } => {
            let store = PgTokenStore::connect_lazy(url)?;
            let mut pending = None;
            if let Some(token) = &bootstrap {
                match store.bootstrap(token).await {
                    Ok(true) => tracing::info!(id = %token.id(), "bootstrap token recorded"),
                    Ok(false) => tracing::info!(
                        "api_tokens is not empty: the bootstrap secret was not recorded again"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record the bootstrap token yet");
                        pending = Some(token.clone());
                    }
                }
            }
            if let Err(e) = store.refresh(&registry).await {
                // Without the table no token can be checked. Rather than lock the operator out of
                // a node that started during a PostgreSQL outage (it serves flags from the shared
                // tier), the bootstrap secret in its own environment is accepted until the table
                // is first read, which then replaces it (ARCHITECTURE.md, "Security model").
                registry.replace(bootstrap.iter().map(store::bootstrap_entry));
                tracing::warn!(
                    error = %e,
                    bootstrap_only = !registry.is_empty(),
                    "cannot read api tokens at start-up; until they can be read only the bootstrap token is accepted"
                );
            }
            (Some(store), pending)
        }
    };
    let certificates = Certificates::from_config(&config.auth.certificates)?;
    tracing::info!(
        tokens = registry.len(),
        certificates = certificates.len(),
        open_evaluation = open.evaluation,
        open_sync = open.sync,
        open_track = open.track,
        "authorization"
    );
    Ok(Auth {
        policy: Policy::new(
            registry,
            open,
            rate::RateLimits::new(
                config.auth.write_rate_per_second,
                config.auth.track_rate_per_second,
            ),
        )
        .with_certificates(certificates),
        store,
        pending_bootstrap,
    })
}
