//! `bunting.v1.Tokens`: create, list and revoke API tokens in the node's token store. The layer
//! has already required scope tokens:admin; here a caller is also kept from creating a token with
//! more rights than its own.

use std::collections::BTreeSet;
use std::sync::Arc;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::tokens_server::Tokens as TokensRpc;
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use super::admin_status::{bad_field, check_flag_set_id};
use super::request::caller;
use crate::auth::store::{NewToken, PgTokenStore, TokenName, TokenRecord, TokenStoreError};
use crate::auth::{FlagSets, Registry, Scopes, TokenId};

/// `bunting.v1.Tokens` over the node's token store; a file-backed node has none.
#[derive(Debug, Clone)]
pub struct TokensService {
    store: Option<PgTokenStore>,
    /// This node's registry, reloaded after each write here: the caller's next request to this
    /// node sees the change at once (other nodes within a second, by notification or repair).
    registry: Arc<Registry>,
}

impl TokensService {
    pub fn new(store: Option<PgTokenStore>, registry: Arc<Registry>) -> TokensService {
        TokensService { store, registry }
    }

    async fn reload(&self, store: &PgTokenStore) {
        if let Err(e) = store.refresh(&self.registry).await {
            tracing::warn!(error = %e, "cannot reload api tokens after a write; the repair will");
        }
    }

    fn store(&self) -> Result<&PgTokenStore, Status> {
        self.store.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this node serves flags from a file and reads its tokens from [auth] tokens_file: \
                 edit that file (bunting tokens generate --name ... prints an entry)",
            )
        })
    }
}

fn store_status(error: TokenStoreError) -> Status {
    match error {
        TokenStoreError::NotFound(id) => Status::not_found(format!("token {id} not found")),
        other => {
            tracing::warn!(error = %other, "token store");
            Status::unavailable(format!("the token store is unavailable: {other}"))
        }
    }
}

/// A checked CreateToken request.
fn new_token(req: &pb::CreateTokenRequest, now: DateTime<Utc>) -> Result<NewToken, Status> {
    let name = TokenName::parse(&req.name).map_err(|e| bad_field("name", e.to_string()))?;
    let scopes = Scopes::parse(req.scopes.iter().map(String::as_str))
        .map_err(|e| bad_field("scopes", e.to_string()))?;
    if scopes.is_empty() {
        return Err(bad_field("scopes", "name at least one scope"));
    }
    let flag_sets = match (req.all_flag_sets, req.flag_sets.is_empty()) {
        (true, true) => FlagSets::All,
        (false, false) => {
            for set in &req.flag_sets {
                check_flag_set_id("flag_sets", set)?;
            }
            FlagSets::Only(req.flag_sets.iter().cloned().collect::<BTreeSet<_>>())
        }
        (true, false) => {
            return Err(bad_field(
                "flag_sets",
                "give flag sets or all_flag_sets, not both",
            ));
        }
        (false, true) => {
            return Err(bad_field(
                "flag_sets",
                "name the flag sets the token may touch, or set all_flag_sets",
            ));
        }
    };
    let expires_at = match &req.expires_at {
        None => None,
        Some(ts) => {
            let at = u32::try_from(ts.nanos)
                .ok()
                .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
                .ok_or_else(|| bad_field("expires_at", "is not a valid time"))?;
            if at <= now {
                return Err(bad_field(
                    "expires_at",
                    format!("{at} is not in the future"),
                ));
            }
            Some(at)
        }
    };
    Ok(NewToken {
        name,
        scopes,
        flag_sets,
        expires_at,
    })
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn info(record: TokenRecord) -> pb::TokenInfo {
    let (flag_sets, all_flag_sets) = match record.flag_sets.to_list() {
        None => (Vec::new(), true),
        Some(sets) => (sets, false),
    };
    pb::TokenInfo {
        id: record.id.as_str().to_owned(),
        name: record.name,
        scopes: record
            .scopes
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        flag_sets,
        all_flag_sets,
        expires_at: record.expires_at.map(timestamp),
        created_at: Some(timestamp(record.created_at)),
        created_by: record.created_by,
        revoked_at: record.revoked_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl TokensRpc for TokensService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let new = new_token(request.get_ref(), Utc::now())?;
        let principal = caller
            .principal()
            .ok_or_else(|| Status::unauthenticated("creating a token needs a token"))?;
        if !principal.may_grant(new.scopes, &new.flag_sets) {
            return Err(Status::permission_denied(format!(
                "{} cannot create a token with more scopes or flag sets than its own",
                principal.describe()
            )));
        }
        let (token, record) = store
            .create(&new, &principal.name)
            .await
            .map_err(store_status)?;
        self.reload(store).await;
        tracing::info!(id = %record.id, name = %record.name, by = %principal.name, "api token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(info(record)),
            token_secret: token.reveal(),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.store()?.list().await.map_err(store_status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let store = self.store()?;
        let id =
            TokenId::parse(&request.get_ref().id).map_err(|e| bad_field("id", e.to_string()))?;
        let at = store.revoke(&id).await.map_err(store_status)?;
        self.reload(store).await;
        let by = caller(request.extensions())?
            .principal()
            .map_or("?", |p| p.name.as_str())
            .to_owned();
        tracing::info!(%id, %by, "api token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            revoked_at: Some(timestamp(at)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_requests_are_checked() {
        let now = Utc::now();
        let ok = pb::CreateTokenRequest {
            name: "ci".into(),
            scopes: vec!["evaluate".into()],
            flag_sets: vec!["shop".into()],
            all_flag_sets: false,
            expires_at: None,
        };
        assert!(new_token(&ok, now).is_ok());
        let past = Some(timestamp(now - chrono::Duration::seconds(1)));
        let cases: Vec<(&str, pb::CreateTokenRequest)> = vec![
            (
                "name",
                pb::CreateTokenRequest {
                    name: " ".into(),
                    ..ok.clone()
                },
            ),
            (
                "scopes",
                pb::CreateTokenRequest {
                    scopes: vec![],
                    ..ok.clone()
                },
            ),
            (
                "scopes",
                pb::CreateTokenRequest {
                    scopes: vec!["root".into()],
                    ..ok.clone()
                },
            ),
            (
                "flag_sets",
                pb::CreateTokenRequest {
                    flag_sets: vec![],
                    ..ok.clone()
                },
            ),
            (
                "flag_sets",
                pb::CreateTokenRequest {
                    all_flag_sets: true,
                    ..ok.clone()
                },
            ),
            (
                "flag_sets",
                pb::CreateTokenRequest {
                    flag_sets: vec!["no spaces".into()],
                    ..ok.clone()
                },
            ),
            (
                "expires_at",
                pb::CreateTokenRequest {
                    expires_at: past,
                    ..ok.clone()
                },
            ),
        ];
        for (field, req) in cases {
            let status = new_token(&req, now).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{req:?}");
            assert!(
                status.message().contains(field) || format!("{status:?}").contains(field),
                "{field}: {status:?}"
            );
        }
    }
}
