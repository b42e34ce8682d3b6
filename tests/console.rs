//! The web console at `/ui` against in-process nodes on in-memory stores: sign-in and its
//! session cookie, the security headers, the router's refusals (no session, a forged or missing
//! CSRF token, an ended session, a token without the scope) each changing nothing, and the
//! writes (kill switch, edit, stale edit, invalid definition, rollback) landing through the Admin
//! service with the signed-in token in the audit log. On PostgreSQL nodes: the tokens page (the
//! secret shown once), the experiments pages (results with the chart and the rule), each write
//! refused for a token without its scope or a forged CSRF token; the cluster page of a node
//! without `[cluster]` and of a one-member cluster (drain, undrain). Driven with the tests' small
//! HTTP client; two tests drive the pages in Chromium (tests/js/console.mjs and
//! tests/js/console_admin.mjs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use bunting_engine::CompileOptions;
use bunting_node::auth::ApiToken;
use bunting_node::config::{Config, FlagSourceConfig};
use bunting_node::server::Stores;
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::bunting::v1::tokens_client::TokensClient;
use bunting_proto::flagd::evaluation::v1 as flagd;
use bunting_stores::memory::MemoryAdminStore;
use bunting_stores::{AdminStore, DEFAULT_FLAG_SET};
use serde_json::{Value, json};

mod common;

use common::http::{Answer, send};
use common::in_process::TestNode;
use common::postgres::TestDb;
use common::{Channel, TEST_TOKEN, scratch_dir};

fn config() -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        ..Config::default()
    }
}

async fn memory_node() -> (TestNode, AdminClient<Channel>) {
    let store: Arc<dyn AdminStore> = Arc::new(MemoryAdminStore::new(CompileOptions::default()));
    let node = TestNode::start_with(
        config(),
        Stores {
            flags: store,
            experiments: None,
            rollouts: None,
            tier: None,
        },
    )
    .await;
    let mut admin = AdminClient::new(node.channel().await);
    common::admin::create_set_with_flags(
        &mut admin,
        DEFAULT_FLAG_SET,
        &[("banner", common::admin_contract::flag("off"))],
        "ada",
    )
    .await;
    (node, admin)
}

fn http(node: &TestNode) -> SocketAddr {
    node.http.expect("the HTTP edge is on")
}

fn text(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Answer {
    let cookie = cookie.map(|c| format!("bunting_session={c}"));
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
    send(addr, "GET", path, &headers, b"").await
}

async fn post(addr: SocketAddr, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Answer {
    let cookie = cookie.map(|c| format!("bunting_session={c}"));
    post_cookie(addr, path, cookie.as_deref(), form).await
}

/// A form post with `cookie` as the whole `cookie` header.
async fn post_cookie(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> Answer {
    let body = form
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    headers.extend(cookie.map(|c| ("cookie", c)));
    send(addr, "POST", path, &headers, body.as_bytes()).await
}

/// The value a `set-cookie` header of `answer` gives cookie `name`, with its attributes.
fn set_cookie<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.as_str())
        .find(|v| v.starts_with(&format!("{name}=")))
}

fn cookie_value(set_cookie: &str) -> &str {
    let pair = set_cookie.split(';').next().unwrap();
    &pair[pair.find('=').unwrap() + 1..]
}

/// Posts the sign-in form with `token`, as a browser does after loading it: the form's own CSRF
/// token in its cookie and in the hidden field.
async fn post_sign_in(addr: SocketAddr, token: &str) -> Answer {
    let form = get(addr, "/ui/sign-in", None).await;
    let cookie = set_cookie(&form, "bunting_sign_in").expect("a sign-in cookie");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let value = cookie_value(cookie);
    assert!(text(&form).contains(value), "the form carries its token");
    post_cookie(
        addr,
        "/ui/sign-in",
        Some(&format!("bunting_sign_in={value}")),
        &[("sign_in_csrf", value), ("token", token)],
    )
    .await
}

/// A form field as `application/x-www-form-urlencoded` text.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Signs in with `token`: the session cookie's value.
async fn sign_in(addr: SocketAddr, token: &str) -> String {
    let answer = post_sign_in(addr, token).await;
    assert_eq!(answer.status, 303, "{}", text(&answer));
    let cookie = set_cookie(&answer, "bunting_session").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let secret = token.rsplit('_').next().unwrap();
    assert!(
        !cookie.contains(secret),
        "the cookie carries the token: {cookie}"
    );
    cookie_value(cookie).to_owned()
}

/// The CSRF token a page's forms carry.
fn csrf(page: &Answer) -> String {
    let body = text(page);
    let at = body
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {body}"));
    body[at + 19..at + 19 + 64].to_owned()
}

async fn banner(admin: &mut AdminClient<Channel>) -> pb::Flag {
    admin
        .list_flags(pb::ListFlagsRequest {
            flag_set_id: DEFAULT_FLAG_SET.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flags
        .into_iter()
        .find(|f| f.key == "banner")
        .unwrap()
}

fn definition(flag: &pb::Flag) -> Value {
    serde_json::from_str(&flag.definition).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_session_and_writes_a_csrf_token_else_nothing_changes() {
    let (node, mut admin) = memory_node().await;
    let addr = http(&node);
    const FLAG: &str = "/ui/sets/default/flags/banner";

    // Without a session every page sends the browser to sign in.
    for (path, cookie, location) in [
        ("/ui", None, "/ui/sign-in"),
        ("/ui/sets", None, "/ui/sign-in"),
        (FLAG, None, "/ui/sign-in"),
        (
            "/ui/sets/default/audit",
            Some("00".repeat(32)),
            "/ui/sign-in?ended=1",
        ),
        (
            "/ui/sets",
            Some("not-a-session".to_owned()),
            "/ui/sign-in?ended=1",
        ),
    ] {
        let answer = get(addr, path, cookie.as_deref()).await;
        assert_eq!(answer.status, 303, "{path}");
        assert_eq!(answer.header("location"), Some(location), "{path}");
    }

    // Every console answer carries the security headers, the sign-in page included.
    let form = get(addr, "/ui/sign-in", None).await;
    assert_eq!(form.status, 200);
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(form.header(name), Some(value), "{name}");
    }
    let csp = form.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "style-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(text(&form).contains("<label for=\"token\">"));

    // A bad token is refused without echoing it.
    let forged = ApiToken::generate().unwrap().reveal();
    for token in [forged.as_str(), "bnt_<script>", ""] {
        let answer = post_sign_in(addr, token).await;
        assert_eq!(answer.status, 401, "{token}");
        assert!(set_cookie(&answer, "bunting_session").is_none());
        let body = text(&answer);
        assert!(!body.contains("<script>"), "{body}");
        if token.len() > 30 {
            assert!(
                !body.contains(&token[22..]),
                "the page quotes the secret: {body}"
            );
        }
    }

    // A sign-in posted from another site (no sign-in cookie, or another form's) signs nobody in,
    // even with a good token.
    let other_form =
        cookie_value(set_cookie(&get(addr, "/ui/sign-in", None).await, "bunting_sign_in").unwrap())
            .to_owned();
    let theirs = ApiToken::generate().unwrap().reveal()[5..21].repeat(4);
    for (cookie, field) in [
        (None, other_form.as_str()),
        (
            Some(format!("bunting_sign_in={theirs}")),
            other_form.as_str(),
        ),
        (Some(format!("bunting_sign_in={other_form}")), ""),
    ] {
        let answer = post_cookie(
            addr,
            "/ui/sign-in",
            cookie.as_deref(),
            &[("sign_in_csrf", field), ("token", TEST_TOKEN)],
        )
        .await;
        assert_eq!(answer.status, 403, "{cookie:?} {field}");
        assert!(set_cookie(&answer, "bunting_session").is_none());
    }

    let session = sign_in(addr, TEST_TOKEN).await;
    let page = get(addr, FLAG, Some(&session)).await;
    assert_eq!(page.status, 200, "{}", text(&page));
    assert!(!text(&page).contains(TEST_TOKEN), "a page shows the token");
    let token = csrf(&page);
    let before = banner(&mut admin).await;
    let version = before.version.to_string();

    // Forged, missing and other sessions' CSRF tokens, and no session: refused, nothing changed.
    let other = sign_in(addr, TEST_TOKEN).await;
    let others_token = csrf(&get(addr, FLAG, Some(&other)).await);
    let flipped = format!(
        "{}{}",
        if token.starts_with('0') { "1" } else { "0" },
        &token[1..]
    );
    let toggle = format!("{FLAG}/toggle");
    let cases: [(Option<&str>, Option<&str>, u16); 5] = [
        (Some(&session), Some(&flipped), 403),
        (Some(&session), None, 403),
        (Some(&session), Some(&others_token), 403),
        (None, Some(&token), 401),
        (Some(&"ab".repeat(32)), Some(&token), 401),
    ];
    for (cookie, csrf_sent, status) in cases {
        let mut form = vec![
            ("expected_version", version.as_str()),
            ("state", "DISABLED"),
        ];
        form.extend(csrf_sent.map(|t| ("csrf", t)));
        let answer = post(addr, &toggle, cookie, &form).await;
        assert_eq!(answer.status, status, "{cookie:?} {csrf_sent:?}");
        assert!(
            text(&answer).contains("Nothing was changed"),
            "{}",
            text(&answer)
        );
    }
    assert_eq!(
        banner(&mut admin).await,
        before,
        "a refused form changed the flag"
    );

    // The kill switch: one click with the session's token, audited as the signed-in token.
    let form = [
        ("csrf", token.as_str()),
        ("expected_version", &version),
        ("state", "DISABLED"),
    ];
    let answer = post(addr, &toggle, Some(&session), &form).await;
    assert_eq!(answer.status, 303, "{}", text(&answer));
    let after = banner(&mut admin).await;
    assert_eq!(definition(&after)["state"], "DISABLED");
    let audit = admin
        .list_audit(pb::ListAuditRequest {
            flag_set_id: DEFAULT_FLAG_SET.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let token_id = ApiToken::parse(TEST_TOKEN).unwrap().id().to_string();
    assert!(
        audit.entries[0].actor.contains(&token_id),
        "{:?}",
        audit.entries[0].actor
    );
    // The same form again is stale now: refused with the diff, not applied.
    let stale = post(addr, &toggle, Some(&session), &form).await;
    assert_eq!(stale.status, 409, "{}", text(&stale));
    assert!(
        text(&stale).contains("someone else changed"),
        "{}",
        text(&stale)
    );
    assert_eq!(banner(&mut admin).await, after);

    // An edit the engine refuses names the path of the problem, and saves nothing.
    let broken = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                        "defaultVariant": "missing"});
    let answer = post(
        addr,
        &format!("{FLAG}/save"),
        Some(&session),
        &[
            ("csrf", &token),
            ("expected_version", &after.version.to_string()),
            ("definition", &broken.to_string()),
        ],
    )
    .await;
    assert_eq!(answer.status, 422, "{}", text(&answer));
    assert!(
        text(&answer).contains("defaultVariant"),
        "{}",
        text(&answer)
    );
    assert_eq!(banner(&mut admin).await, after);

    // Signing out ends the session: its cookie no longer opens a page.
    let answer = post(addr, "/ui/sign-out", Some(&session), &[("csrf", &token)]).await;
    assert_eq!(answer.status, 303);
    let answer = get(addr, "/ui/sets", Some(&session)).await;
    assert_eq!(answer.header("location"), Some("/ui/sign-in?ended=1"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_is_reviewed_then_saved_and_the_audit_page_rolls_it_back() {
    let (node, mut admin) = memory_node().await;
    let addr = http(&node);
    let session = sign_in(addr, TEST_TOKEN).await;
    let flag = "/ui/sets/default/flags/banner";
    let token = csrf(&get(addr, flag, Some(&session)).await);
    let before = banner(&mut admin).await;
    let wanted = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                        "defaultVariant": "off",
                        "targeting": {"fractional": [["on", 100], ["off", 0]]}});
    let version = before.version.to_string();
    // The review checks with the engine first: a broken edit comes back with its problem's path
    // and no diff to save.
    let broken = json!({"state": "ENABLED", "variants": {"on": true},
                        "defaultVariant": "on", "targeting": {"if": [{"bogus_op": [1]}, "on"]}});
    let refused = post(
        addr,
        &format!("{flag}/preview"),
        Some(&session),
        &[
            ("csrf", &token),
            ("expected_version", &version),
            ("definition", &broken.to_string()),
        ],
    )
    .await;
    assert_eq!(refused.status, 422, "{}", text(&refused));
    assert!(
        text(&refused).contains("flags.banner.targeting"),
        "{}",
        text(&refused)
    );
    assert!(
        !text(&refused).contains("id=\"save\""),
        "{}",
        text(&refused)
    );
    let review = post(
        addr,
        &format!("{flag}/preview"),
        Some(&session),
        &[
            ("csrf", &token),
            ("expected_version", &version),
            ("definition", &wanted.to_string()),
        ],
    )
    .await;
    assert_eq!(review.status, 200, "{}", text(&review));
    assert!(text(&review).contains("fractional"));
    assert_eq!(banner(&mut admin).await, before, "a review saved");
    let saved = post(
        addr,
        &format!("{flag}/save"),
        Some(&session),
        &[
            ("csrf", &token),
            ("expected_version", &version),
            ("definition", &wanted.to_string()),
        ],
    )
    .await;
    assert_eq!(saved.status, 303, "{}", text(&saved));
    assert_eq!(definition(&banner(&mut admin).await), wanted);

    // The audit page offers every earlier version; rolling back restores the flags of version
    // 2 (the set's creation was 1, banner's 2) as one new version.
    let audit = get(addr, "/ui/sets/default/audit", Some(&session)).await;
    assert_eq!(audit.status, 200);
    assert!(
        text(&audit).contains("Roll back to version 2"),
        "{}",
        text(&audit)
    );
    let set_version = admin
        .list_flags(pb::ListFlagsRequest {
            flag_set_id: DEFAULT_FLAG_SET.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flag_set_version;
    // A rollback from a page older than the set is refused.
    let stale = post(
        addr,
        "/ui/sets/default/rollback",
        Some(&session),
        &[
            ("csrf", &token),
            ("to_version", "2"),
            ("current_version", &(set_version - 1).to_string()),
        ],
    )
    .await;
    assert_eq!(stale.status, 409, "{}", text(&stale));
    let rolled = post(
        addr,
        "/ui/sets/default/rollback",
        Some(&session),
        &[
            ("csrf", &token),
            ("to_version", "2"),
            ("current_version", &set_version.to_string()),
        ],
    )
    .await;
    assert_eq!(rolled.status, 303, "{}", text(&rolled));
    assert_eq!(definition(&banner(&mut admin).await), definition(&before));
    node.stop().await;
}

/// The hidden `definition` a review page would save, unescaped.
fn reviewed_definition(page: &Answer) -> Value {
    let body = text(page);
    let start = body
        .find("name=\"definition\" value=\"")
        .map(|i| i + "name=\"definition\" value=\"".len())
        .expect("no definition to save on the review page");
    let end = body[start..].find('"').map(|n| start + n).unwrap();
    let raw = body[start..end]
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_in_percentages_is_reviewed_then_saved_and_a_bad_one_changes_nothing() {
    let (node, mut admin) = memory_node().await;
    let addr = http(&node);
    let session = sign_in(addr, TEST_TOKEN).await;
    let flag = "/ui/sets/default/flags/banner";
    let page = get(addr, flag, Some(&session)).await;
    assert!(
        text(&page).contains("<label for=\"pct_0\">off %</label>"),
        "{}",
        text(&page)
    );
    let token = csrf(&page);
    let before = banner(&mut admin).await;
    let version = before.version.to_string();
    // Variants in the flag's order: off, on.
    let refused: [(&[(&str, &str)], &str); 3] = [
        (&[("pct_0", "70"), ("pct_1", "20")], "add up to 90, not 100"),
        (
            &[("pct_0", "50.5"), ("pct_1", "49.5")],
            "not a whole number",
        ),
        (&[("pct_0", "-1"), ("pct_1", "101")], "not a whole number"),
    ];
    for (fields, says) in refused {
        let mut form = vec![
            ("csrf", token.as_str()),
            ("expected_version", version.as_str()),
        ];
        form.extend_from_slice(fields);
        let answer = post(addr, &format!("{flag}/rollout"), Some(&session), &form).await;
        assert_eq!(answer.status, 422, "{fields:?}: {}", text(&answer));
        assert!(
            text(&answer).contains(says),
            "{fields:?}: {}",
            text(&answer)
        );
        assert_eq!(
            banner(&mut admin).await,
            before,
            "{fields:?} changed the flag"
        );
    }
    // A forged CSRF token is refused like any write.
    let forged = post(
        addr,
        &format!("{flag}/rollout"),
        Some(&session),
        &[
            ("csrf", "0000"),
            ("expected_version", &version),
            ("pct_0", "0"),
            ("pct_1", "100"),
        ],
    )
    .await;
    assert_eq!(forged.status, 403, "{}", text(&forged));

    // The editor's live check: the engine's problems as JSON, for this session's forms only.
    let broken = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "maybe"});
    let checked = post(
        addr,
        &format!("{flag}/check"),
        Some(&session),
        &[("csrf", &token), ("definition", &broken.to_string())],
    )
    .await;
    assert_eq!(checked.status, 200, "{}", text(&checked));
    let answer: Value = serde_json::from_str(&text(&checked)).unwrap();
    assert_eq!(
        answer["problems"][0]["path"], "flags.banner.defaultVariant",
        "{answer}"
    );
    let forged_check = post(
        addr,
        &format!("{flag}/check"),
        Some(&session),
        &[("csrf", "0000"), ("definition", &broken.to_string())],
    )
    .await;
    assert_eq!(forged_check.status, 403, "{}", text(&forged_check));
    assert_eq!(banner(&mut admin).await, before, "a check changed the flag");

    let review = post(
        addr,
        &format!("{flag}/rollout"),
        Some(&session),
        &[
            ("csrf", &token),
            ("expected_version", &version),
            ("pct_0", "25"),
            ("pct_1", "75"),
        ],
    )
    .await;
    assert_eq!(review.status, 200, "{}", text(&review));
    let wanted = reviewed_definition(&review);
    assert_eq!(
        wanted["targeting"],
        json!({"fractional": [["off", 25], ["on", 75]]})
    );
    assert_eq!(banner(&mut admin).await, before, "a review saved");
    let saved = post(
        addr,
        &format!("{flag}/save"),
        Some(&session),
        &[
            ("csrf", &token),
            ("expected_version", &version),
            ("definition", &wanted.to_string()),
        ],
    )
    .await;
    assert_eq!(saved.status, 303, "{}", text(&saved));
    assert_eq!(definition(&banner(&mut admin).await), wanted);
    // The page reads the split back into the form.
    let page = get(addr, flag, Some(&session)).await;
    assert!(
        text(&page).contains("id=\"pct_1\" name=\"pct_1\" type=\"number\" min=\"0\" max=\"100\" step=\"1\" inputmode=\"numeric\" value=\"75\""),
        "{}",
        text(&page)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_scope_is_refused_and_a_separate_admin_listener_turns_the_console_off()
{
    let dir = scratch_dir("console-scope");
    let evaluator = ApiToken::generate().unwrap();
    let tokens = json!([{"id": evaluator.id().as_str(), "name": "evaluator",
                         "hash": evaluator.hash().to_hex(), "scopes": ["evaluate"],
                         "flag_sets": null}]);
    let tokens_file = dir.join("tokens.json");
    std::fs::write(&tokens_file, tokens.to_string()).unwrap();
    let flags = dir.join("flags.json");
    std::fs::write(&flags, json!({"flags": {}}).to_string()).unwrap();
    let mut file_config = config();
    file_config.flags = FlagSourceConfig::File {
        path: flags.clone(),
        set: DEFAULT_FLAG_SET.into(),
        broken_flags: Default::default(),
    };
    file_config.auth.tokens_file = Some(tokens_file);
    let node = TestNode::start(file_config.clone()).await;
    let addr = http(&node);
    let session = sign_in(addr, &evaluator.reveal()).await;
    let answer = get(addr, "/ui/sets", Some(&session)).await;
    assert_eq!(answer.status, 403, "{}", text(&answer));
    assert!(text(&answer).contains("flags:read"), "{}", text(&answer));
    node.stop().await;

    let mut separate = file_config;
    separate.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    let node = TestNode::start(separate).await;
    let answer = get(http(&node), "/ui/sign-in", None).await;
    assert_eq!(answer.status, 404);
    assert!(text(&answer).contains("admin_addr"), "{}", text(&answer));
    node.stop().await;
}

/// A node on PostgreSQL (the token store lives there), its flags in the same database.
async fn postgres_node(db: &TestDb) -> TestNode {
    let mut config = config();
    config.flags = FlagSourceConfig::Postgres {
        url: db.url.clone().into(),
        version_check: std::time::Duration::from_secs(3600),
    };
    TestNode::start(config).await
}

async fn token_list(node: &TestNode) -> Vec<pb::TokenInfo> {
    TokensClient::new(node.channel().await)
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens
}

/// The new token's secret a created page shows, if it shows one.
fn shown_secret(page: &Answer) -> Option<String> {
    let body = text(page);
    let at = body.find("<pre id=\"secret\"")?;
    let start = at + body[at..].find('>')? + 1;
    let end = start + body[start..].find("</pre>")?;
    Some(body[start..end].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_with_their_secret_shown_once_listed_and_revoked() {
    let db = TestDb::create().await;
    let node = postgres_node(&db).await;
    let addr = http(&node);
    let session = sign_in(addr, TEST_TOKEN).await;
    let page = get(addr, "/ui/tokens", Some(&session)).await;
    assert_eq!(page.status, 200, "{}", text(&page));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(text(&page).contains("bootstrap"), "{}", text(&page));
    let token = csrf(&page);
    let fields = [
        ("name", "ci <reader>"),
        ("scope.flags:read", "on"),
        ("flag_sets", "default"),
        ("expires_days", "30"),
    ];

    // Forged or missing CSRF, and a bad expiry: refused, no token made.
    let before = token_list(&node).await.len();
    for (csrf_sent, expiry, status) in [
        (Some("00".repeat(32)), "30", 403),
        (None, "30", 403),
        (Some(token.clone()), "soon", 422),
    ] {
        let mut form = fields.to_vec();
        form[3].1 = expiry;
        form.extend(csrf_sent.as_deref().map(|c| ("csrf", c)));
        let answer = post(addr, "/ui/tokens", Some(&session), &form).await;
        assert_eq!(answer.status, status, "{}", text(&answer));
        assert!(shown_secret(&answer).is_none());
    }
    assert_eq!(token_list(&node).await.len(), before, "nothing created");

    // Created: the secret is shown on the page the form leads to, once.
    let mut form = fields.to_vec();
    form.push(("csrf", &token));
    let answer = post(addr, "/ui/tokens", Some(&session), &form).await;
    assert_eq!(answer.status, 303, "{}", text(&answer));
    let location = answer.header("location").unwrap().to_owned();
    assert!(location.starts_with("/ui/tokens/created?id="), "{location}");
    let created = get(addr, &location, Some(&session)).await;
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let secret = shown_secret(&created).unwrap_or_else(|| panic!("{}", text(&created)));
    let parsed = ApiToken::parse(&secret).unwrap();
    let again = get(addr, &location, Some(&session)).await;
    assert_eq!(again.status, 200);
    assert!(shown_secret(&again).is_none(), "shown twice");
    assert!(!text(&again).contains(&secret));
    let list = get(addr, "/ui/tokens", Some(&session)).await;
    assert!(!text(&list).contains(&secret), "the list shows the secret");
    assert!(text(&list).contains("ci &lt;reader&gt;"), "{}", text(&list));
    let info = token_list(&node)
        .await
        .into_iter()
        .find(|t| t.id == parsed.id().as_str())
        .unwrap();
    assert_eq!(info.scopes, ["flags:read"]);
    assert_eq!(info.flag_sets, ["default"]);
    assert!(info.expires_at.is_some() && info.revoked_at.is_none());

    // The new token signs in but lacks tokens:admin: its pages and posts are refused, and the
    // bootstrap token is not revoked.
    let reader = sign_in(addr, &secret).await;
    let refused = get(addr, "/ui/tokens", Some(&reader)).await;
    assert_eq!(refused.status, 403, "{}", text(&refused));
    assert!(text(&refused).contains("tokens:admin"));
    let readers_csrf = csrf(&get(addr, "/ui/sets", Some(&reader)).await);
    let bootstrap = ApiToken::parse(TEST_TOKEN).unwrap().id().to_string();
    for (path, form) in [
        (
            format!("/ui/tokens/{bootstrap}/revoke"),
            vec![("csrf", readers_csrf.as_str())],
        ),
        (
            "/ui/tokens".to_owned(),
            vec![
                ("csrf", readers_csrf.as_str()),
                ("name", "escalated"),
                ("scope.flags:read", "on"),
                ("all_flag_sets", "on"),
            ],
        ),
    ] {
        let answer = post(addr, &path, Some(&reader), &form).await;
        assert_eq!(answer.status, 403, "{path}: {}", text(&answer));
    }
    let now = token_list(&node).await;
    assert_eq!(now.len(), before + 1, "nothing created");
    assert!(
        now.iter().all(|t| t.revoked_at.is_none()),
        "nothing revoked"
    );

    // Revoke: a confirmation page, then a CSRF-checked post; the token's session ends.
    let confirm_path = format!("/ui/tokens/{}/revoke", parsed.id());
    let confirm = get(addr, &confirm_path, Some(&session)).await;
    assert_eq!(confirm.status, 200, "{}", text(&confirm));
    assert!(text(&confirm).contains("ci &lt;reader&gt;"));
    let forged = post(
        addr,
        &confirm_path,
        Some(&session),
        &[("csrf", &"11".repeat(32))],
    )
    .await;
    assert_eq!(forged.status, 403);
    assert!(
        token_list(&node)
            .await
            .iter()
            .all(|t| t.revoked_at.is_none())
    );
    let revoked = post(
        addr,
        &confirm_path,
        Some(&session),
        &[("csrf", &csrf(&confirm))],
    )
    .await;
    assert_eq!(revoked.status, 303, "{}", text(&revoked));
    let list = get(addr, revoked.header("location").unwrap(), Some(&session)).await;
    assert!(text(&list).contains("Revoked token"), "{}", text(&list));
    let info = token_list(&node)
        .await
        .into_iter()
        .find(|t| t.id == parsed.id().as_str())
        .unwrap();
    assert!(info.revoked_at.is_some());
    let ended = get(addr, "/ui/sets", Some(&reader)).await;
    assert_eq!(ended.header("location"), Some("/ui/sign-in?ended=1"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_says_a_single_node_has_no_cluster_and_refuses_forged_drains() {
    let (node, _admin) = memory_node().await;
    let addr = http(&node);
    let session = sign_in(addr, TEST_TOKEN).await;
    let page = get(addr, "/ui/cluster", Some(&session)).await;
    assert_eq!(page.status, 200, "{}", text(&page));
    assert!(
        text(&page).contains("no [cluster] section"),
        "{}",
        text(&page)
    );
    let token = csrf(&page);
    for (path, csrf_sent, status) in [
        ("/ui/cluster/drain", "00".repeat(32), 403),
        ("/ui/cluster/undrain", String::new(), 403),
        // A good form on a node without a cluster: the service's refusal, as a page.
        ("/ui/cluster/drain", token.clone(), 409),
    ] {
        let answer = post(
            addr,
            path,
            Some(&session),
            &[("csrf", &csrf_sent), ("node_id", "node-1")],
        )
        .await;
        assert_eq!(answer.status, status, "{path}: {}", text(&answer));
    }
    node.stop().await;
}

/// A 50/50 flag `checkout` in set `default` of a PostgreSQL node, for experiments.
async fn checkout(node: &TestNode) {
    let flag = json!({
        "state": "ENABLED",
        "variants": {"control": "blue", "treatment": "green"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["treatment", 50]]}
    });
    common::admin::create_set_with_flags(
        &mut AdminClient::new(node.channel().await),
        DEFAULT_FLAG_SET,
        &[("checkout", flag)],
        "ada",
    )
    .await;
}

/// `users` users evaluate `checkout` on the node (each an exposure of a running experiment), and
/// a share of each arm (treatment's larger) sends a `purchase`.
async fn simulate(node: &TestNode, users: u32) {
    let mut flags = flagd::service_client::ServiceClient::new(node.channel().await);
    let mut experiments = ExperimentsClient::new(node.channel().await);
    for user in 0..users {
        let key = format!("user-{user}");
        let context = prost_types::Struct {
            fields: [(
                "targetingKey".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(key.clone())),
                },
            )]
            .into(),
        };
        let answer = flags
            .resolve_string(flagd::ResolveStringRequest {
                flag_key: "checkout".into(),
                context: Some(context),
            })
            .await
            .unwrap()
            .into_inner();
        let every = if answer.variant == "treatment" { 3 } else { 6 };
        if user % every == 0 {
            experiments
                .track(pb::TrackRequest {
                    targeting_key: key,
                    event: "purchase".into(),
                    value: 20.0,
                    flag_set_id: None,
                })
                .await
                .unwrap();
        }
    }
}

async fn experiment_state(node: &TestNode, id: &str) -> Option<i32> {
    ExperimentsClient::new(node.channel().await)
        .get_experiment(pb::GetExperimentRequest { id: id.into() })
        .await
        .ok()
        .and_then(|r| r.into_inner().experiment)
        .map(|e| e.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_is_created_started_and_its_results_drawn_and_refusals_change_nothing() {
    let db = TestDb::create().await;
    let node = postgres_node(&db).await;
    checkout(&node).await;
    let addr = http(&node);
    let session = sign_in(addr, TEST_TOKEN).await;
    let flag_page = get(addr, "/ui/sets/default/flags/checkout", Some(&session)).await;
    let link = "/ui/experiments/new?set=default&amp;flag=checkout";
    assert!(text(&flag_page).contains(link), "{}", text(&flag_page));
    let new = get(
        addr,
        "/ui/experiments/new?set=default&flag=checkout",
        Some(&session),
    )
    .await;
    assert_eq!(new.status, 200, "{}", text(&new));
    assert!(
        text(&new).contains("<option>treatment</option>"),
        "{}",
        text(&new)
    );
    let token = csrf(&new);
    let fields = [
        ("set", "default"),
        ("flag", "checkout"),
        ("id", "checkout-colour"),
        ("control", "control"),
        (
            "metrics",
            "purchased purchase conversion\nrevenue purchase mean",
        ),
        ("engine", "frequentist"),
        ("sides", "two"),
        ("sequential", "off"),
        ("alpha", "0.05"),
    ];

    // A reader (no experiments:write) and forged CSRF tokens: refused, nothing created.
    let reader = TokensClient::new(node.channel().await)
        .create_token(pb::CreateTokenRequest {
            name: "analyst".into(),
            scopes: vec!["flags:read".into(), "experiments:read".into()],
            all_flag_sets: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token_secret;
    let readers = sign_in(addr, &reader).await;
    let readers_csrf = csrf(&get(addr, "/ui/experiments", Some(&readers)).await);
    for (cookie, csrf_sent, status, why) in [
        (&readers, readers_csrf.as_str(), 403, "experiments:write"),
        (&session, "", 403, "CSRF"),
        (&session, &"ab".repeat(32), 403, "CSRF"),
    ] {
        let mut form = fields.to_vec();
        form.push(("csrf", csrf_sent));
        let answer = post(addr, "/ui/experiments", Some(cookie), &form).await;
        assert_eq!(answer.status, status, "{}", text(&answer));
        assert!(text(&answer).contains(why), "{}", text(&answer));
    }
    assert_eq!(experiment_state(&node, "checkout-colour").await, None);

    let mut form = fields.to_vec();
    form.push(("csrf", &token));
    let created = post(addr, "/ui/experiments", Some(&session), &form).await;
    assert_eq!(created.status, 303, "{}", text(&created));
    assert_eq!(
        created.header("location"),
        Some("/ui/experiments/checkout-colour")
    );
    let draft = get(addr, "/ui/experiments/checkout-colour", Some(&session)).await;
    assert!(
        text(&draft).contains("Start experiment"),
        "{}",
        text(&draft)
    );
    let draft_state = Some(i32::from(pb::ExperimentState::Draft));
    for (cookie, csrf_sent) in [(&readers, readers_csrf.as_str()), (&session, "")] {
        let answer = post(
            addr,
            "/ui/experiments/checkout-colour/start",
            Some(cookie),
            &[("csrf", csrf_sent)],
        )
        .await;
        assert_eq!(answer.status, 403, "{}", text(&answer));
        assert_eq!(
            experiment_state(&node, "checkout-colour").await,
            draft_state
        );
    }
    let started = post(
        addr,
        "/ui/experiments/checkout-colour/start",
        Some(&session),
        &[("csrf", &csrf(&draft))],
    )
    .await;
    assert_eq!(started.status, 303, "{}", text(&started));
    assert_eq!(
        experiment_state(&node, "checkout-colour").await,
        Some(i32::from(pb::ExperimentState::Running))
    );

    // Traffic through the node's gRPC API, then the results page: the rule, a table per
    // metric, the lift's interval drawn.
    let results = common::eventually(
        "results with users",
        std::time::Duration::from_secs(20),
        || async {
            simulate(&node, 300).await;
            let page = get(addr, "/ui/experiments/checkout-colour", Some(&readers)).await;
            let body = text(&page);
            (page.status == 200 && body.contains("<svg")).then_some(body)
        },
    )
    .await;
    assert!(
        results.contains("Decision rule: <strong>frequentist, fixed horizon"),
        "{results}"
    );
    for expected in [
        "purchased (conversion)",
        "revenue (mean)",
        "Stop experiment",
        "<title>Relative lift of purchased against control</title>",
    ] {
        assert!(results.contains(expected), "{expected}: {results}");
    }
    assert!(!results.contains("Sample ratio mismatch"), "{results}");
    node.stop().await;
}

/// Runs the Chromium script `script` (in tests/js) against `base` with [`TEST_TOKEN`] on a
/// blocking thread, while this runtime serves the node: the JSON line it prints, and the
/// screenshot directory. Fails, never skips, without Node, the packages or Chromium.
async fn browser_script(script: &str, base: String) -> (Value, std::path::PathBuf) {
    let js = common::workspace().join("tests/js");
    assert!(
        js.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in {}: run scripts/node-env",
        js.display()
    );
    let chromium = std::env::var("BUNTING_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/node-env (it installs Debian's chromium)"
    );
    let node_js = std::env::var("BUNTING_NODE").unwrap_or_else(|_| "node".into());
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    let command = {
        let (node_js, js, shots, script) = (
            node_js.clone(),
            js.clone(),
            shots.clone(),
            script.to_owned(),
        );
        move || {
            std::process::Command::new(&node_js)
                .arg(js.join(script))
                .arg(&base)
                .arg(TEST_TOKEN)
                .arg(&shots)
                .current_dir(&js)
                .output()
        }
    };
    // The node serves on this runtime while the script runs on a blocking thread.
    let output = tokio::task::spawn_blocking(command)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {node_js}: {e}; run scripts/node-env"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    let got: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}\n{stderr}"));
    (got, shots)
}

/// The console in headless Chromium (tests/js/console.mjs, playwright-core from
/// `scripts/node-env`): keyboard-only sign-in, labels, create, search, edit with review, kill
/// switch and rollback, each change seen through the stock OFREP provider (server SDK). Fails,
/// never skips, without Node, the packages or Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let (node, _admin) = memory_node().await;
    let base = format!("http://{}", http(&node));
    let (got, shots) = browser_script("console.mjs", base).await;
    assert_eq!(got["keyboardSignIn"], true, "{got}");
    assert_eq!(got["unlabeled"], json!([]), "{got}");
    assert_eq!(got["consoleErrors"], json!([]), "{got}");
    assert_eq!(got["search"], json!(["checkout"]), "{got}");
    assert_eq!(got["reviewShowsBoth"], true, "{got}");
    assert_eq!(got["liveProblem"], true, "live validation: {got}");
    assert_eq!(got["liveAccepted"], true, "live validation: {got}");
    assert_eq!(got["values"]["created"], false, "{got}");
    assert_eq!(got["values"]["rolledOut"], true, "{got}");
    assert_ne!(
        got["values"]["killed"], true,
        "a killed flag still served its rollout: {got}"
    );
    assert_eq!(got["states"]["afterToggle"], "DISABLED", "{got}");
    assert_eq!(got["rolledBack"], true, "{got}");
    assert_eq!(got["values"]["afterRollback"], false, "{got}");
    assert_eq!(got["states"]["afterRollback"], "ENABLED", "{got}");
    for shot in ["01-sign-in", "05-review", "08-audit", "09-rolled-back"] {
        assert!(
            shots.join(format!("{shot}.png")).exists(),
            "no screenshot {shot}"
        );
    }
    node.stop().await;
}

/// The tokens and experiments pages in headless Chromium (tests/js/console_admin.mjs) against a
/// node on PostgreSQL: a token's secret shown once and not after a reload, its revocation
/// refused at the edge; an experiment created and started in the browser, traffic sent through
/// the node's gRPC API once it runs, and its results drawn with the decision rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_experiments_work_in_a_real_browser() {
    let db = TestDb::create().await;
    let node = postgres_node(&db).await;
    checkout(&node).await;
    let script = tokio::spawn(browser_script(
        "console_admin.mjs",
        format!("http://{}", http(&node)),
    ));
    let running = Some(i32::from(pb::ExperimentState::Running));
    while !script.is_finished() {
        if experiment_state(&node, "checkout-colour").await == running {
            simulate(&node, 200).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (got, shots) = script.await.unwrap();
    assert_eq!(got["secretShown"], true, "{got}");
    assert_eq!(got["secretAfterReload"], false, "{got}");
    assert_eq!(got["revoked"], true, "{got}");
    assert_eq!(got["revokedStatus"], 401, "{got}");
    assert_eq!(got["experimentState"], "running", "{got}");
    assert_eq!(got["charts"], 1, "a chart for its one metric: {got}");
    assert!(
        got["rule"]
            .as_str()
            .unwrap()
            .contains("frequentist, sequential"),
        "{got}"
    );
    assert_eq!(got["unlabeled"], json!([]), "{got}");
    assert_eq!(got["consoleErrors"], json!([]), "{got}");
    for shot in [
        "10-token-created",
        "11-token-reloaded",
        "16-experiment-results",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).exists(),
            "no screenshot {shot}"
        );
    }
    node.stop().await;
}

/// The cluster page of a one-member cluster, in process: the member, its state and shards, the
/// epoch, and the Drain button; drained and undrained from the page, a forged undrain refused
/// with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_a_one_member_cluster() {
    let dir = scratch_dir("console-cluster");
    let cookie = dir.join("cookie");
    std::fs::write(&cookie, "console-test-cluster-cookie-0123456789").unwrap();
    let (port, _) = common::free_ports();
    let mut config = config();
    config.cluster = Some(
        serde_json::from_value(json!({
            "node_id": "node-1",
            "listen": format!("127.0.0.1:{port}"),
            "cookie_file": cookie,
        }))
        .unwrap(),
    );
    let store: Arc<dyn AdminStore> = Arc::new(MemoryAdminStore::new(CompileOptions::default()));
    let node = TestNode::start_with(
        config,
        Stores {
            flags: store,
            experiments: None,
            rollouts: None,
            tier: None,
        },
    )
    .await;
    let addr = http(&node);
    let session = sign_in(addr, TEST_TOKEN).await;
    let page = common::eventually(
        "the member in the status",
        std::time::Duration::from_secs(10),
        || async {
            let page = get(addr, "/ui/cluster", Some(&session)).await;
            (page.status == 200 && text(&page).contains("node-1")).then_some(page)
        },
    )
    .await;
    let body = text(&page);
    for expected in [
        "node-1 (this node, coordinator)",
        "<td class=\"state\">up</td><td>4</td>",
        "aria-label=\"Drain node-1\"",
        "Epoch ",
    ] {
        assert!(body.contains(expected), "{expected}: {body}");
    }
    // Drain the member, then undrain it; a forged undrain in between changes nothing.
    let token = csrf(&page);
    let state_shown = |wanted: &'static str| {
        let session = session.clone();
        async move {
            let page = get(addr, "/ui/cluster", Some(&session)).await;
            text(&page)
                .contains(&format!("<td class=\"state\">{wanted}</td>"))
                .then_some(page)
        }
    };
    let patience = std::time::Duration::from_secs(10);
    let drained = post(
        addr,
        "/ui/cluster/drain",
        Some(&session),
        &[("csrf", &token), ("node_id", "node-1")],
    )
    .await;
    assert_eq!(drained.status, 303, "{}", text(&drained));
    assert_eq!(
        drained.header("location"),
        Some("/ui/cluster?drained=node-1")
    );
    let page = common::eventually("draining", patience, || state_shown("draining")).await;
    assert!(
        text(&page).contains("aria-label=\"Undrain node-1\""),
        "{}",
        text(&page)
    );
    let forged = post(
        addr,
        "/ui/cluster/undrain",
        Some(&session),
        &[("csrf", &"00".repeat(32)), ("node_id", "node-1")],
    )
    .await;
    assert_eq!(forged.status, 403, "{}", text(&forged));
    assert!(text(&get(addr, "/ui/cluster", Some(&session)).await).contains("draining"));
    let undrained = post(
        addr,
        "/ui/cluster/undrain",
        Some(&session),
        &[("csrf", &token), ("node_id", "node-1")],
    )
    .await;
    assert_eq!(undrained.status, 303, "{}", text(&undrained));
    common::eventually("up again", patience, || state_shown("up")).await;
    node.stop().await;
}
