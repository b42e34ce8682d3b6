//! The tokens page over `bunting.v1.Tokens`, called in process with the signed-in caller after
//! the API's scope check (tokens:admin): list, create, revoke. A new token's secret is shown once:
//! the create form's answer holds it in the session and redirects to the page that takes it, so a
//! reload of that page shows it no more (and posts nothing again). It is never logged.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::tokens_server::Tokens as TokensRpc;
use chrono::{DateTime, Utc};

use super::html::{self, escape, segment};
use super::{Form, Refused, Signed, authorized, page, reader, status_page, writer};
use crate::auth::Scope;
use crate::http::Edge;

type Params = Query<std::collections::BTreeMap<String, String>>;

/// The longest expiry the form takes, in days (ten years).
const MAX_EXPIRY_DAYS: u32 = 3650;

fn tokens(edge: &Edge) -> &impl TokensRpc {
    &edge.inner.console.tokens
}

/// A protobuf time as the pages show it, or `None` when unset or out of range.
pub(super) fn when(at: Option<&prost_types::Timestamp>) -> Option<String> {
    let at = at?;
    let nanos = u32::try_from(at.nanos).unwrap_or(0);
    DateTime::<Utc>::from_timestamp(at.seconds, nanos)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// The form field for `scope`'s checkbox, and its element id.
fn scope_field(scope: Scope) -> (String, String) {
    (
        format!("scope.{}", scope.as_str()),
        format!("scope-{}", scope.as_str().replace(':', "-")),
    )
}

async fn list_tokens(edge: &Edge, signed: &Signed) -> Result<Vec<pb::TokenInfo>, Refused> {
    let request = authorized(
        edge,
        signed,
        "/bunting.v1.Tokens/ListTokens",
        pb::ListTokensRequest {},
    )?;
    tokens(edge)
        .list_tokens(request)
        .await
        .map(|r| r.into_inner().tokens)
        .map_err(|status| Refused::from(status_page(signed, &status)))
}

pub async fn list(State(edge): State<Edge>, Query(params): Params, headers: HeaderMap) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let list = or_refuse!(list_tokens(&edge, &signed).await);
    let notice = match params.get("revoked") {
        Some(id) => html::notice(
            "ok",
            &format!("Revoked token {id}: every node refuses it within a second."),
        ),
        None => String::new(),
    };
    let mut rows = String::new();
    for token in &list {
        let sets = if token.all_flag_sets {
            "all".to_owned()
        } else {
            token.flag_sets.join(", ")
        };
        let revoked = match when(token.revoked_at.as_ref()) {
            Some(at) => format!("revoked {}", escape(&at)),
            None => format!(
                "<a href=\"/ui/tokens/{}/revoke\" aria-label=\"Revoke {}\">Revoke…</a>",
                segment(&token.id),
                escape(&token.name)
            ),
        };
        let _ = write!(
            rows,
            "<tr><td>{name}</td><td><code>{id}</code></td><td>{scopes}</td><td>{sets}</td>\
             <td>{expires}</td><td>{by}</td><td>{revoked}</td></tr>",
            name = escape(&token.name),
            id = escape(&token.id),
            scopes = escape(&token.scopes.join(", ")),
            sets = escape(&sets),
            expires = escape(&when(token.expires_at.as_ref()).unwrap_or_else(|| "never".into())),
            by = escape(&token.created_by),
        );
    }
    let table = if rows.is_empty() {
        "<p>No tokens.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Id</th>\
             <th scope=\"col\">Scopes</th><th scope=\"col\">Flag sets</th>\
             <th scope=\"col\">Expires</th><th scope=\"col\">Created by</th>\
             <th scope=\"col\">Revoked</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let mut boxes = String::new();
    for scope in Scope::ALL {
        let (name, id) = scope_field(scope);
        let _ = write!(
            boxes,
            "<span class=\"check\"><input type=\"checkbox\" id=\"{id}\" name=\"{name}\">\
             <label for=\"{id}\">{scope}</label></span>",
            scope = scope.as_str(),
        );
    }
    let body = format!(
        "{notice}{table}<h2>New token</h2>\
         <form method=\"post\" action=\"/ui/tokens\" class=\"stack\">{csrf}\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" required>\
         <fieldset><legend>Scopes</legend>{boxes}</fieldset>\
         <label for=\"flag_sets\">Flag sets (comma-separated)</label>\
         <input id=\"flag_sets\" name=\"flag_sets\" aria-describedby=\"sets-help\">\
         <span class=\"check\"><input type=\"checkbox\" id=\"all_flag_sets\" name=\"all_flag_sets\">\
         <label for=\"all_flag_sets\">All flag sets</label></span>\
         <p id=\"sets-help\" class=\"help\">Name the flag sets, or tick all flag sets. A token \
         cannot have more scopes or flag sets than yours.</p>\
         <label for=\"expires_days\">Expires in days (empty: never)</label>\
         <input id=\"expires_days\" name=\"expires_days\" inputmode=\"numeric\">\
         <button type=\"submit\">Create token</button></form>",
        csrf = html::csrf_field(&signed.csrf),
    );
    page(StatusCode::OK, "Tokens", Some(signed.header()), &body)
}

/// A form refused before anything was sent: the message says which field and what to do.
fn bad_form(signed: &Signed, text: &str) -> Response {
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Refused",
        Some(signed.header()),
        &format!(
            "{}<p><a href=\"/ui/tokens\">Back to the tokens</a></p>",
            html::notice("error", text)
        ),
    )
}

/// The CreateToken request a create form asks for, or why the form is wrong.
fn create_request(form: &Form, now: DateTime<Utc>) -> Result<pb::CreateTokenRequest, String> {
    let scopes = Scope::ALL
        .into_iter()
        .filter(|s| form.get(&scope_field(*s).0) == "on")
        .map(|s| s.as_str().to_owned())
        .collect();
    let flag_sets = form
        .get("flag_sets")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let days = form.get("expires_days").trim();
    let expires_at = if days.is_empty() {
        None
    } else {
        let days: u32 = days
            .parse()
            .ok()
            .filter(|d| (1..=MAX_EXPIRY_DAYS).contains(d))
            .ok_or_else(|| {
                format!(
                    "Expires in days {days:?} is not a whole number from 1 to {MAX_EXPIRY_DAYS}; \
                     leave it empty for a token that does not expire. Nothing was created."
                )
            })?;
        let at = now + chrono::Duration::days(i64::from(days));
        Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: 0,
        })
    };
    Ok(pb::CreateTokenRequest {
        name: form.get("name").trim().to_owned(),
        scopes,
        flag_sets,
        all_flag_sets: form.get("all_flag_sets") == "on",
        expires_at,
    })
}

pub async fn create(State(edge): State<Edge>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let message = match create_request(&form, Utc::now()) {
        Ok(message) => message,
        Err(text) => return bad_form(&signed, &text),
    };
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Tokens/CreateToken",
        message
    ));
    let created = rpc!(&signed, tokens(&edge).create_token(request));
    let id = created.token.map(|t| t.id).unwrap_or_default();
    edge.inner
        .console
        .sessions
        .hold_secret(&signed.cookie, created.token_secret);
    Redirect::to(&format!("/ui/tokens/created?id={}", segment(&id))).into_response()
}

pub async fn created(
    State(edge): State<Edge>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let id = params.get("id").map_or("", String::as_str);
    let body = match edge.inner.console.sessions.take_secret(&signed.cookie) {
        Some(secret) => format!(
            "{}<p>Token <code>{id}</code>:</p><pre id=\"secret\" aria-label=\"The new token\">{secret}</pre>\
             <p class=\"help\">Send it as <code>authorization: Bearer &lt;token&gt;</code>. This \
             page will not show it again: reloading it, or coming back, shows this notice \
             instead. If it is lost, revoke the token and create another.</p>\
             <p><a href=\"/ui/tokens\">Back to the tokens</a></p>",
            html::notice(
                "ok",
                "Created. Copy the token now: it is shown this once only."
            ),
            id = escape(id),
            secret = escape(secret.reveal()),
        ),
        None => format!(
            "{}<p><a href=\"/ui/tokens\">Back to the tokens</a></p>",
            html::notice(
                "error",
                "A token's secret is shown once only, and it has been (the node does not keep \
                 it). If it was lost, revoke the token and create another."
            )
        ),
    };
    page(StatusCode::OK, "New token", Some(signed.header()), &body)
}

/// The confirmation a revoke asks for: the token named, and the form that revokes it.
pub async fn confirm(
    State(edge): State<Edge>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let list = or_refuse!(list_tokens(&edge, &signed).await);
    let Some(token) = list.into_iter().find(|t| t.id == id) else {
        return page(
            StatusCode::NOT_FOUND,
            "No such token",
            Some(signed.header()),
            &format!(
                "{}<p><a href=\"/ui/tokens\">Back to the tokens</a></p>",
                html::notice("error", &format!("There is no token {id}."))
            ),
        );
    };
    let mine = signed.principal.id.token().map(|t| t.as_str()) == Some(token.id.as_str());
    let warning = if mine {
        html::notice(
            "error",
            "This is the token you are signed in with: revoking it signs you out.",
        )
    } else {
        String::new()
    };
    let body = format!(
        "{warning}<p>Revoke token <strong>{name}</strong> (<code>{id}</code>, scopes {scopes})? \
         Every node refuses it within a second, and its console sessions end. This cannot be \
         undone.</p>\
         <form method=\"post\" action=\"/ui/tokens/{seg}/revoke\" class=\"row\">{csrf}\
         <button type=\"submit\">Revoke {name}</button> <a href=\"/ui/tokens\">Cancel</a></form>",
        name = escape(&token.name),
        id = escape(&token.id),
        scopes = escape(&token.scopes.join(", ")),
        seg = segment(&token.id),
        csrf = html::csrf_field(&signed.csrf),
    );
    page(StatusCode::OK, "Revoke token", Some(signed.header()), &body)
}

pub async fn revoke(
    State(edge): State<Edge>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Tokens/RevokeToken",
        pb::RevokeTokenRequest { id: id.clone() }
    ));
    rpc!(&signed, tokens(&edge).revoke_token(request));
    tracing::info!(%id, by = %signed.actor(), "console: api token revoked");
    Redirect::to(&format!("/ui/tokens?revoked={}", segment(&id))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &str)]) -> Form {
        Form(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn create_forms_as_a_table() {
        let now = Utc::now();
        let ok = create_request(
            &form(&[
                ("name", " ci "),
                ("scope.flags:read", "on"),
                ("scope.evaluate", "on"),
                ("scope.sync", "off"),
                ("flag_sets", "shop, , web "),
                ("expires_days", "30"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(ok.name, "ci");
        assert_eq!(ok.scopes, ["evaluate", "flags:read"]);
        assert_eq!(ok.flag_sets, ["shop", "web"]);
        assert!(!ok.all_flag_sets);
        assert_eq!(
            ok.expires_at.map(|t| t.seconds),
            Some((now + chrono::Duration::days(30)).timestamp())
        );
        let all = create_request(&form(&[("all_flag_sets", "on")]), now).unwrap();
        assert!(all.all_flag_sets && all.expires_at.is_none());
        for days in ["0", "-1", "1.5", "x", "3651"] {
            let err = create_request(&form(&[("expires_days", days)]), now).unwrap_err();
            assert!(err.contains(days), "{err}");
        }
    }
}
