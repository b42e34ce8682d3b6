//! `[shared_tier]` in the node's config: which shared tier, and how to reach it.

use std::path::PathBuf;

use serde::Deserialize;

use crate::secret_url::SecretUrl;

/// The shared tier (`[shared_tier]`): none, or Redis (one server or a Redis Cluster).
// Read once at start-up and held once per node: the size of the Redis variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SharedTierConfig {
    #[default]
    None,
    Redis(RedisTierConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTierConfig {
    /// One Redis server, e.g. `redis://127.0.0.1:6379`. Exactly one of `url` and `cluster`.
    pub url: Option<SecretUrl>,
    /// Seed nodes of a Redis Cluster; the client discovers the rest.
    pub cluster: Vec<SecretUrl>,
    /// Every key and the notification channel start with this, so deployments can share Redis.
    pub key_prefix: String,
    /// Consecutive failed calls that open the circuit breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe call is let through.
    pub open_for_ms: u64,
    /// The longest any one call may take (connecting included) before it counts as failed.
    pub timeout_ms: u64,
    /// Writes kept while Redis is unreachable; beyond this the oldest is dropped.
    pub write_queue: usize,
    /// The write-ahead log of per-user writes queued while Redis is unreachable, so they survive
    /// the node being killed (`stores/src/shared_tier/wal.rs`). Absent: the node puts it at
    /// `<data_dir>/shared-tier/user-writes.log` when it has a `data_dir`, else such writes live
    /// only in memory until Redis answers.
    pub write_ahead_log: Option<PathBuf>,
    /// The log's size bound; past it, per-user writes are refused (not acknowledged) until Redis
    /// answers and the log is replayed.
    pub write_ahead_log_max_bytes: u64,
    /// A file holding the deployment's shared-tier signing key (at least 32 bytes; surrounding
    /// whitespace ignored). Every node of a deployment needs the same key: flag snapshots and the
    /// running experiments are sealed with it in Redis, and a node refuses what it cannot verify
    /// (`stores/src/shared_tier/seal.rs`). Absent: the key is read from `signing_key_env`.
    pub signing_key_file: Option<PathBuf>,
    /// The environment variable holding the signing key when there is no `signing_key_file`.
    pub signing_key_env: String,
    /// The deployment id sealed into every snapshot, so deployments sharing one Redis (with other
    /// key prefixes) cannot pass snapshots to each other even under one key. Absent: `key_prefix`.
    pub deployment: Option<String>,
}

impl Default for RedisTierConfig {
    fn default() -> Self {
        RedisTierConfig {
            url: None,
            cluster: Vec::new(),
            key_prefix: "bunting".to_owned(),
            failure_threshold: 3,
            open_for_ms: 2_000,
            timeout_ms: 1_000,
            write_queue: 10_000,
            write_ahead_log: None,
            write_ahead_log_max_bytes: 64 << 20,
            signing_key_file: None,
            signing_key_env: "BUNTING_SHARED_TIER_KEY".to_owned(),
            deployment: None,
        }
    }
}

impl RedisTierConfig {
    /// The deployment id sealed into the tier's snapshots.
    pub fn deployment(&self) -> &str {
        self.deployment.as_deref().unwrap_or(&self.key_prefix)
    }

    /// Refuses a configuration that cannot work, naming the offending setting.
    pub fn check(&self) -> Result<(), String> {
        if self.signing_key_env.is_empty() && self.signing_key_file.is_none() {
            return Err(
                "shared_tier: give signing_key_file or a non-empty signing_key_env".to_owned(),
            );
        }
        match (&self.url, self.cluster.is_empty()) {
            (Some(_), false) => {
                return Err("shared_tier: give either url or cluster, not both".to_owned());
            }
            (None, true) => return Err("shared_tier: redis needs url or cluster".to_owned()),
            _ => {}
        }
        if self.failure_threshold == 0 {
            return Err("shared_tier.failure_threshold must be at least 1".to_owned());
        }
        if self.write_queue == 0 {
            return Err("shared_tier.write_queue must be at least 1".to_owned());
        }
        if self.write_ahead_log_max_bytes < 4096 {
            return Err("shared_tier.write_ahead_log_max_bytes must be at least 4096".to_owned());
        }
        if self.timeout_ms == 0 {
            return Err("shared_tier.timeout_ms must be at least 1".to_owned());
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(format!(
                "shared_tier.key_prefix {:?} must be non-empty and without braces (they make Redis Cluster hash tags)",
                self.key_prefix
            ));
        }
        Ok(())
    }
}
