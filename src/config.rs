//! A node's configuration: a TOML file (`bunting serve --config FILE`), every field defaulted so
//! `bunting serve` with no file runs one node on the embedded defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::file::BrokenFlags;

/// Where a node's flags come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum FlagSourceConfig {
    /// A watched flagd flag file (the embedded default): edits are served as they are saved.
    File {
        path: PathBuf,
        /// The flag set id the file's flags belong to.
        #[serde(default = "default_set")]
        set: String,
        /// `refuse` (default): a file with a flag that cannot be compiled is refused and the last
        /// good flags keep serving. `serve`: serve it, the broken flag answering `PARSE_ERROR`,
        /// exactly as flagd does.
        #[serde(default)]
        broken_flags: BrokenFlags,
    },
    /// PostgreSQL: flag sets edited through the admin API, changes pushed with LISTEN/NOTIFY.
    Postgres {
        url: String,
        /// How often to compare versions with the database, repairing any missed notification.
        #[serde(default = "default_version_check", with = "seconds")]
        version_check: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FractionalConfig {
    #[default]
    Cbor,
    String,
    Legacy,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The one port serving every gRPC service (flagd's default is 8013).
    pub grpc_addr: SocketAddr,
    /// Prometheus scrapes `http://<metrics_addr>/metrics`.
    pub metrics_addr: SocketAddr,
    pub shards: u32,
    /// The flag set a request that names none (flagd's selector) evaluates against.
    pub default_set: String,
    /// Evaluation contexts larger than this (encoded size, bytes) are refused.
    pub max_context_bytes: usize,
    /// Requests admitted at once; more wait. Bounds the work in the actors' unbounded mailboxes.
    pub max_concurrent_requests: usize,
    /// The most evaluations (subjects × flags) one `bunting.v1.Evaluation/EvaluateBulk` call may
    /// ask for; a larger call is refused with INVALID_ARGUMENT. Bounds the work and the response
    /// size one admitted request can cause.
    pub max_bulk_evaluations: usize,
    pub fractional: FractionalConfig,
    pub flags: FlagSourceConfig,
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 8013)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            shards: 16,
            default_set: default_set(),
            max_context_bytes: 64 * 1024,
            max_concurrent_requests: 4096,
            max_bulk_evaluations: 10_000,
            fractional: FractionalConfig::default(),
            flags: FlagSourceConfig::File {
                path: PathBuf::from("cluster-config/flags.json"),
                set: default_set(),
                broken_flags: BrokenFlags::default(),
            },
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.check().map_err(|problem| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.shards == 0 {
            return Err("shards must be at least 1".to_owned());
        }
        if self.max_concurrent_requests == 0 {
            return Err("max_concurrent_requests must be at least 1".to_owned());
        }
        if self.max_bulk_evaluations == 0 {
            return Err("max_bulk_evaluations must be at least 1".to_owned());
        }
        if self.grpc_addr == self.metrics_addr && self.grpc_addr.port() != 0 {
            return Err(format!(
                "grpc_addr and metrics_addr are both {}",
                self.grpc_addr
            ));
        }
        Ok(())
    }
}

fn default_set() -> String {
    "default".to_owned()
}

fn default_version_check() -> Duration {
    Duration::from_secs(5)
}

/// Durations in the config file are whole seconds.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_the_embedded_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn reads_a_postgres_node() {
        let c: Config = toml::from_str(
            r#"
            grpc_addr = "0.0.0.0:9000"
            shards = 32
            [flags]
            source = "postgres"
            url = "postgres://db/flags"
            version_check = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.shards, 32);
        assert_eq!(
            c.flags,
            FlagSourceConfig::Postgres {
                url: "postgres://db/flags".to_owned(),
                version_check: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<Config>("grpc_adr = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[flags]\nsource = \"s3\"").is_err());
        let zero: Config = toml::from_str("shards = 0").unwrap();
        assert!(zero.check().is_err());
    }
}
