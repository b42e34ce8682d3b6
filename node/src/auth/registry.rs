//! The tokens a node accepts, in memory: requests never wait on the database. The whole map is
//! replaced at each refresh (`store.rs` reloads it on every `bunting_tokens` notification and
//! every [`super::store::REPAIR_EVERY`]), so readers take no lock.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use super::principal::Principal;
use super::token::{ApiToken, TokenHash, TokenId};

/// One known token: its hash and what it may do.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub hash: TokenHash,
    pub principal: Arc<Principal>,
    pub revoked: bool,
}

/// Why a token is refused. Names the id (public), never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No record with this id, or one whose hash the secret does not match: the same answer for
    /// both, so a caller learns nothing about which ids exist.
    #[error("token {0} is not known to this deployment")]
    Unknown(TokenId),
    #[error("token {0} has been revoked")]
    Revoked(TokenId),
    #[error("token {id} expired at {at}")]
    Expired { id: TokenId, at: DateTime<Utc> },
}

#[derive(Debug, Default)]
pub struct Registry {
    tokens: ArcSwap<HashMap<TokenId, TokenEntry>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Replaces every entry (a reload from the store).
    pub fn replace(&self, entries: impl IntoIterator<Item = TokenEntry>) {
        let map = entries
            .into_iter()
            // Only tokens live here; certificates' principals come from the config.
            .filter_map(|e| e.principal.id.token().cloned().map(|id| (id, e)))
            .collect();
        self.tokens.store(Arc::new(map));
    }

    pub fn len(&self) -> usize {
        self.tokens.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn authenticate(
        &self,
        token: &ApiToken,
        now: DateTime<Utc>,
    ) -> Result<Arc<Principal>, AuthError> {
        let tokens = self.tokens.load();
        let unknown = || AuthError::Unknown(token.id().clone());
        let entry = tokens.get(token.id()).ok_or_else(unknown)?;
        if !entry.hash.verifies(token) {
            return Err(unknown());
        }
        if entry.revoked {
            return Err(AuthError::Revoked(token.id().clone()));
        }
        if let Some(at) = entry
            .principal
            .expires_at
            .filter(|_| entry.principal.expired_at(now))
        {
            return Err(AuthError::Expired {
                id: token.id().clone(),
                at,
            });
        }
        Ok(entry.principal.clone())
    }

    /// The principal of token `id` as it stands now, without its secret: for a console session,
    /// which proved the secret once at sign-in and is re-checked on every request, so a revoked
    /// or expired token (or one whose rights changed) takes effect at once.
    pub fn current(&self, id: &TokenId, now: DateTime<Utc>) -> Result<Arc<Principal>, AuthError> {
        let tokens = self.tokens.load();
        let entry = tokens
            .get(id)
            .ok_or_else(|| AuthError::Unknown(id.clone()))?;
        if entry.revoked {
            return Err(AuthError::Revoked(id.clone()));
        }
        match entry.principal.expires_at {
            Some(at) if entry.principal.expired_at(now) => {
                Err(AuthError::Expired { id: id.clone(), at })
            }
            _ => Ok(entry.principal.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::FlagSets;
    use crate::auth::scope::Scopes;

    fn entry(token: &ApiToken, revoked: bool, expires_at: Option<DateTime<Utc>>) -> TokenEntry {
        TokenEntry {
            hash: token.hash(),
            principal: Arc::new(Principal {
                id: crate::auth::PrincipalId::Token(token.id().clone()),
                name: "ci".into(),
                scopes: Scopes::all(),
                flag_sets: FlagSets::All,
                expires_at,
            }),
            revoked,
        }
    }

    #[test]
    fn authentication_as_a_table() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let [good, revoked, expired, later, stranger] =
            std::array::from_fn(|_| ApiToken::generate().unwrap());
        let registry = Registry::new();
        registry.replace([
            entry(&good, false, None),
            entry(&revoked, true, None),
            entry(&expired, false, Some(now - hour)),
            entry(&later, false, Some(now + hour)),
        ]);
        // Right id, wrong secret: a token of another deployment that reused the id.
        let forged =
            ApiToken::parse(&format!("{}{}", &good.reveal()[..22], "0".repeat(63))).unwrap();
        let cases: Vec<(&ApiToken, Result<(), AuthError>)> = vec![
            (&good, Ok(())),
            (&later, Ok(())),
            (&revoked, Err(AuthError::Revoked(revoked.id().clone()))),
            (
                &expired,
                Err(AuthError::Expired {
                    id: expired.id().clone(),
                    at: now - hour,
                }),
            ),
            (&stranger, Err(AuthError::Unknown(stranger.id().clone()))),
            (&forged, Err(AuthError::Unknown(good.id().clone()))),
        ];
        for (token, expected) in cases {
            let got = registry.authenticate(token, now).map(|_| ());
            assert_eq!(got, expected, "{token:?}");
            // A console session's re-check by id answers the same for every real id.
            if !std::ptr::eq(token, &forged) {
                let current = registry.current(token.id(), now).map(|_| ());
                assert_eq!(current, expected, "current {token:?}");
            }
        }
        // A reload that revokes takes effect for the next request.
        registry.replace([entry(&good, true, None)]);
        assert_eq!(
            registry.authenticate(&good, now).map(|_| ()),
            Err(AuthError::Revoked(good.id().clone()))
        );
        assert_eq!(registry.len(), 1);
    }
}
