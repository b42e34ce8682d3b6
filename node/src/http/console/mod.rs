//! The web console at `/ui` on the HTTP listener (issue 13; ARCHITECTURE.md, "The console").
//!
//! - [`html`]: the one escaping function and the page layout; no template engine.
//! - [`session`]: sign-in sessions (random ids in a bounded in-memory table) and CSRF tokens.
//! - [`tokens`]: the tokens page over `bunting.v1.Tokens`; [`cluster`]: the cluster page over
//!   `bunting.v1.ClusterAdmin`; [`experiments`]: experiments and their results (with
//!   [`chart`]'s inline SVG) over `bunting.v1.Experiments`; all called in process like the
//!   Admin service, after the same scope table's check.
//! - [`pages`]: the pages, each a call to the same `bunting.v1.Admin` service the gRPC port
//!   serves, with the signed-in token's [`Caller`] in the request's extensions, after the same
//!   scope table's check ([`crate::auth::scope::required`]) the auth layer makes for gRPC.
//!
//! Every answer carries the security headers in [`security_headers`]; the stylesheet and the one
//! script (live validation in the flag editor, `console.js`) are in the binary (`include_str!`),
//! and the CSP allows scripts from this origin only: no inline script, no `eval`. Every page
//! works without the script.

/// Runs `$call` (an Admin RPC future), or returns its refusal as a page.
macro_rules! rpc {
    ($signed:expr, $call:expr) => {
        match $call.await {
            Ok(response) => response.into_inner(),
            Err(status) => return status_page($signed, &status),
        }
    };
}

/// Unwraps a `Result<_, Response>`, returning the refusal.
macro_rules! or_refuse {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(refusal) => return refusal.into_response(),
        }
    };
}

mod chart;
mod cluster;
mod experiments;
mod html;
mod pages;
mod rollout;
pub mod session;
mod tokens;

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bunting_proto::bunting::v1::admin_server::Admin as AdminRpc;
use chrono::Utc;

use super::Edge;
use crate::auth::{Caller, Principal, scope};

/// The stylesheet, served at `/ui/console.css`.
const CSS: &str = include_str!("console.css");

/// Live validation for the flag editor, served at `/ui/console.js`: the only script, written to
/// insert text only (`textContent`), so no HTML from an answer ever reaches the page.
const SCRIPT: &str = include_str!("console.js");

/// The icon, served at `/ui/favicon.svg` (without one, browsers ask for `/favicon.ico`, which
/// the edge does not serve, and log the 404).
const ICON: &str = include_str!("favicon.svg");

/// The strictest policy the pages work under: only this origin's stylesheet, no script at all,
/// forms post only here, and no page may frame the console.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes; [`super::router`] merges them in.
pub fn routes(edge: &Edge) -> Router<Edge> {
    Router::new()
        .route("/ui", get(pages::home))
        .route("/ui/", get(pages::home))
        .route("/ui/console.css", get(css))
        .route("/ui/console.js", get(script))
        .route("/ui/favicon.svg", get(icon))
        .route("/ui/sign-in", get(pages::sign_in_form).post(pages::sign_in))
        .route("/ui/sign-out", post(pages::sign_out))
        .route("/ui/sets", get(pages::sets))
        .route("/ui/sets/{set}", get(pages::set_flags))
        .route("/ui/sets/{set}/flags", post(pages::create_flag))
        .route("/ui/sets/{set}/flags/{key}", get(pages::flag))
        .route("/ui/sets/{set}/flags/{key}/toggle", post(pages::toggle))
        .route("/ui/sets/{set}/flags/{key}/preview", post(pages::preview))
        .route("/ui/sets/{set}/flags/{key}/rollout", post(pages::rollout))
        .route("/ui/sets/{set}/flags/{key}/check", post(pages::check))
        .route("/ui/sets/{set}/flags/{key}/save", post(pages::save))
        .route("/ui/sets/{set}/audit", get(pages::audit))
        .route("/ui/sets/{set}/rollback", post(pages::rollback))
        .route("/ui/tokens", get(tokens::list).post(tokens::create))
        .route("/ui/tokens/created", get(tokens::created))
        .route(
            "/ui/tokens/{id}/revoke",
            get(tokens::confirm).post(tokens::revoke),
        )
        .route(
            "/ui/experiments",
            get(experiments::list).post(experiments::create),
        )
        .route("/ui/experiments/new", get(experiments::new))
        .route("/ui/experiments/{id}", get(experiments::show))
        .route("/ui/experiments/{id}/start", post(experiments::start))
        .route("/ui/experiments/{id}/stop", post(experiments::stop))
        .route("/ui/cluster", get(cluster::status))
        .route("/ui/cluster/drain", post(cluster::drain))
        .route("/ui/cluster/undrain", post(cluster::undrain))
        .layer(axum::middleware::from_fn_with_state(edge.clone(), guard))
        .layer(axum::middleware::map_response(security_headers))
}

/// Refuses every console route on a node whose admin API has its own listener (`admin_addr`):
/// the operator kept writes off the client-facing ports, and a console on the HTTP listener
/// would put them back there.
async fn guard(
    axum::extract::State(edge): axum::extract::State<Edge>,
    request: Request,
    next: Next,
) -> Response {
    if edge.inner.console.enabled {
        return next.run(request).await;
    }
    let body = html::notice(
        "error",
        "The console is off on this node: its admin API is served on a separate listener \
         (admin_addr), and the console would serve admin writes on the HTTP listener. Use the \
         admin CLI against admin_addr, or a node without admin_addr.",
    );
    page(
        StatusCode::NOT_FOUND,
        "Console not served here",
        None,
        &body,
    )
}

/// The headers every console answer carries.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn icon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON).into_response()
}

/// What the console holds for itself beside the edge's state.
#[derive(Debug)]
pub struct Console {
    pub enabled: bool,
    /// How this node compiles flag sets (`server::compile_options`): the review page checks an
    /// edit with them, so it reports what the save would.
    pub compile: bunting_engine::CompileOptions,
    pub admin: crate::service::Admin,
    pub tokens: crate::service::TokensService,
    pub cluster: crate::service::TopologyService,
    pub experiments: crate::service::ExperimentsService,
    pub sessions: session::Sessions,
}

/// A signed-in request: the token's principal as the registry has it now, its session's CSRF
/// token and cookie value.
#[derive(Debug, Clone)]
struct Signed {
    principal: std::sync::Arc<Principal>,
    caller: Caller,
    csrf: String,
    cookie: String,
}

impl Signed {
    fn header(&self) -> html::Header<'_> {
        html::Header {
            who: &self.principal.name,
            csrf: &self.csrf,
        }
    }

    /// Who the audit log names for a console write: the token's name (the Admin service puts it
    /// first) and its public id.
    fn actor(&self) -> String {
        format!("{} via the console", self.principal.id)
    }
}

/// The session cookie's value in `headers`, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, session::COOKIE)
}

/// The value of cookie `name` in `headers`, if any.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Why a request is not signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotSignedIn {
    /// No cookie.
    Never,
    /// A cookie the table does not know (expired, evicted, signed out, or another node's), or a
    /// token since revoked or expired.
    Ended,
}

fn signed_in(edge: &Edge, headers: &HeaderMap) -> Result<Signed, NotSignedIn> {
    let cookie = session_cookie(headers).ok_or(NotSignedIn::Never)?;
    let console = &edge.inner.console;
    let current = console
        .sessions
        .get(cookie, Instant::now())
        .ok_or(NotSignedIn::Ended)?;
    let principal = edge
        .inner
        .policy
        .registry()
        .current(&current.token, Utc::now())
        .map_err(|_| {
            console.sessions.remove(cookie);
            NotSignedIn::Ended
        })?;
    Ok(Signed {
        caller: Caller::Authenticated(principal.clone()),
        principal,
        csrf: current.csrf,
        cookie: cookie.to_owned(),
    })
}

/// A page for a GET: signed in, or sent to the sign-in page.
fn reader(edge: &Edge, headers: &HeaderMap) -> Result<Signed, Refused> {
    signed_in(edge, headers).map_err(|why| {
        let to = match why {
            NotSignedIn::Never => "/ui/sign-in",
            NotSignedIn::Ended => "/ui/sign-in?ended=1",
        };
        Refused::from(Redirect::to(to).into_response())
    })
}

/// A form post: signed in, and carrying this session's CSRF token; else refused with a page
/// saying what to do, before anything is read or written.
fn writer(edge: &Edge, headers: &HeaderMap, form: &Form) -> Result<Signed, Refused> {
    let signed = signed_in(edge, headers).map_err(|_| {
        Refused::from(page(
            StatusCode::UNAUTHORIZED,
            "Signed out",
            None,
            &format!(
                "{}<p><a href=\"/ui/sign-in\">Sign in</a>, then make the change again.</p>",
                html::notice(
                    "error",
                    "Your session has ended (it expired, you signed out, or the token was \
                     revoked). Nothing was changed."
                )
            ),
        ))
    })?;
    if !session::csrf_matches(&signed.csrf, form.get("csrf")) {
        return Err(Refused::from(page(
            StatusCode::FORBIDDEN,
            "Form refused",
            Some(signed.header()),
            &format!(
                "{}<p><a href=\"/ui/sets\">Go back to the flag sets</a>, reload the page you \
                 came from and submit it again.</p>",
                html::notice(
                    "error",
                    "This form did not carry this session's CSRF token (it came from an old \
                     page, another session, or another site). Nothing was changed."
                )
            ),
        )));
    }
    Ok(signed)
}

/// `message` as the request of `method` (`/bunting.v1.Admin/UpdateFlag`) from `signed`, once its
/// token has the scope the API's table gives that method, and for a write, within its rate.
fn authorized<T>(
    edge: &Edge,
    signed: &Signed,
    method: &str,
    message: T,
) -> Result<tonic::Request<T>, Refused> {
    let refused = |text: String| {
        Refused::from(page(
            StatusCode::FORBIDDEN,
            "Not allowed",
            Some(signed.header()),
            &html::notice("error", &text),
        ))
    };
    let Some(scope) = scope::required(method) else {
        return Err(refused(format!(
            "{method} is not a method this node serves"
        )));
    };
    if !signed.caller.has(scope) {
        return Err(refused(format!(
            "{} does not have scope {scope}, which this needs ({method}); sign in with a token \
             that has it",
            signed.principal.describe()
        )));
    }
    // Write scopes spend the caller's write budget, as through the gRPC layer; reads spend none.
    edge.inner
        .policy
        .check_rate(scope, &signed.caller)
        .map_err(|s| Refused::from(status_page(signed, &s)))?;
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(signed.caller.clone());
    Ok(request)
}

fn admin(edge: &Edge) -> &impl AdminRpc {
    &edge.inner.console.admin
}

/// A refusal answered instead of the page asked for (boxed: a response is large, and most
/// calls succeed).
#[derive(Debug)]
struct Refused(Box<Response>);

impl From<Response> for Refused {
    fn from(response: Response) -> Refused {
        Refused(Box::new(response))
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A whole page answer.
fn page(status: StatusCode, title: &str, header: Option<html::Header<'_>>, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html::page(title, header, body),
    )
        .into_response()
}

/// A refusal from the Admin service as a page: its message, and each field violation (the
/// engine's path-level problems) as a list.
fn status_page(signed: &Signed, status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::UNPROCESSABLE_ENTITY,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    page(
        code,
        "Refused",
        Some(signed.header()),
        &format!(
            "{}{}<p><a href=\"/ui/sets\">Back to the flag sets</a></p>",
            html::notice("error", status.message()),
            violations(status)
        ),
    )
}

/// The field violations of an INVALID_ARGUMENT status (the engine's problems by JSON path).
fn violations(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let Some(bad) = status.get_details_bad_request() else {
        return String::new();
    };
    let items: String = bad
        .field_violations
        .iter()
        .map(|v| {
            format!(
                "<li><code>{}</code> {}</li>",
                html::escape(&v.field),
                html::escape(&v.description)
            )
        })
        .collect();
    if items.is_empty() {
        return String::new();
    }
    format!("<ul class=\"problems\" aria-label=\"Problems\">{items}</ul>")
}

/// An `application/x-www-form-urlencoded` body's fields (the last of a repeated name wins).
#[derive(Debug, Default)]
struct Form(std::collections::HashMap<String, String>);

impl Form {
    fn parse(body: &Bytes) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    fn version(&self, name: &str) -> i64 {
        self.get(name).trim().parse().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let cases: [(&[&str], Option<&str>); 5] = [
            (&[], None),
            (&["a=1; bunting_session=abc; b=2"], Some("abc")),
            (&["bunting_session_x=1"], None),
            (&["a=1", "bunting_session=def"], Some("def")),
            (&["xbunting_session=1"], None),
        ];
        for (values, expected) in cases {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(session_cookie(&headers), expected, "{values:?}");
        }
    }
}
