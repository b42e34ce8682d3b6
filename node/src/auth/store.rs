//! Where tokens live: PostgreSQL's `api_tokens` (migrations/0004_api_tokens.sql) for a
//! PostgreSQL-backed node or cluster, or a file of hashed tokens for a file-backed node. Either
//! way the node serves from the in-memory [`Registry`]; this module fills it.
//!
//! Propagation: every write NOTIFYs `bunting_tokens` in its transaction, and each node reloads the
//! table on each notification and every [`REPAIR_EVERY`] besides (a notification sent while a
//! node's listening connection was down is lost), so a revocation reaches every node within a
//! second whatever happened to the notification.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

use super::principal::{FlagSets, Principal, PrincipalId};
use super::registry::{Registry, TokenEntry};
use super::scope::{Scopes, UnknownScope};
use super::token::{ApiToken, TokenHash, TokenId, TokenParseError};
use bunting_stores::secret_url::{RedactedUrl, SecretUrl};

/// The notification channel token writes signal on.
pub const CHANNEL: &str = "bunting_tokens";
/// How often a node reloads the tokens whether or not it was notified.
pub const REPAIR_EVERY: Duration = Duration::from_millis(400);
/// The name the bootstrap token is recorded (and audited) under.
pub const BOOTSTRAP_NAME: &str = "bootstrap";
/// Longest token name, as the table's check says.
pub const MAX_NAME_CHARS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("token database url {url}: {message}")]
    Url { url: RedactedUrl, message: String },
    #[error("token store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("token {0} not found")]
    NotFound(TokenId),
    #[error(transparent)]
    Random(#[from] super::token::RandomError),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokens file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A checked token name: 1 to 128 characters, no control characters (it goes into audit rows),
/// and not starting with a prefix the node writes under itself (`rollout:`, `schedule:`): the
/// rollout controller takes an audit entry by `rollout:<id>` for its own write, so a token of that
/// name could edit a flag mid-rollout without pausing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(String);

/// Principals the node's own writers use; no token may be named like them.
pub const RESERVED_NAME_PREFIXES: [&str; 2] = ["rollout:", "schedule:"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "token name {0:?} must be 1 to 128 characters without control characters, not starting \
     with rollout: or schedule: (the node's own writers)"
)]
pub struct BadTokenName(pub String);

impl TokenName {
    pub fn parse(name: &str) -> Result<TokenName, BadTokenName> {
        let trimmed = name.trim();
        if trimmed.is_empty()
            || trimmed.chars().count() > MAX_NAME_CHARS
            || trimmed.chars().any(char::is_control)
            || RESERVED_NAME_PREFIXES
                .iter()
                .any(|p| trimmed.to_ascii_lowercase().starts_with(p))
        {
            return Err(BadTokenName(name.chars().take(MAX_NAME_CHARS).collect()));
        }
        Ok(TokenName(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a new token may do.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: TokenName,
    pub scopes: Scopes,
    pub flag_sets: FlagSets,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token as listings show it: everything but the hash.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: TokenId,
    pub name: String,
    pub scopes: Scopes,
    pub flag_sets: FlagSets,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The bootstrap token's rights: everything, on every set.
pub fn bootstrap_entry(token: &ApiToken) -> TokenEntry {
    TokenEntry {
        hash: token.hash(),
        principal: Arc::new(Principal {
            id: PrincipalId::Token(token.id().clone()),
            name: BOOTSTRAP_NAME.to_owned(),
            scopes: Scopes::all(),
            flag_sets: FlagSets::All,
            expires_at: None,
        }),
        revoked: false,
    }
}

/// `api_tokens` in PostgreSQL, on a small pool of its own (one connection of which the listener
/// holds).
#[derive(Debug, Clone)]
pub struct PgTokenStore {
    pool: PgPool,
}

const COLUMNS: &str =
    "id, name, hash, scopes, flag_sets, expires_at, created_at, created_by, revoked_at";

impl PgTokenStore {
    /// A lazily connecting store: nothing is dialled until the first query, so a PostgreSQL that
    /// is down at start-up does not stop the node (it refuses tokens until it can read them).
    pub fn connect_lazy(url: &SecretUrl) -> Result<PgTokenStore, TokenStoreError> {
        let options: PgConnectOptions = bunting_stores::postgres::known_params_only(url.expose())
            .parse()
            .map_err(|e: sqlx::Error| TokenStoreError::Url {
                url: url.redacted().clone(),
                message: bunting_stores::secret_url::redact_urls(&e.to_string()),
            })?;
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(options.application_name("bunting-tokens"));
        Ok(PgTokenStore { pool })
    }

    /// Every token, revoked ones included, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, TokenStoreError> {
        Ok(self.rows().await?.into_iter().map(|(r, _)| r).collect())
    }

    /// Every token the registry should know. A row this node cannot read (a scope it does not
    /// know, a malformed hash) is left out, so that token is refused: failing closed.
    pub async fn entries(&self) -> Result<Vec<TokenEntry>, TokenStoreError> {
        Ok(self
            .rows()
            .await?
            .into_iter()
            .map(|(record, hash)| TokenEntry {
                hash,
                revoked: record.revoked_at.is_some(),
                principal: Arc::new(Principal {
                    id: PrincipalId::Token(record.id),
                    name: record.name,
                    scopes: record.scopes,
                    flag_sets: record.flag_sets,
                    expires_at: record.expires_at,
                }),
            })
            .collect())
    }

    async fn rows(&self) -> Result<Vec<(TokenRecord, TokenHash)>, TokenStoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_tokens ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match read_row(&row) {
                Ok(pair) => out.push(pair),
                Err(why) => {
                    tracing::warn!(%why, "an api_tokens row is unreadable; that token is refused")
                }
            }
        }
        Ok(out)
    }

    /// Creates a token and returns it: the only time its secret exists outside the caller.
    pub async fn create(
        &self,
        new: &NewToken,
        created_by: &str,
    ) -> Result<(ApiToken, TokenRecord), TokenStoreError> {
        let token = ApiToken::generate()?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_tokens (id, name, hash, scopes, flag_sets, expires_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        )))
        .bind(token.id().as_str())
        .bind(new.name.as_str())
        .bind(token.hash().as_bytes())
        .bind(scope_names(new.scopes))
        .bind(new.flag_sets.to_list())
        .bind(new.expires_at)
        .bind(created_by)
        .fetch_one(&mut *tx)
        .await?;
        notify(&mut tx, token.id()).await?;
        tx.commit().await?;
        let (record, _) = read_row(&row).map_err(|why| {
            TokenStoreError::Db(sqlx::Error::Protocol(format!("the new token's row: {why}")))
        })?;
        Ok((token, record))
    }

    /// Marks a token revoked (a second revocation keeps the first time). Every node refuses it
    /// once it has reloaded: at once when notified, within [`REPAIR_EVERY`] otherwise.
    pub async fn revoke(&self, id: &TokenId) -> Result<DateTime<Utc>, TokenStoreError> {
        let mut tx = self.pool.begin().await?;
        let at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 \
             RETURNING revoked_at",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        let Some(at) = at else {
            return Err(TokenStoreError::NotFound(id.clone()));
        };
        notify(&mut tx, id).await?;
        tx.commit().await?;
        Ok(at)
    }

    /// Records the bootstrap token if, and only if, the table is empty: a deployment's first
    /// start. Later starts with the same secret change nothing, so revoking the bootstrap token
    /// sticks. Nodes starting together take a lock, so only one of them inserts.
    pub async fn bootstrap(&self, token: &ApiToken) -> Result<bool, TokenStoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('bunting_tokens_bootstrap'))")
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (id, name, hash, scopes, flag_sets, created_by) \
             SELECT $1, $2, $3, $4, NULL, $2 WHERE NOT EXISTS (SELECT 1 FROM api_tokens)",
        )
        .bind(token.id().as_str())
        .bind(BOOTSTRAP_NAME)
        .bind(token.hash().as_bytes())
        .bind(scope_names(Scopes::all()))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            notify(&mut tx, token.id()).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Reloads the registry from the table.
    pub async fn refresh(&self, registry: &Registry) -> Result<(), TokenStoreError> {
        registry.replace(self.entries().await?);
        Ok(())
    }

    async fn listener(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

async fn notify(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &TokenId,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(id.as_str())
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

fn scope_names(scopes: Scopes) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

fn read_row(row: &sqlx::postgres::PgRow) -> Result<(TokenRecord, TokenHash), String> {
    let get_err = |e: sqlx::Error| e.to_string();
    let id: String = row.try_get("id").map_err(get_err)?;
    let id = TokenId::parse(&id).map_err(|e| e.to_string())?;
    let hash: Vec<u8> = row.try_get("hash").map_err(get_err)?;
    let hash = TokenHash::from_bytes(&hash).ok_or_else(|| format!("token {id}: bad hash"))?;
    let scopes: Vec<String> = row.try_get("scopes").map_err(get_err)?;
    let scopes = Scopes::parse(scopes.iter().map(String::as_str))
        .map_err(|e: UnknownScope| format!("token {id}: {e}"))?;
    let flag_sets: Option<Vec<String>> = row.try_get("flag_sets").map_err(get_err)?;
    Ok((
        TokenRecord {
            name: row.try_get("name").map_err(get_err)?,
            scopes,
            flag_sets: FlagSets::from_list(flag_sets),
            expires_at: row.try_get("expires_at").map_err(get_err)?,
            created_at: row.try_get("created_at").map_err(get_err)?,
            created_by: row.try_get("created_by").map_err(get_err)?,
            revoked_at: row.try_get("revoked_at").map_err(get_err)?,
            id,
        },
        hash,
    ))
}

/// Keeps `registry` equal to the table until `closing`: reloads on every notification and every
/// [`REPAIR_EVERY`]. Logs when reading fails and when it works again, not at every attempt.
pub async fn follow(
    store: PgTokenStore,
    registry: Arc<Registry>,
    mut bootstrap: Option<ApiToken>,
    mut closing: watch::Receiver<bool>,
) {
    let mut listener: Option<PgListener> = None;
    let mut tick = tokio::time::interval(REPAIR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        if *closing.borrow() {
            return;
        }
        if listener.is_none() {
            listener = store.listener().await.ok();
        }
        tokio::select! {
            _ = closing.changed() => {}
            _ = tick.tick() => {}
            received = next_notice(&mut listener) => {
                if received.is_err() {
                    listener = None;
                }
            }
        }
        // A bootstrap that could not be recorded at start-up (PostgreSQL was down) is retried
        // until it is, under the same only-into-an-empty-table rule.
        if let Some(token) = &bootstrap
            && store.bootstrap(token).await.is_ok()
        {
            bootstrap = None;
        }
        match store.refresh(&registry).await {
            Ok(()) if !healthy => {
                tracing::info!(tokens = registry.len(), "api tokens readable again");
                healthy = true;
            }
            Ok(()) => {}
            Err(e) if healthy => {
                tracing::warn!(error = %e, "cannot reload api tokens; serving the last ones read");
                healthy = false;
            }
            Err(_) => {}
        }
    }
}

async fn next_notice(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// One line of a tokens file: what `bunting tokens generate --name ...` prints for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    id: String,
    name: String,
    /// 64 hex digits: [`ApiToken::hash`].
    hash: String,
    scopes: Vec<String>,
    /// Absent or null: every set.
    #[serde(default)]
    flag_sets: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    revoked: bool,
}

/// The tokens of a tokens file (`[auth] tokens_file`): a JSON array of entries. Read at start-up.
pub fn load_file(path: &Path) -> Result<Vec<TokenEntry>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| TokenFileError::Invalid {
        path: path.to_owned(),
        message,
    };
    let tokens: Vec<FileToken> = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let id = TokenId::parse(&t.id)
                .map_err(|e: TokenParseError| invalid(format!("entry {i}: {e}")))?;
            let hash = TokenHash::from_hex(&t.hash)
                .ok_or_else(|| invalid(format!("token {id}: hash is not 64 hex digits")))?;
            let name = TokenName::parse(&t.name).map_err(|e| invalid(e.to_string()))?;
            let scopes = Scopes::parse(t.scopes.iter().map(String::as_str))
                .map_err(|e| invalid(format!("token {id}: {e}")))?;
            Ok(TokenEntry {
                hash,
                revoked: t.revoked,
                principal: Arc::new(Principal {
                    id: PrincipalId::Token(id),
                    name: name.0,
                    scopes,
                    flag_sets: FlagSets::from_list(t.flag_sets),
                    expires_at: t.expires_at,
                }),
            })
        })
        .collect()
}

/// A tokens-file entry for `token` (what `bunting tokens generate` prints for file nodes).
pub fn file_entry(token: &ApiToken, new: &NewToken) -> serde_json::Value {
    serde_json::json!({
        "id": token.id().as_str(),
        "name": new.name.as_str(),
        "hash": token.hash().to_hex(),
        "scopes": scope_names(new.scopes),
        "flag_sets": new.flag_sets.to_list(),
        "expires_at": new.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_load_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("bunting-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = ApiToken::generate().unwrap();
        let new = NewToken {
            name: TokenName::parse("ci").unwrap(),
            scopes: Scopes::parse(["evaluate"]).unwrap(),
            flag_sets: FlagSets::Only(["shop".to_owned()].into()),
            expires_at: None,
        };
        let path = dir.join("tokens.json");
        std::fs::write(
            &path,
            serde_json::json!([file_entry(&token, &new)]).to_string(),
        )
        .unwrap();
        let entries = load_file(&path).unwrap();
        let registry = Registry::new();
        registry.replace(entries);
        let principal = registry.authenticate(&token, Utc::now()).unwrap();
        assert_eq!(principal.name, "ci");
        assert!(principal.flag_sets.allows("shop") && !principal.flag_sets.allows("other"));

        for (text, needle) in [
            ("{", "tokens file"),
            (
                r#"[{"id": "x", "name": "a", "hash": "00", "scopes": []}]"#,
                "entry 0",
            ),
            (
                r#"[{"id": "00000000000000aa", "name": "a", "hash": "00", "scopes": []}]"#,
                "hash",
            ),
            (
                &format!(
                    r#"[{{"id": "00000000000000aa", "name": "a", "hash": "{}", "scopes": ["root"]}}]"#,
                    "0".repeat(64)
                ),
                "root",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = load_file(&path).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn token_names_are_checked() {
        assert_eq!(TokenName::parse("  ci  ").unwrap().as_str(), "ci");
        for bad in [
            "",
            "   ",
            "a\nb",
            &"x".repeat(129),
            "rollout:banner-on",
            " Rollout:x",
            "schedule:7",
        ] {
            assert!(TokenName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TokenName::parse("rollouts-bot").is_ok());
    }
}
