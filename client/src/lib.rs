//! Bunting's Rust client with shard-aware routing.
//!
//! A Bunting cluster cuts the targeting-key space into shards (`shard_of(key, shard_count)`, crate
//! `bunting-keyspace`) and places each shard on one node. Any node answers any request, but the
//! owner answers without a forward. This client fetches the shard map from the `Topology` RPC,
//! sends each evaluation straight to the owner of its targeting key, and keeps the map fresh:
//! it refreshes when an answer says another node owns the key (`bunting-owner`), when an answer
//! carries a newer map epoch (`bunting-epoch`), and when a node fails, then retries on the new
//! owner or on another live node. Errors that are the caller's (an unknown flag, a wrong type, a
//! bad context) are never retried.
//!
//! Evaluation speaks flagd.evaluation.v2, the protocol stock flagd providers use; bulk evaluation
//! speaks `bunting.v1.Evaluation/EvaluateBulk`.
//!
//! ```no_run
//! use std::time::Duration;
//! use bunting_client::{Client, ClientConfig, EvaluationContext};
//!
//! # async fn run() -> Result<(), bunting_client::ClientError> {
//! let client = Client::connect(ClientConfig {
//!     request_timeout: Duration::from_secs(1),
//!     ..ClientConfig::new(["10.0.0.1:8013", "10.0.0.2:8013"])
//! })
//! .await?;
//!
//! let user = EvaluationContext::new("user-42").with("plan", "pro");
//! let banner = client.resolve_boolean("welcome-banner", &user).await?;
//! println!("banner: {} ({})", banner.value_or(false), client.stats());
//!
//! // Many subjects at once: one call per owning node, answers in input order.
//! let subjects = vec![EvaluationContext::new("user-1"), EvaluationContext::new("user-2")];
//! let results = client.evaluate_bulk("", &["welcome-banner".to_owned()], &subjects).await?;
//! assert_eq!(results.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! Modules: `config` (settings, channels), `context` (the evaluation context), `topology` (the
//! checked shard map), `router` (node choice, quarantine, single-flight refresh), `call` (one
//! routed call with retries), `resolve` and `bulk` (the typed API), `error`, `stats`.

mod bulk;
mod call;
mod client;
mod config;
mod context;
mod error;
mod resolve;
mod router;
mod stats;
mod topology;

pub use bulk::{FlagError, FlagErrorCode, FlagResult, SubjectResults};
pub use call::{EPOCH_HEADER, OWNER_HEADER};
pub use client::Client;
pub use config::{ClientConfig, InvalidToken, Token};
pub use context::EvaluationContext;
pub use error::{ClientError, SeedFailure};
pub use resolve::{AllFlags, FlagValue, Resolution};
pub use stats::ClientStats;
/// TLS settings for [`ClientConfig::tls`].
pub use tonic::transport::ClientTlsConfig;
pub use topology::{NodeInfo, NodeState, Topology};
