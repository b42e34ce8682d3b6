//! What every RPC shares besides admission (`admission.rs`): the selector, and how failures
//! become gRPC statuses.

use std::sync::Arc;

use bunting_engine::{ErrorCode, ResolveError};
use tonic::metadata::MetadataMap;

use crate::auth::Caller;
use tonic::{Code, Status};

/// flagd's header naming the flag set a request is for.
pub const SELECTOR_HEADER: &str = "flagd-selector";

/// A service's store, or why the node has none (its flags come from a file): every RPC that
/// needs the store is refused with FAILED_PRECONDITION giving that reason.
#[derive(Debug)]
pub struct RequiredStore<S: ?Sized> {
    store: Option<Arc<S>>,
    without: Arc<str>,
}

impl<S: ?Sized> Clone for RequiredStore<S> {
    fn clone(&self) -> Self {
        RequiredStore {
            store: self.store.clone(),
            without: self.without.clone(),
        }
    }
}

impl<S: ?Sized> RequiredStore<S> {
    pub fn new(store: Option<Arc<S>>, without: String) -> RequiredStore<S> {
        RequiredStore {
            store,
            without: without.into(),
        }
    }

    pub fn get(&self) -> Result<&S, Status> {
        self.store
            .as_deref()
            .ok_or_else(|| Status::failed_precondition(&*self.without))
    }
}

/// The flag set a request names: the body's selector if set, else the `Flagd-Selector` header.
/// Both flagd forms are accepted: a bare id, or `flagSetId=<id>`.
pub fn selector(metadata: &MetadataMap, body: &str) -> Option<Arc<str>> {
    let raw = if body.is_empty() {
        metadata.get(SELECTOR_HEADER)?.to_str().ok()?
    } else {
        body
    };
    let raw = raw.trim();
    let id = raw.strip_prefix("flagSetId=").unwrap_or(raw).trim();
    (!id.is_empty()).then(|| Arc::from(id))
}

/// The caller the auth layer (`crate::auth::layer`) put in the request's extensions. A request
/// that did not pass the layer has none and is refused: failing closed.
pub fn caller(extensions: &http::Extensions) -> Result<&Caller, Status> {
    extensions
        .get::<Caller>()
        .ok_or_else(|| Status::permission_denied("the request was not authorized"))
}

/// Refuses `caller` on flag set `set` unless its token may touch that set. The one flag-set check
/// every service makes once it knows the set (request bodies for Admin and Experiments, the
/// selector or the default set for evaluation and sync).
pub fn check_flag_set(caller: &Caller, set: &str) -> Result<(), Status> {
    if caller.allows_set(set) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{} may not touch flag set {}",
        who(caller),
        super::wire_text::quoted(set)
    )))
}

/// [`check_flag_set`] for a request that names no set and so means every set (a ListAudit or a
/// Track without one): only a token for all sets may.
pub fn check_all_flag_sets(caller: &Caller, what: &str) -> Result<(), Status> {
    if caller.allows_all_sets() {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{} is limited to some flag sets: {what} must name one of them",
        who(caller)
    )))
}

/// The name the audit log records for a write: the authenticated token's name, with the
/// caller's own `actor` (a free-form note, e.g. the person at the CLI) after it in parentheses
/// when it says something else. Writes always need a token, so an anonymous caller is refused.
pub fn audit_actor(caller: &Caller, actor: &str) -> Result<String, Status> {
    let principal = caller
        .principal()
        .ok_or_else(|| Status::unauthenticated("a write needs a token"))?;
    let actor = actor.trim();
    Ok(if actor.is_empty() || actor == principal.name {
        principal.name.clone()
    } else {
        format!("{} ({actor})", principal.name)
    })
}

fn who(caller: &Caller) -> String {
    match caller.principal() {
        Some(p) => p.describe(),
        None => "an anonymous caller".to_owned(),
    }
}

/// flagd's mapping of resolution errors to gRPC status codes.
pub fn resolution_status(error: &ResolveError) -> Status {
    let code = match error.code {
        ErrorCode::FlagNotFound => Code::NotFound,
        ErrorCode::TypeMismatch => Code::InvalidArgument,
        ErrorCode::ParseError => Code::DataLoss,
        ErrorCode::General => Code::Unknown,
    };
    // The engine's message quotes the flag key whole, and the key is the client's.
    Status::new(code, super::wire_text::bounded(error.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_come_from_the_body_or_the_header() {
        let mut headers = MetadataMap::new();
        assert_eq!(selector(&headers, ""), None);
        headers.insert(SELECTOR_HEADER, "flagSetId=shop".parse().unwrap());
        assert_eq!(selector(&headers, "").as_deref(), Some("shop"));
        assert_eq!(selector(&headers, "billing").as_deref(), Some("billing"));
    }

    #[test]
    fn flag_set_checks_and_audit_names_as_a_table() {
        use crate::auth::{FlagSets, Principal, Scopes, TokenId};
        let token = |sets: FlagSets| {
            Caller::Authenticated(Arc::new(Principal {
                id: crate::auth::PrincipalId::Token(TokenId::parse("00000000000000aa").unwrap()),
                name: "deploy-bot".into(),
                scopes: Scopes::all(),
                flag_sets: sets,
                expires_at: None,
            }))
        };
        let shop = token(FlagSets::Only(["shop".to_owned()].into()));
        let all = token(FlagSets::All);
        for (caller, set, allowed) in [
            (&shop, "shop", true),
            (&shop, "billing", false),
            (&all, "billing", true),
            (&Caller::Anonymous, "billing", true),
        ] {
            let got = check_flag_set(caller, set).map_err(|s| s.code());
            let expected = if allowed {
                Ok(())
            } else {
                Err(Code::PermissionDenied)
            };
            assert_eq!(got, expected, "{caller:?} {set}");
        }
        assert!(check_all_flag_sets(&shop, "ListAudit").is_err());
        assert!(check_all_flag_sets(&all, "ListAudit").is_ok());
        for (actor, recorded) in [
            ("", "deploy-bot"),
            ("deploy-bot", "deploy-bot"),
            ("ada", "deploy-bot (ada)"),
        ] {
            assert_eq!(audit_actor(&all, actor).unwrap(), recorded);
        }
        assert_eq!(
            audit_actor(&Caller::Anonymous, "mallory")
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        assert_eq!(
            caller(&http::Extensions::new()).unwrap_err().code(),
            Code::PermissionDenied
        );
    }
}
