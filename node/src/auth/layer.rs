//! The one place every gRPC request is authenticated and authorized: a tower layer in front of
//! every service (`server.rs`). It finds the scope the method needs ([`super::scope::access`];
//! a path the table does not name is refused), reads `authorization: Bearer <token>`, checks the
//! token against the in-memory [`Registry`], and puts the [`Caller`] in the request's extensions
//! for the flag-set checks the services make (`service/request.rs`), where the set is known.
//!
//! A request without the header, on a connection whose verified client certificate's subject is
//! mapped in `[[auth.certificates]]`, is that certificate's principal instead. A bearer token,
//! when sent, takes precedence and is checked exactly as without a certificate (a bad token is
//! refused, never replaced by the certificate): the certificate then only got the caller onto the
//! port. So a request's rights are always one principal's, never a union of two.
//! Refusals are trailers-only gRPC answers: UNAUTHENTICATED (no usable token) or PERMISSION_DENIED
//! (a good token without the right). No message ever quotes the token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::Utc;
use http::HeaderMap;
use tonic::Status;
use tonic::body::Body;
use tower_service::Service;

use super::certificate::{self, Certificates, MAX_SUBJECT_BYTES};
use super::principal::Caller;
use super::principal::Principal;
use super::rate::RateLimits;
use super::registry::Registry;
use super::scope::{self, Access, Scope};
use super::token::{ApiToken, TOKEN_LEN};

/// Longer than any `Bearer <token>` by a margin; a longer header is refused before it is parsed.
pub const MAX_AUTHORIZATION_BYTES: usize = 256;

/// The methods the operator opened to callers without a token (`[auth] open_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Open {
    pub evaluation: bool,
    pub sync: bool,
    pub track: bool,
}

impl Open {
    fn allows(self, scope: Scope) -> bool {
        match scope {
            Scope::Evaluate => self.evaluation,
            Scope::Sync => self.sync,
            Scope::Track => self.track,
            // Writes, reads of rules and history, cluster and token administration: never open.
            _ => false,
        }
    }
}

/// What the layer decides with: the known tokens and what is open.
#[derive(Debug, Clone)]
pub struct Policy {
    registry: Arc<Registry>,
    open: Open,
    limits: Arc<RateLimits>,
    /// The client certificates' subjects the node maps to principals; empty without them.
    certificates: Arc<Certificates>,
}

impl Policy {
    pub fn new(registry: Arc<Registry>, open: Open, limits: RateLimits) -> Policy {
        Policy {
            registry,
            open,
            limits: Arc::new(limits),
            certificates: Arc::new(Certificates::default()),
        }
    }

    /// This policy, with client certificates' subjects mapped to principals.
    pub fn with_certificates(self, certificates: Certificates) -> Policy {
        Policy {
            certificates: Arc::new(certificates),
            ..self
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The caller of `path` with `headers`, or the status it is refused with. `subject` gives the
    /// connection's verified client certificate's subject; it is asked for only when there is no
    /// token to check and the node maps certificates (parsing it is the cost of the certificate
    /// path, and only that path pays it).
    pub fn admit(
        &self,
        path: &str,
        headers: &HeaderMap,
        subject: impl FnOnce() -> Option<String>,
    ) -> Result<Caller, Status> {
        let Some(access) = scope::access(path) else {
            return Err(Status::permission_denied(format!(
                "{} is not a method this node serves to anybody",
                crate::service::wire_text::bounded(path.to_owned())
            )));
        };
        let header = headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let scope = match access {
            Access::Scoped(scope) => scope,
            // Health and reflection: anyone. A token sent anyway is still checked, as for an
            // opened scope, so a revoked or mistyped token is not silently accepted anywhere.
            Access::Open => {
                return match header {
                    None => Ok(Caller::Anonymous),
                    Some(header) => self.authenticate(header).map(Caller::Authenticated),
                };
            }
        };
        let caller = match header {
            None if !self.certificates.is_empty() => match subject() {
                Some(subject) => self.authorize_certificate(scope, &subject, path)?,
                None => self.authorize(scope, None, path)?,
            },
            _ => self.authorize(scope, header, path)?,
        };
        self.limits.check(scope, &caller)?;
        Ok(caller)
    }

    /// The caller presenting a verified certificate with `subject` (and no token) to `path`.
    fn authorize_certificate(
        &self,
        scope: Scope,
        subject: &str,
        path: &str,
    ) -> Result<Caller, Status> {
        let Some(principal) = self.certificates.principal(subject) else {
            // An unmapped subject has no rights of its own: it may do what anybody may.
            if self.open.allows(scope) {
                return Ok(Caller::Anonymous);
            }
            let shown: String = subject.chars().take(MAX_SUBJECT_BYTES / 4).collect();
            return Err(Status::permission_denied(format!(
                "certificate {shown} is not mapped to any scope ([[auth.certificates]]); {path} \
                 needs scope {scope}, from a mapped certificate or a token"
            )));
        };
        if !principal.scopes.contains(scope) {
            return Err(Status::permission_denied(format!(
                "{} does not have scope {scope}, which {path} needs",
                principal.describe()
            )));
        }
        Ok(Caller::Authenticated(principal))
    }

    /// The caller sending `header` (an `authorization` value, if any) to `path` (a method of the
    /// table, or `/metrics`), which needs `scope`.
    pub fn authorize(
        &self,
        scope: Scope,
        header: Option<&[u8]>,
        path: &str,
    ) -> Result<Caller, Status> {
        let Some(header) = header else {
            if self.open.allows(scope) {
                return Ok(Caller::Anonymous);
            }
            return Err(Status::unauthenticated(format!(
                "{path} needs a token with scope {scope}: send `authorization: Bearer <token>`"
            )));
        };
        let principal = self.authenticate(header)?;
        if !principal.scopes.contains(scope) {
            return Err(Status::permission_denied(format!(
                "{} does not have scope {scope}, which {path} needs",
                principal.describe()
            )));
        }
        Ok(Caller::Authenticated(principal))
    }
}

impl Policy {
    /// The principal of `token`, as a console sign-in checks it (any valid token signs in; each
    /// page then needs its method's scope).
    pub fn sign_in(&self, token: &ApiToken) -> Result<Arc<Principal>, Status> {
        self.registry
            .authenticate(token, Utc::now())
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// Spends one call of `scope` from `caller`'s rate budget, as the layer does for gRPC: the
    /// console's writes count against the same per-token limits.
    pub fn check_rate(&self, scope: Scope, caller: &Caller) -> Result<(), Status> {
        self.limits.check(scope, caller)
    }

    /// The principal whose token `header` carries, or UNAUTHENTICATED.
    fn authenticate(&self, header: &[u8]) -> Result<Arc<Principal>, Status> {
        let token = bearer(header).map_err(Status::unauthenticated)?;
        self.registry
            .authenticate(&token, Utc::now())
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }
}

/// The token in an `authorization` header's value, or why there is none (never quoting it).
fn bearer(value: &[u8]) -> Result<ApiToken, String> {
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(format!(
            "the authorization header is {} bytes; a token is {TOKEN_LEN} characters",
            value.len()
        ));
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| "the authorization header is not text".to_owned())?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| "the authorization header must be `Bearer <token>`".to_owned())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the authorization header must be `Bearer <token>`".to_owned());
    }
    ApiToken::parse(token.trim()).map_err(|e| format!("malformed token: {e}"))
}

/// The layer for `tonic::transport::Server::layer`.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    policy: Arc<Policy>,
}

impl AuthLayer {
    pub fn new(policy: Policy) -> AuthLayer {
        AuthLayer {
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Arc<Policy>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        match self
            .policy
            .admit(request.uri().path(), request.headers(), || {
                certificate::peer_subject(extensions)
            }) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            // The request body is dropped unread: nothing of a refused request reaches a service.
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::{FlagSets, Principal};
    use crate::auth::registry::TokenEntry;
    use crate::auth::scope::Scopes;
    use tonic::Code;

    fn entry(token: &ApiToken, scopes: &[&str]) -> TokenEntry {
        TokenEntry {
            hash: token.hash(),
            principal: Arc::new(Principal {
                id: crate::auth::PrincipalId::Token(token.id().clone()),
                name: "reader".into(),
                scopes: Scopes::parse(scopes.iter().copied()).unwrap(),
                flag_sets: FlagSets::All,
                expires_at: None,
            }),
            revoked: false,
        }
    }

    #[test]
    fn admission_as_a_table() {
        let evaluator = ApiToken::generate().unwrap();
        let registry = Arc::new(Registry::new());
        registry.replace([entry(&evaluator, &["evaluate"])]);
        let open = Policy::new(
            registry.clone(),
            Open {
                evaluation: true,
                sync: false,
                track: false,
            },
            RateLimits::default(),
        );
        let closed = Policy::new(registry, Open::default(), RateLimits::default());
        let resolve = "/flagd.evaluation.v1.Service/ResolveBoolean";
        let write = "/bunting.v1.Admin/CreateFlag";
        let good = format!("Bearer {}", evaluator.reveal());
        let huge = format!("Bearer {}", "a".repeat(10_000));
        let unknown = format!("Bearer {}", ApiToken::generate().unwrap().reveal());
        // Policy, path, authorization header, expected admission.
        type Case<'a> = (&'a Policy, &'a str, Option<&'a str>, Result<bool, Code>);
        let cases: Vec<Case> = vec![
            // Ok(true): a token's principal; Ok(false): anonymous.
            (&open, resolve, None, Ok(false)),
            (&closed, resolve, None, Err(Code::Unauthenticated)),
            (&closed, resolve, Some(&good), Ok(true)),
            (&open, resolve, Some(&good), Ok(true)),
            (&open, resolve, Some("bearer x"), Err(Code::Unauthenticated)),
            (&open, resolve, Some(&unknown), Err(Code::Unauthenticated)),
            (&open, resolve, Some(&huge), Err(Code::Unauthenticated)),
            (
                &open,
                resolve,
                Some("Basic dXNlcjpwYXNz"),
                Err(Code::Unauthenticated),
            ),
            (&open, resolve, Some("Bearer"), Err(Code::Unauthenticated)),
            (&open, write, None, Err(Code::Unauthenticated)),
            (&open, write, Some(&good), Err(Code::PermissionDenied)),
            (
                &open,
                "/bunting.v1.Admin/Nope",
                Some(&good),
                Err(Code::PermissionDenied),
            ),
            // Health and reflection: open on every policy; a token sent is still checked.
            (&closed, "/grpc.health.v1.Health/Check", None, Ok(false)),
            (&closed, "/grpc.health.v1.Health/Watch", None, Ok(false)),
            (
                &closed,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None,
                Ok(false),
            ),
            (
                &closed,
                "/grpc.health.v1.Health/Check",
                Some(&good),
                Ok(true),
            ),
            (
                &closed,
                "/grpc.health.v1.Health/Check",
                Some(&unknown),
                Err(Code::Unauthenticated),
            ),
            (
                &open,
                "/grpc.health.v1.Health/Nope",
                None,
                Err(Code::PermissionDenied),
            ),
        ];
        for (policy, path, header, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(h) = header {
                headers.insert(http::header::AUTHORIZATION, h.parse().unwrap());
            }
            let got = policy
                .admit(path, &headers, || None)
                .map(|c| c.principal().is_some())
                .map_err(|s| {
                    // No refusal quotes the secret.
                    assert!(!s.message().contains(&good[30..]), "{}", s.message());
                    s.code()
                });
            assert_eq!(got, expected, "{path} {header:?}");
        }
    }

    #[test]
    fn certificates_without_a_token_and_tokens_first_as_a_table() {
        let evaluator = ApiToken::generate().unwrap();
        let registry = Arc::new(Registry::new());
        registry.replace([entry(&evaluator, &["evaluate"])]);
        let certificates = Certificates::from_config(&[crate::config::CertificateGrant {
            subject: "CN=deployer".into(),
            scopes: vec!["flags:write".into(), "flags:read".into()],
            flag_sets: Some(vec!["shop".into()]),
        }])
        .unwrap();
        let policy = Policy::new(
            registry,
            Open {
                evaluation: true,
                sync: false,
                track: false,
            },
            RateLimits::default(),
        )
        .with_certificates(certificates);
        let resolve = "/flagd.evaluation.v1.Service/ResolveBoolean";
        let write = "/bunting.v1.Admin/CreateFlag";
        let drain = "/bunting.v1.ClusterAdmin/Drain";
        let good = format!("Bearer {}", evaluator.reveal());
        let unknown = format!("Bearer {}", ApiToken::generate().unwrap().reveal());
        // Path, authorization header, certificate subject, expected: Ok(the principal's name,
        // empty for anonymous) or the refusal's code.
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Result<&'a str, Code>,
        );
        let cases: Vec<Case> = vec![
            (write, None, Some("CN=deployer"), Ok("cert:CN=deployer")),
            (
                drain,
                None,
                Some("CN=deployer"),
                Err(Code::PermissionDenied),
            ),
            (
                write,
                None,
                Some("CN=stranger"),
                Err(Code::PermissionDenied),
            ),
            // What is open stays open to an unmapped certificate, as to anybody.
            (resolve, None, Some("CN=stranger"), Ok("")),
            // A mapped certificate is checked as a token would be, also on an open method.
            (
                resolve,
                None,
                Some("CN=deployer"),
                Err(Code::PermissionDenied),
            ),
            (write, None, None, Err(Code::Unauthenticated)),
            // A token wins: its scopes decide, never the certificate's on top.
            (
                write,
                Some(&good),
                Some("CN=deployer"),
                Err(Code::PermissionDenied),
            ),
            (resolve, Some(&good), Some("CN=deployer"), Ok("reader")),
            // A bad token is refused, not replaced by the certificate.
            (
                write,
                Some(&unknown),
                Some("CN=deployer"),
                Err(Code::Unauthenticated),
            ),
        ];
        for (path, header, subject, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(h) = header {
                headers.insert(http::header::AUTHORIZATION, h.parse().unwrap());
            }
            let got = policy
                .admit(path, &headers, || subject.map(str::to_owned))
                .map(|c| c.principal().map_or(String::new(), |p| p.name.clone()))
                .map_err(|s| s.code());
            assert_eq!(
                got.as_ref().map(String::as_str).map_err(|c| *c),
                expected,
                "{path} {header:?} {subject:?}"
            );
        }
        // The refusal of an unmapped subject names it, so the operator knows what to map.
        let refused = policy
            .admit(write, &HeaderMap::new(), || Some("CN=stranger".into()))
            .unwrap_err();
        assert!(refused.message().contains("CN=stranger"), "{refused:?}");
    }
}
