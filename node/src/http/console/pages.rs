//! The console's pages. Each reads or writes through the node's `bunting.v1.Admin` service (the
//! gRPC port's, called in process), so every check the API makes (scopes, flag sets, versions,
//! the engine's compile of every write, the audit actor) is made the same way here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_server::Admin as AdminRpc;
use serde_json::Value;

use super::html::{self, escape, segment};
use super::rollout;
use super::session;
use super::{
    Form, Refused, Signed, admin, authorized, page, reader, status_page, violations, writer,
};
use crate::auth::ApiToken;
use crate::http::Edge;
use crate::service::flag_history;

/// Audit entries a page shows.
const AUDIT_PAGE: i32 = 100;

/// Pages of the audit log a rollback reads at most (1,000 entries each).
const MAX_ROLLBACK_PAGES: usize = 100;

type Params = Query<BTreeMap<String, String>>;

pub async fn home(State(edge): State<Edge>, headers: HeaderMap) -> Response {
    match reader(&edge, &headers) {
        Ok(_) => Redirect::to("/ui/sets").into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

pub async fn sign_in_form(Query(params): Params) -> Response {
    let notice = if params.contains_key("ended") {
        html::notice(
            "error",
            "Your session has ended (it expired, or the token was revoked). Sign in again.",
        )
    } else if params.contains_key("out") {
        html::notice("ok", "You are signed out.")
    } else {
        String::new()
    };
    sign_in_page(StatusCode::OK, &notice)
}

/// The sign-in form, with a fresh sign-in CSRF token in its cookie and in a hidden field.
fn sign_in_page(status: StatusCode, notice: &str) -> Response {
    let token = match session::new_token() {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "console: no sign-in token");
            return super::page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign in",
                None,
                &html::notice(
                    "error",
                    "The node could not make a sign-in form; try again.",
                ),
            );
        }
    };
    let body = format!(
        "{notice}<form method=\"post\" action=\"/ui/sign-in\" class=\"stack\">\
         <input type=\"hidden\" name=\"sign_in_csrf\" value=\"{token}\">\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required \
         autofocus aria-describedby=\"token-help\" placeholder=\"bnt_…\">\
         <p id=\"token-help\" class=\"help\">A token from <code>bunting tokens create</code>. It \
         is checked once and never stored in the browser: the console keeps a session on this \
         node instead. Each page then needs the same scope the API does (flags:read to look, \
         flags:write to change).</p>\
         <button type=\"submit\">Sign in</button></form>"
    );
    let mut response = super::page(status, "Sign in", None, &body);
    set_cookie(
        &mut response,
        &format!(
            "{}={token}; HttpOnly; SameSite=Strict; Path=/ui/sign-in",
            session::SIGN_IN_COOKIE
        ),
    );
    response
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

pub async fn sign_in(State(edge): State<Edge>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let refused = |text: &str| sign_in_page(StatusCode::UNAUTHORIZED, &html::notice("error", text));
    let expected = super::cookie(&headers, session::SIGN_IN_COOKIE).unwrap_or("");
    if !session::csrf_matches(expected, form.get("sign_in_csrf")) {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            &html::notice(
                "error",
                "This sign-in form expired or did not come from this console; nothing was done. \
                 Sign in with the form below.",
            ),
        );
    }
    let token = match ApiToken::parse(form.get("token").trim()) {
        Ok(token) => token,
        Err(e) => {
            return refused(&format!(
                "That is not a Bunting API token ({e}); paste the whole bnt_… token."
            ));
        }
    };
    let principal = match edge.inner.policy.sign_in(&token) {
        Ok(principal) => principal,
        Err(status) => return refused(&format!("{}.", status.message())),
    };
    let Some(id) = principal.id.token().cloned() else {
        return refused("Only API tokens can sign in to the console.");
    };
    let created = match edge.inner.console.sessions.create(id, Instant::now()) {
        Ok(created) => created,
        Err(e) => {
            tracing::error!(error = %e, "console: no session");
            return super::page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign in",
                None,
                &html::notice("error", "The node could not make a session; try again."),
            );
        }
    };
    tracing::info!(principal = %principal.describe(), "console: signed in");
    let mut response = Redirect::to("/ui/sets").into_response();
    // The HTTP listener serves plain HTTP (TLS, where used, ends in front of it), so the node
    // cannot know whether the browser's connection is secure: no `Secure` attribute. SameSite
    // keeps other sites' requests from carrying the cookie.
    set_cookie(
        &mut response,
        &format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/ui",
            session::COOKIE,
            created.cookie
        ),
    );
    // The sign-in token is spent.
    set_cookie(
        &mut response,
        &format!(
            "{}=; HttpOnly; SameSite=Strict; Path=/ui/sign-in; Max-Age=0",
            session::SIGN_IN_COOKIE
        ),
    );
    response
}

pub async fn sign_out(State(edge): State<Edge>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let signed = match writer(&edge, &headers, &form) {
        Ok(signed) => signed,
        Err(refusal) => return refusal.into_response(),
    };
    edge.inner.console.sessions.remove(&signed.cookie);
    let mut response = Redirect::to("/ui/sign-in?out=1").into_response();
    set_cookie(
        &mut response,
        &format!(
            "{}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0",
            session::COOKIE
        ),
    );
    response
}

pub async fn sets(State(edge): State<Edge>, headers: HeaderMap) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Admin/ListFlagSets",
        pb::ListFlagSetsRequest {}
    ));
    let list = rpc!(&signed, admin(&edge).list_flag_sets(request));
    let mut rows = String::new();
    for set in &list.flag_sets {
        let _ = write!(
            rows,
            "<tr><td><a href=\"/ui/sets/{seg}\">{id}</a></td><td>{version}</td>\
             <td><a href=\"/ui/sets/{seg}/audit\">Audit log</a></td></tr>",
            seg = segment(&set.id),
            id = escape(&set.id),
            version = set.version,
        );
    }
    let body = if rows.is_empty() {
        "<p>No flag sets you may see. Create one with <code>bunting flags push</code>.</p>"
            .to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Flag set</th><th scope=\"col\">Version</th>\
             <th scope=\"col\">History</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    page(StatusCode::OK, "Flag sets", Some(signed.header()), &body)
}

/// The set's flags and version, read through ListFlags.
async fn list_flags(
    edge: &Edge,
    signed: &Signed,
    set: &str,
) -> Result<pb::ListFlagsResponse, Refused> {
    let request = authorized(
        edge,
        signed,
        "/bunting.v1.Admin/ListFlags",
        pb::ListFlagsRequest {
            flag_set_id: set.to_owned(),
        },
    )?;
    admin(edge)
        .list_flags(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| Refused::from(status_page(signed, &status)))
}

fn definition(flag: &pb::Flag) -> Value {
    serde_json::from_str(&flag.definition).unwrap_or(Value::Null)
}

fn state_of(definition: &Value) -> &str {
    definition
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("?")
}

const NEW_FLAG: &str = "{\n  \"state\": \"ENABLED\",\n  \"variants\": {\"on\": true, \"off\": false},\n  \"defaultVariant\": \"off\"\n}";

pub async fn set_flags(
    State(edge): State<Edge>,
    Path(set): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let list = or_refuse!(list_flags(&edge, &signed, &set).await);
    let q = params.get("q").map_or("", |q| q.trim());
    let needle = q.to_lowercase();
    let mut rows = String::new();
    let mut shown = 0;
    for flag in &list.flags {
        if !needle.is_empty() && !flag.key.to_lowercase().contains(&needle) {
            continue;
        }
        shown += 1;
        let d = definition(flag);
        let _ = write!(
            rows,
            "<tr><td><a href=\"/ui/sets/{s}/flags/{k}\">{key}</a></td><td class=\"state\">{state}</td>\
             <td>{default}</td><td>{version}</td></tr>",
            s = segment(&set),
            k = segment(&flag.key),
            key = escape(&flag.key),
            state = escape(state_of(&d)),
            default = escape(
                d.get("defaultVariant")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ),
            version = flag.version,
        );
    }
    let table = if shown == 0 {
        format!(
            "<p>No flags{}.</p>",
            if q.is_empty() {
                String::new()
            } else {
                format!(" match {}", escape(q))
            }
        )
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Flag</th><th scope=\"col\">State</th>\
             <th scope=\"col\">Default variant</th><th scope=\"col\">Version</th></tr></thead>\
             <tbody>{rows}</tbody></table>"
        )
    };
    let body = format!(
        "<p>Version {version} · {count} flag(s) · <a href=\"/ui/sets/{s}/audit\">Audit log</a></p>\
         <form method=\"get\" action=\"/ui/sets/{s}\" role=\"search\" class=\"row\">\
         <label for=\"q\">Search flags</label>\
         <input id=\"q\" name=\"q\" type=\"search\" value=\"{q}\">\
         <button type=\"submit\">Search</button></form>{table}\
         <h2>New flag</h2>\
         <form method=\"post\" action=\"/ui/sets/{s}/flags\" class=\"stack\">{csrf}\
         <label for=\"key\">Key</label><input id=\"key\" name=\"key\" required>\
         <label for=\"definition\">Definition (flagd JSON)</label>\
         <textarea id=\"definition\" name=\"definition\" rows=\"8\">{new}</textarea>\
         <button type=\"submit\">Create flag</button></form>",
        version = list.flag_set_version,
        count = list.flags.len(),
        s = segment(&set),
        q = escape(q),
        csrf = html::csrf_field(&signed.csrf),
        new = escape(NEW_FLAG),
    );
    page(
        StatusCode::OK,
        &format!("Flag set {set}"),
        Some(signed.header()),
        &body,
    )
}

fn flag_url(set: &str, key: &str) -> String {
    format!("/ui/sets/{}/flags/{}", segment(set), segment(key))
}

pub async fn create_flag(
    State(edge): State<Edge>,
    Path(set): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let key = form.get("key").trim().to_owned();
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Admin/CreateFlag",
        pb::CreateFlagRequest {
            flag_set_id: set.clone(),
            key: key.clone(),
            definition: form.get("definition").to_owned(),
            expected_flag_set_version: 0,
            actor: signed.actor(),
        }
    ));
    rpc!(&signed, admin(&edge).create_flag(request));
    Redirect::to(&format!("{}?saved=1", flag_url(&set, &key))).into_response()
}

/// The flag `key` of `set` now, or a page saying it is not there.
pub(super) async fn read_flag(
    edge: &Edge,
    signed: &Signed,
    set: &str,
    key: &str,
) -> Result<(pb::Flag, i64), Refused> {
    let list = list_flags(edge, signed, set).await?;
    let version = list.flag_set_version;
    list.flags
        .into_iter()
        .find(|f| f.key == key)
        .map(|f| (f, version))
        .ok_or_else(|| {
            Refused::from(page(
                StatusCode::NOT_FOUND,
                "No such flag",
                Some(signed.header()),
                &format!(
                    "{}<p><a href=\"/ui/sets/{}\">Back to the flag set</a></p>",
                    html::notice("error", &format!("Flag set {set} has no flag {key}.")),
                    segment(set)
                ),
            ))
        })
}

pub async fn flag(
    State(edge): State<Edge>,
    Path((set, key)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let (flag, _) = or_refuse!(read_flag(&edge, &signed, &set, &key).await);
    let notice = if params.contains_key("saved") {
        html::notice(
            "ok",
            &format!("Saved: flag {key} is at version {}.", flag.version),
        )
    } else {
        String::new()
    };
    let body = flag_body(
        &signed,
        &set,
        &flag,
        &html::pretty(&definition(&flag)),
        &notice,
    );
    page(
        StatusCode::OK,
        &format!("Flag {key}"),
        Some(signed.header()),
        &body,
    )
}

/// The flag page: its state with the kill switch, and the definition editor holding `text`.
fn flag_body(signed: &Signed, set: &str, flag: &pb::Flag, text: &str, notice: &str) -> String {
    let d = definition(flag);
    let state = state_of(&d);
    let (action, next) = if state == "ENABLED" {
        ("Disable (kill switch)", "DISABLED")
    } else {
        ("Enable", "ENABLED")
    };
    let url = flag_url(set, &flag.key);
    format!(
        "{notice}<p><a href=\"/ui/sets/{s}\">Flag set {set_text}</a> · version {version} · \
         <a href=\"/ui/sets/{s}/audit\">Audit log</a> · \
         <a href=\"/ui/experiments/new?set={s}&amp;flag={k}\">New experiment on this flag</a></p>\
         <section aria-labelledby=\"state-h\"><h2 id=\"state-h\">State: <span class=\"state\" id=\"state\">{state}</span></h2>\
         <form method=\"post\" action=\"{url}/toggle\">{csrf}\
         <input type=\"hidden\" name=\"expected_version\" value=\"{version}\">\
         <input type=\"hidden\" name=\"state\" value=\"{next}\">\
         <button type=\"submit\" id=\"toggle\">{action}</button></form></section>\
         {rollout}<section aria-labelledby=\"edit-h\"><h2 id=\"edit-h\">Definition</h2>\
         <form method=\"post\" action=\"{url}/preview\" class=\"stack\">{csrf}\
         <input type=\"hidden\" name=\"expected_version\" value=\"{version}\">\
         <label for=\"definition\">Variants, targeting and rollout (flagd JSON; a rollout is \
         <code>fractional</code> with percentages)</label>\
         <textarea id=\"definition\" name=\"definition\" rows=\"20\" spellcheck=\"false\" \
         data-check=\"{url}/check\" aria-describedby=\"live-problems\">{text}</textarea>\
         <div id=\"live-problems\" aria-live=\"polite\"></div>\
         <button type=\"submit\">Review changes</button></form></section>\
         <script src=\"/ui/console.js\" defer></script>",
        s = segment(set),
        k = segment(&flag.key),
        set_text = escape(set),
        version = flag.version,
        state = escape(state),
        csrf = html::csrf_field(&signed.csrf),
        text = escape(text),
        rollout = rollout::section(&url, &signed.csrf, flag.version, &rollout::current(&d)),
    )
}

pub async fn toggle(
    State(edge): State<Edge>,
    Path((set, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let (flag, _) = or_refuse!(read_flag(&edge, &signed, &set, &key).await);
    let mut d = definition(&flag);
    let wanted = match form.get("state") {
        "ENABLED" => "ENABLED",
        _ => "DISABLED",
    };
    if let Some(object) = d.as_object_mut() {
        object.insert("state".into(), Value::String(wanted.into()));
    }
    // The version the page showed, not the one just read: a change made since is refused
    // rather than switched over unseen.
    save_definition(
        &edge,
        &signed,
        &set,
        &flag,
        &d.to_string(),
        form.version("expected_version"),
    )
    .await
}

/// The rollout form's split, written as the flag's targeting and shown for review like any edit.
pub async fn rollout(
    State(edge): State<Edge>,
    Path((set, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let (flag, _) = or_refuse!(read_flag(&edge, &signed, &set, &key).await);
    let stored = definition(&flag);
    let variants = rollout::current(&stored);
    match rollout::parse(&variants, |name| form.get(name).to_owned()) {
        Ok(split) => {
            let wanted = rollout::apply(&stored, &split);
            review(
                &signed,
                &set,
                &flag,
                &wanted,
                form.version("expected_version"),
            )
        }
        Err(e) => {
            let notice = html::notice(
                "error",
                &format!("Rollout not taken: {e}. Nothing was saved; correct it and review again."),
            );
            edit_refused(&signed, &set, &flag, &html::pretty(&stored), &notice)
        }
    }
}

pub async fn preview(
    State(edge): State<Edge>,
    Path((set, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let (flag, _) = or_refuse!(read_flag(&edge, &signed, &set, &key).await);
    let text = form.get("definition");
    let wanted: Value = match bunting_engine::parse_document(text) {
        Ok(value) => value,
        Err(e) => {
            let notice = html::notice(
                "error",
                &format!(
                    "The definition is not valid JSON: {e}. Nothing was saved; fix it and review again."
                ),
            );
            return edit_refused(&signed, &set, &flag, text, &notice);
        }
    };
    // The engine's check before the diff: a definition the save would refuse is shown again
    // with its problems, and nothing is sent.
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Admin/GetFlagSet",
        pb::GetFlagSetRequest { id: set.clone() }
    ));
    let record = rpc!(&signed, admin(&edge).get_flag_set(request));
    let evaluators = record.flag_set.and_then(|s| s.evaluators);
    let found = problems(&edge.inner.console.compile, &key, &wanted, evaluators);
    if !found.is_empty() {
        let notice = format!(
            "{}{}",
            html::notice(
                "error",
                "The engine refuses this definition; nothing was saved. Fix the problems below \
                 (each at its path) and review again."
            ),
            problem_list(&found)
        );
        return edit_refused(&signed, &set, &flag, text, &notice);
    }
    review(
        &signed,
        &set,
        &flag,
        &wanted,
        form.version("expected_version"),
    )
}

/// The flag page again, editor holding `text`, with `notice` saying why the edit was not taken.
fn edit_refused(signed: &Signed, set: &str, flag: &pb::Flag, text: &str, notice: &str) -> Response {
    let body = flag_body(signed, set, flag, text, notice);
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Flag {}", flag.key),
        Some(signed.header()),
        &body,
    )
}

/// The review page: stored and `wanted` side by side, and the form that saves `wanted` against
/// version `expected`.
fn review(signed: &Signed, set: &str, flag: &pb::Flag, wanted: &Value, expected: i64) -> Response {
    let body = confirm_body(signed, set, flag, wanted, expected, "");
    page(
        StatusCode::OK,
        &format!("Review flag {}", flag.key),
        Some(signed.header()),
        &body,
    )
}

/// The engine's check of an edit in progress, for the editor's live validation (`console.js`):
/// `{"problems": [{"path", "message"}]}` as JSON, the same problems "Review changes" would list.
/// Needs the session and its CSRF token like a write; reads the set's evaluators, writes nothing.
pub async fn check(
    State(edge): State<Edge>,
    Path((set, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let found = match bunting_engine::parse_document(form.get("definition")) {
        Err(e) => vec![(String::new(), format!("not valid JSON: {e}"))],
        Ok(wanted) => {
            let request = or_refuse!(authorized(
                &edge,
                &signed,
                "/bunting.v1.Admin/GetFlagSet",
                pb::GetFlagSetRequest { id: set.clone() }
            ));
            let record = rpc!(&signed, admin(&edge).get_flag_set(request));
            let evaluators = record.flag_set.and_then(|s| s.evaluators);
            problems(&edge.inner.console.compile, &key, &wanted, evaluators)
        }
    };
    let problems: Vec<Value> = found
        .into_iter()
        .map(|(path, message)| serde_json::json!({"path": path, "message": message}))
        .collect();
    axum::Json(serde_json::json!({ "problems": problems })).into_response()
}

/// The engine's errors in `wanted` as flag `key` of a set with `evaluators`: the document the
/// store compiles on save holds the whole set, but a flag's problems depend only on itself and
/// the set's evaluators, and carry the same paths (`flags.<key>.targeting...`).
fn problems(
    options: &bunting_engine::CompileOptions,
    key: &str,
    wanted: &Value,
    evaluators: Option<prost_types::Struct>,
) -> Vec<(String, String)> {
    let evaluators = evaluators
        .and_then(|e| bunting_proto::json::struct_into_json(e).ok())
        .unwrap_or_default();
    let mut flags = serde_json::Map::new();
    flags.insert(key.to_owned(), wanted.clone());
    let document = serde_json::json!({"flags": flags, "$evaluators": evaluators});
    match bunting_engine::compile_value(&document, options) {
        Ok(compiled) => compiled
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == bunting_engine::Severity::Error)
            .map(|d| (d.path, d.message))
            .collect(),
        Err(e) => vec![(String::new(), e.to_string())],
    }
}

fn problem_list(problems: &[(String, String)]) -> String {
    let items: String = problems
        .iter()
        .map(|(path, message)| {
            format!("<li><code>{}</code> {}</li>", escape(path), escape(message))
        })
        .collect();
    format!("<ul class=\"problems\" aria-label=\"Problems\">{items}</ul>")
}

/// Before and after side by side, and the form that saves `wanted` against `expected`.
fn confirm_body(
    signed: &Signed,
    set: &str,
    flag: &pb::Flag,
    wanted: &Value,
    expected: i64,
    notice: &str,
) -> String {
    let before = html::pretty(&definition(flag));
    let after = html::pretty(wanted);
    let unchanged = if before == after {
        html::notice(
            "ok",
            "No change: the definition is the same as the stored one.",
        )
    } else {
        String::new()
    };
    format!(
        "{notice}{unchanged}{diff}<form method=\"post\" action=\"{url}/save\">{csrf}\
         <input type=\"hidden\" name=\"expected_version\" value=\"{expected}\">\
         <input type=\"hidden\" name=\"definition\" value=\"{after_attr}\">\
         <button type=\"submit\" id=\"save\">Save as version {next}</button> \
         <a href=\"{url}\">Cancel</a></form>",
        diff = html::side_by_side(
            &format!("Stored (version {})", flag.version),
            &before,
            "Yours",
            &after
        ),
        url = flag_url(set, &flag.key),
        csrf = html::csrf_field(&signed.csrf),
        after_attr = escape(&wanted.to_string()),
        next = expected + 1,
    )
}

pub async fn save(
    State(edge): State<Edge>,
    Path((set, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let (flag, _) = or_refuse!(read_flag(&edge, &signed, &set, &key).await);
    save_definition(
        &edge,
        &signed,
        &set,
        &flag,
        form.get("definition"),
        form.version("expected_version"),
    )
    .await
}

/// UpdateFlag with `text` against version `expected`; a refusal is shown where it can be fixed:
/// the engine's problems beside the editor, a stale edit as the diff against what is stored now.
async fn save_definition(
    edge: &Edge,
    signed: &Signed,
    set: &str,
    current: &pb::Flag,
    text: &str,
    expected: i64,
) -> Response {
    let request = or_refuse!(authorized(
        edge,
        signed,
        "/bunting.v1.Admin/UpdateFlag",
        pb::UpdateFlagRequest {
            flag_set_id: set.to_owned(),
            key: current.key.clone(),
            definition: text.to_owned(),
            expected_version: expected,
            actor: signed.actor(),
        }
    ));
    let title = format!("Flag {}", current.key);
    match admin(edge).update_flag(request).await {
        Ok(_) => Redirect::to(&format!("{}?saved=1", flag_url(set, &current.key))).into_response(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            let notice = format!(
                "{}{}",
                html::notice(
                    "error",
                    &format!(
                        "Not saved: {} Fix the definition and review again.",
                        status.message()
                    )
                ),
                violations(&status)
            );
            edit_refused(signed, set, current, text, &notice)
        }
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            // Someone else saved first: show theirs against this edit, and offer to save this
            // edit over the version now stored, knowingly.
            let wanted =
                bunting_engine::parse_document(text).unwrap_or(Value::String(text.to_owned()));
            let notice = html::notice(
                "error",
                &format!(
                    "Not saved: someone else changed flag {} first (you edited version {expected}; \
                     it is now at version {}). Compare, then save yours over theirs or cancel.",
                    current.key, current.version
                ),
            );
            let body = confirm_body(signed, set, current, &wanted, current.version, &notice);
            page(StatusCode::CONFLICT, &title, Some(signed.header()), &body)
        }
        Err(status) => status_page(signed, &status),
    }
}

pub async fn audit(
    State(edge): State<Edge>,
    Path(set): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let signed = or_refuse!(reader(&edge, &headers));
    let list = or_refuse!(list_flags(&edge, &signed, &set).await);
    let before_id = params
        .get("before")
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Admin/ListAudit",
        pb::ListAuditRequest {
            flag_set_id: set.clone(),
            flag_key: String::new(),
            before_id,
            limit: AUDIT_PAGE,
        }
    ));
    let page_of = rpc!(&signed, admin(&edge).list_audit(request));
    let mut rows = String::new();
    for e in &page_of.entries {
        let action = pb::AuditAction::try_from(e.action)
            .map_or("?", |a| a.as_str_name().trim_start_matches("AUDIT_ACTION_"));
        let at =
            e.at.as_ref()
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default();
        let json = |text: &str| {
            serde_json::from_str::<Value>(text)
                .map_or_else(|_| text.to_owned(), |v| html::pretty(&v))
        };
        let rollback = if e.flag_set_version < list.flag_set_version {
            format!(
                "<form method=\"post\" action=\"/ui/sets/{s}/rollback\">{csrf}\
                 <input type=\"hidden\" name=\"to_version\" value=\"{v}\">\
                 <input type=\"hidden\" name=\"current_version\" value=\"{cur}\">\
                 <button type=\"submit\" class=\"rollback\" data-version=\"{v}\">Roll back to version {v}</button></form>",
                s = segment(&set),
                csrf = html::csrf_field(&signed.csrf),
                v = e.flag_set_version,
                cur = list.flag_set_version,
            )
        } else {
            "current".to_owned()
        };
        let what = if e.flag_key.is_empty() {
            "(the set)".to_owned()
        } else {
            escape(&e.flag_key)
        };
        let _ = write!(
            rows,
            "<tr><td>{v}</td><td>{at}</td><td>{actor}</td><td>{action}</td><td>{what}</td>\
             <td>{diff}</td><td>{rollback}</td></tr>",
            v = e.flag_set_version,
            at = escape(&at),
            actor = escape(&e.actor),
            diff = html::side_by_side(
                "Before",
                &json(&e.before_json),
                "After",
                &json(&e.after_json)
            ),
        );
    }
    let more = if page_of.next_before_id > 0 {
        format!(
            "<p><a href=\"/ui/sets/{}/audit?before={}\">Older entries</a></p>",
            segment(&set),
            page_of.next_before_id
        )
    } else {
        String::new()
    };
    let body = format!(
        "<p><a href=\"/ui/sets/{s}\">Flag set {set_text}</a> · now at version {cur}</p>\
         <table class=\"audit\"><thead><tr><th scope=\"col\">Version</th><th scope=\"col\">At</th>\
         <th scope=\"col\">Actor</th><th scope=\"col\">Action</th><th scope=\"col\">Flag</th>\
         <th scope=\"col\">Before / after</th><th scope=\"col\">Rollback</th></tr></thead>\
         <tbody>{rows}</tbody></table>{more}",
        s = segment(&set),
        set_text = escape(&set),
        cur = list.flag_set_version,
    );
    page(
        StatusCode::OK,
        &format!("Audit log of {set}"),
        Some(signed.header()),
        &body,
    )
}

/// Restores the set's flags as they were at a version: the audit log replayed
/// ([`flag_history::flags_at`]) and written as one ApplyFlagChanges batch
/// ([`flag_history::plan`]), exactly as `bunting flags rollback` does, guarded by the version the
/// audit page showed.
pub async fn rollback(
    State(edge): State<Edge>,
    Path(set): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let signed = or_refuse!(writer(&edge, &headers, &form));
    let to_version = form.version("to_version");
    let shown = form.version("current_version");
    let refused = |text: String| {
        page(
            StatusCode::CONFLICT,
            "Rollback refused",
            Some(signed.header()),
            &format!(
                "{}<p><a href=\"/ui/sets/{}/audit\">Back to the audit log</a></p>",
                html::notice("error", &text),
                segment(&set)
            ),
        )
    };
    let current = or_refuse!(list_flags(&edge, &signed, &set).await);
    if shown != current.flag_set_version {
        return refused(format!(
            "Nothing was changed: flag set {set} changed since the audit log was shown (version \
             {shown}, now {}). Read the log again and choose the version once more.",
            current.flag_set_version
        ));
    }
    if to_version < 1 || to_version >= current.flag_set_version {
        return refused(format!(
            "Nothing was changed: choose a version from 1 to {} to roll back to.",
            current.flag_set_version - 1
        ));
    }
    let mut entries = Vec::new();
    let mut before_id = 0;
    for _ in 0..MAX_ROLLBACK_PAGES {
        let request = or_refuse!(authorized(
            &edge,
            &signed,
            "/bunting.v1.Admin/ListAudit",
            pb::ListAuditRequest {
                flag_set_id: set.clone(),
                flag_key: String::new(),
                before_id,
                limit: 1000,
            }
        ));
        let page_of = rpc!(&signed, admin(&edge).list_audit(request));
        entries.extend(page_of.entries);
        before_id = page_of.next_before_id;
        if before_id == 0 {
            break;
        }
    }
    if before_id != 0 {
        return refused(format!(
            "Nothing was changed: flag set {set}'s audit log is longer than the console reads; \
             use `bunting flags rollback`."
        ));
    }
    entries.reverse();
    let target = match flag_history::flags_at(&entries, to_version) {
        Ok(target) => target,
        Err(e) => return refused(format!("Nothing was changed: {e}.")),
    };
    let flags: BTreeMap<String, pb::Flag> = current
        .flags
        .iter()
        .map(|f| (f.key.clone(), f.clone()))
        .collect();
    let (changes, _) = flag_history::plan(&target, &flags, true);
    if changes.is_empty() {
        return Redirect::to(&format!("/ui/sets/{}/audit", segment(&set))).into_response();
    }
    let request = or_refuse!(authorized(
        &edge,
        &signed,
        "/bunting.v1.Admin/ApplyFlagChanges",
        pb::ApplyFlagChangesRequest {
            flag_set_id: set.clone(),
            changes,
            expected_flag_set_version: current.flag_set_version,
            actor: signed.actor(),
            ..Default::default()
        }
    ));
    rpc!(&signed, admin(&edge).apply_flag_changes(request));
    Redirect::to(&format!("/ui/sets/{}/audit", segment(&set))).into_response()
}
