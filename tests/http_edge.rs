//! The HTTP edge (`bunting_node::http`) on an in-process, file-backed node: OFREP's answers and error
//! shapes, validators and 304s, event streams, definitions for CDNs, health, CORS, credentials,
//! and hostile requests. Cases are data tables; each asserts the status and the body's shape.

// Tests report failures by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bunting_node::auth::ApiToken;
use bunting_node::config::{Config, FlagSourceConfig};
use bunting_stores::file::BrokenFlags;
use common::http::{exchange, post_json, send};
use common::in_process::TestNode;
use common::{TEST_TOKEN, scratch_dir};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn flags(greeting: &str) -> Value {
    json!({
        "metadata": {"team": "growth"},
        "flags": {
            "bool-flag": {"state": "ENABLED", "defaultVariant": "on",
                "variants": {"on": true, "off": false}},
            "string-flag": {"state": "ENABLED", "defaultVariant": "hi",
                "variants": {"hi": greeting, "bye": "bye"},
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "bye", null]}},
            "int-flag": {"state": "ENABLED", "defaultVariant": "ten",
                "variants": {"ten": 10, "one": 1}},
            "float-flag": {"state": "ENABLED", "defaultVariant": "half",
                "variants": {"half": 0.5, "one": 1.0}},
            "object-flag": {"state": "ENABLED", "defaultVariant": "obj",
                "variants": {"obj": {"colour": "green", "n": 3}, "none": {}}},
            "disabled-flag": {"state": "DISABLED", "defaultVariant": "on",
                "variants": {"on": true, "off": false}},
            "split-flag": {"state": "ENABLED", "defaultVariant": "a",
                "variants": {"a": "a", "b": "b"},
                "targeting": {"fractional": [["a", 50], ["b", 50]]}},
        }
    })
}

fn clock_flags() -> Value {
    json!({"flags": {"late": {"state": "ENABLED", "defaultVariant": "no",
        "variants": {"yes": true, "no": false},
        "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 0]}, "yes", "no"]}}}})
}

fn write(path: &Path, document: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, document.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(file: &Path) -> Config {
    let mut config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        flags: FlagSourceConfig::File {
            path: file.to_owned(),
            set: "default".to_owned(),
            broken_flags: BrokenFlags::Refuse,
        },
        ..Config::default()
    };
    config.http.cors_allowed_origins = vec!["https://app.example.com".to_owned()];
    config.max_context_bytes = 4096;
    config
}

async fn node_with(
    label: &str,
    document: &Value,
    adjust: impl FnOnce(&mut Config),
) -> (TestNode, std::path::PathBuf) {
    let dir = scratch_dir(label);
    let file = dir.join("flags.json");
    write(&file, document);
    let mut config = config(&file);
    adjust(&mut config);
    (TestNode::start(config).await, file)
}

fn http(node: &TestNode) -> SocketAddr {
    node.http.expect("the HTTP edge is on")
}

const ONE: &str = "/ofrep/v1/evaluate/flags/";
const ALL: &str = "/ofrep/v1/evaluate/flags";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flag_answers_and_errors_are_ofreps() {
    let (node, _file) = node_with("http-single", &flags("hello"), |_| {}).await;
    let addr = http(&node);
    let user = json!({"context": {"targetingKey": "user-1"}});
    let pro = json!({"context": {"targetingKey": "user-1", "plan": "pro"}});
    let anonymous = json!({"context": {"plan": "free"}});
    // (flag, body, status, expected fields of the answer)
    let cases: Vec<(&str, Value, u16, Value)> = vec![
        (
            "bool-flag",
            user.clone(),
            200,
            json!({"key": "bool-flag", "value": true, "variant": "on", "reason": "STATIC", "metadata": {"team": "growth"}}),
        ),
        (
            "string-flag",
            user.clone(),
            200,
            json!({"value": "hello", "variant": "hi", "reason": "DEFAULT"}),
        ),
        (
            "string-flag",
            pro.clone(),
            200,
            json!({"value": "bye", "variant": "bye", "reason": "TARGETING_MATCH"}),
        ),
        ("int-flag", user.clone(), 200, json!({"value": 10})),
        ("float-flag", user.clone(), 200, json!({"value": 0.5})),
        (
            "object-flag",
            user.clone(),
            200,
            json!({"value": {"colour": "green", "n": 3}}),
        ),
        (
            "disabled-flag",
            user.clone(),
            200,
            json!({"key": "disabled-flag", "reason": "DISABLED"}),
        ),
        (
            "split-flag",
            user.clone(),
            200,
            json!({"reason": "TARGETING_MATCH"}),
        ),
        // No targeting key where the rule splits by it.
        (
            "split-flag",
            anonymous.clone(),
            400,
            json!({"key": "split-flag", "errorCode": "TARGETING_KEY_MISSING"}),
        ),
        // Flags that need no key evaluate without one.
        ("bool-flag", anonymous.clone(), 200, json!({"value": true})),
        (
            "no-such-flag",
            user.clone(),
            404,
            json!({"key": "no-such-flag", "errorCode": "FLAG_NOT_FOUND"}),
        ),
        (
            "bool-flag",
            json!({"context": 7}),
            400,
            json!({"errorCode": "INVALID_CONTEXT"}),
        ),
        (
            "bool-flag",
            json!({}),
            400,
            json!({"errorCode": "INVALID_CONTEXT"}),
        ),
        (
            "bool-flag",
            json!({"context": {"targetingKey": 12}}),
            400,
            json!({"errorCode": "INVALID_CONTEXT"}),
        ),
        (
            "bool-flag",
            json!([1, 2]),
            400,
            json!({"errorCode": "PARSE_ERROR"}),
        ),
    ];
    for (flag, body, status, expected) in &cases {
        let answer = post_json(addr, &format!("{ONE}{flag}"), &[], body).await;
        assert_eq!(
            answer.status,
            *status,
            "{flag} {body}: {:?}",
            String::from_utf8_lossy(&answer.body)
        );
        let got = answer.json();
        for (field, value) in expected.as_object().unwrap() {
            assert_eq!(
                got.get(field),
                Some(value),
                "{flag} {body}: {field} in {got}"
            );
        }
        if *status == 200 && flag == &"disabled-flag" {
            assert!(
                got.get("value").is_none(),
                "a disabled flag defers to the code default: {got}"
            );
        }
    }
    // The disabled flag's value is absent, not null: OFREP's codeDefaultFlag.
    // Requests the edge refuses before evaluating.
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let raw_cases: Vec<(&str, &str, Headers, Vec<u8>, u16)> = vec![
        (
            "POST",
            "/ofrep/v1/evaluate/flags/bool-flag",
            vec![("content-type", "application/json")],
            b"{not json".to_vec(),
            400,
        ),
        (
            "POST",
            "/ofrep/v1/evaluate/flags/bool-flag",
            vec![("content-type", "text/plain")],
            b"{}".to_vec(),
            415,
        ),
        (
            "POST",
            "/ofrep/v1/evaluate/flags/bool-flag",
            vec![],
            b"{}".to_vec(),
            415,
        ),
        (
            "POST",
            "/ofrep/v1/evaluate/flags/bool-flag",
            vec![("content-type", "application/json")],
            vec![b' '; 64 * 1024],
            413,
        ),
        (
            "GET",
            "/ofrep/v1/evaluate/flags/bool-flag",
            vec![],
            vec![],
            405,
        ),
        ("DELETE", "/ofrep/v1/evaluate/flags", vec![], vec![], 405),
        ("GET", "/ofrep/v2/nothing", vec![], vec![], 404),
        (
            "POST",
            "/ofrep/v1/evaluate/flags/bool-flag",
            vec![
                ("content-type", "application/json"),
                ("flagd-selector", "other-set"),
            ],
            br#"{"context":{}}"#.to_vec(),
            404,
        ),
    ];
    for (method, path, headers, body, status) in &raw_cases {
        let answer = send(addr, method, path, headers, body).await;
        assert_eq!(
            answer.status,
            *status,
            "{method} {path} {headers:?}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        // Every refusal is JSON with details, never an empty or HTML page.
        let details = answer.json();
        assert!(
            details
                .get("errorDetails")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.is_empty()),
            "{details}"
        );
    }
    node.stop().await;
}

fn metric(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn not_modified_counts(node: &TestNode) -> (u64, u64) {
    let answer = send(node.metrics, "GET", "/metrics", &[], &[]).await;
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    (
        metric(&text, "bunting_http_not_modified_total", "evaluated=\"no\""),
        metric(
            &text,
            "bunting_http_not_modified_total",
            "evaluated=\"yes\"",
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_revalidation_costs_no_evaluation_until_the_set_changes() {
    let (node, file) = node_with("http-bulk", &flags("hello"), |_| {}).await;
    let addr = http(&node);
    let body = json!({"context": {"targetingKey": "user-1", "plan": "free"}});
    let first = post_json(addr, ALL, &[], &body).await;
    assert_eq!(first.status, 200);
    let etag = first
        .header("etag")
        .expect("a bulk answer has an ETag")
        .to_owned();
    let answer = first.json();
    let keys: Vec<&str> = answer["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["key"].as_str())
        .collect();
    assert_eq!(keys.len(), 7, "{answer}");
    assert_eq!(answer["metadata"]["team"], "growth");
    assert_eq!(answer["eventStreams"][0]["type"], "sse");
    assert!(first.header("cache-control").unwrap().contains("private"));
    assert!(first.header("vary").unwrap().contains("authorization"));

    let (skipped_before, _) = not_modified_counts(&node).await;
    // The same context, in another key order, revalidates to 304 without an evaluation.
    let reordered = json!({"context": {"plan": "free", "targetingKey": "user-1"}});
    let again = post_json(addr, ALL, &[("if-none-match", &etag)], &reordered).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let (skipped_after, _) = not_modified_counts(&node).await;
    assert_eq!(
        skipped_after,
        skipped_before + 1,
        "the 304 was answered without evaluating"
    );

    // Another context is another answer.
    let other = post_json(
        addr,
        ALL,
        &[("if-none-match", &etag)],
        &json!({"context": {"targetingKey": "user-2", "plan": "pro"}}),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_ne!(other.header("etag"), Some(etag.as_str()));

    // A change to the set changes the validator: the old one gets the new answer.
    write(&file, &flags("changed"));
    let changed = common::eventually(
        "the changed flags behind the old ETag",
        Duration::from_secs(10),
        || async {
            let answer = post_json(addr, ALL, &[("if-none-match", &etag)], &body).await;
            (answer.status == 200).then_some(answer)
        },
    )
    .await;
    let flags = changed.json();
    let greeting = flags["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "string-flag")
        .unwrap();
    assert_eq!(greeting["value"], "changed");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_that_reads_the_clock_is_evaluated_before_any_304() {
    let (node, _file) = node_with("http-clock", &clock_flags(), |_| {}).await;
    let addr = http(&node);
    let body = json!({"context": {"targetingKey": "user-1"}});
    let first = post_json(addr, ALL, &[], &body).await;
    let etag = first.header("etag").unwrap().to_owned();
    // (Other tests in this process count 304s without evaluating; only this one counts these.)
    let (_, evaluated) = not_modified_counts(&node).await;
    let again = post_json(addr, ALL, &[("if-none-match", &etag)], &body).await;
    assert_eq!(again.status, 304);
    assert_eq!(
        not_modified_counts(&node).await.1,
        evaluated + 1,
        "evaluated, then found unchanged"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_cacheable_and_revalidate_with_304() {
    let (node, file) = node_with("http-definitions", &flags("hello"), |_| {}).await;
    let addr = http(&node);
    let first = send(addr, "GET", "/v1/flag-sets/default", &[], &[]).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(
        first.json()["flags"]["string-flag"]["variants"]["hi"],
        "hello"
    );
    assert!(
        first
            .header("cache-control")
            .unwrap()
            .starts_with("public, max-age=")
    );
    let etag = first.header("etag").unwrap().to_owned();
    assert!(
        !etag.starts_with("W/"),
        "a definition's validator is strong: {etag}"
    );
    let again = send(
        addr,
        "GET",
        "/v1/flag-sets/default",
        &[("if-none-match", &etag)],
        &[],
    )
    .await;
    assert_eq!(again.status, 304);
    let head = send(addr, "HEAD", "/v1/flag-sets/default", &[], &[]).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    let missing = send(addr, "GET", "/v1/flag-sets/nope", &[], &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["errorCode"], "FLAG_NOT_FOUND");
    write(&file, &flags("changed"));
    let changed = common::eventually("the new definition", Duration::from_secs(10), || async {
        let answer = send(
            addr,
            "GET",
            "/v1/flag-sets/default",
            &[("if-none-match", &etag)],
            &[],
        )
        .await;
        (answer.status == 200).then_some(answer)
    })
    .await;
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    node.stop().await;
}

/// Reads from an event stream until `needle` has arrived.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the stream ended before {needle:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {}", String::from_utf8_lossy(seen)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_tells_of_each_change_with_the_new_validator() {
    let (node, file) = node_with("http-events", &flags("hello"), |_| {}).await;
    let addr = http(&node);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /ofrep/v1/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "following flag set").await;
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    write(&file, &flags("changed"));
    read_until(&mut stream, &mut seen, "refetchEvaluation").await;
    read_until(&mut stream, &mut seen, "\n\n").await;
    let text = String::from_utf8_lossy(&common::http::dechunk(
        &seen[seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..],
    ))
    .into_owned();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line in {text}"));
    let event: Value = serde_json::from_str(data).unwrap();
    let definition = send(addr, "GET", "/v1/flag-sets/default", &[], &[]).await;
    assert_eq!(event["type"], "refetchEvaluation");
    assert_eq!(
        event["etag"].as_str(),
        definition.header("etag"),
        "the event names the new definition"
    );
    assert!(
        text.contains("id: "),
        "events carry an id for Last-Event-ID: {text}"
    );
    drop(stream);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let (node, _file) = node_with("http-health", &flags("hello"), |_| {}).await;
    let addr = http(&node);
    for path in ["/healthz", "/readyz"] {
        let answer = send(addr, "GET", path, &[], &[]).await;
        assert_eq!(answer.status, 200, "{path}");
    }
    assert_eq!(
        send(addr, "GET", "/readyz", &[], &[]).await.json()["status"],
        "ready"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_from_configured_origins_only() {
    let (node, _file) = node_with("http-cors", &flags("hello"), |_| {}).await;
    let addr = http(&node);
    async fn preflight(addr: SocketAddr, origin: &str) -> common::http::Answer {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ];
        send(addr, "OPTIONS", ALL, &headers, &[]).await
    }
    let allowed = preflight(addr, "https://app.example.com").await;
    assert_eq!(allowed.status, 204);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        allowed
            .header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(
        preflight(addr, "https://evil.example.com").await.status,
        403
    );
    let body = json!({"context": {"targetingKey": "u"}});
    let from_app = post_json(addr, ALL, &[("origin", "https://app.example.com")], &body).await;
    assert_eq!(
        from_app.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        from_app
            .header("access-control-expose-headers")
            .unwrap()
            .contains("etag")
    );
    let from_evil = post_json(addr, ALL, &[("origin", "https://evil.example.com")], &body).await;
    assert_eq!(from_evil.header("access-control-allow-origin"), None);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_evaluation_needs_a_token_with_the_scope_and_the_set() {
    let dir = scratch_dir("http-auth");
    let reader = ApiToken::generate().unwrap();
    let other_set = ApiToken::generate().unwrap();
    let entry = |token: &ApiToken, name: &str, scopes: &[&str], sets: Option<Vec<&str>>| {
        json!({"id": token.id().as_str(), "name": name, "hash": token.hash().to_hex(),
               "scopes": scopes, "flag_sets": sets})
    };
    let tokens = json!([
        entry(&reader, "reader", &["flags:read"], None),
        entry(
            &other_set,
            "other",
            &["evaluate", "sync"],
            Some(vec!["other"])
        ),
    ]);
    let tokens_file = dir.join("tokens.json");
    std::fs::write(&tokens_file, tokens.to_string()).unwrap();
    let (node, _file) = node_with("http-auth-node", &flags("hello"), |config| {
        config.auth.open_evaluation = Some(false);
        config.auth.open_sync = Some(false);
        config.auth.tokens_file = Some(tokens_file.clone());
    })
    .await;
    let addr = http(&node);
    let body = json!({"context": {"targetingKey": "u"}});
    let bearer = |t: &str| format!("Bearer {t}");
    let (admin, reader_secret, other_secret) = (
        bearer(TEST_TOKEN),
        bearer(&reader.reveal()),
        bearer(&other_set.reveal()),
    );
    let forged = bearer(&ApiToken::generate().unwrap().reveal());
    let huge = format!("Bearer {}", "x".repeat(2000));
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (vec![], 401),
        (vec![("authorization", "Basic abc")], 401),
        (vec![("authorization", huge.as_str())], 401),
        (vec![("authorization", forged.as_str())], 401),
        (vec![("authorization", reader_secret.as_str())], 403),
        (vec![("authorization", other_secret.as_str())], 403),
        (vec![("authorization", admin.as_str())], 200),
        (vec![("x-api-key", TEST_TOKEN)], 200),
    ];
    for (headers, status) in &cases {
        for path in [ALL.to_owned(), format!("{ONE}bool-flag")] {
            let answer = post_json(addr, &path, headers, &body).await;
            assert_eq!(answer.status, *status, "{path} {headers:?}");
            let text = String::from_utf8_lossy(&answer.body);
            assert!(
                !text.contains(&reader.reveal()) && !text.contains(TEST_TOKEN),
                "a secret in {text}"
            );
            if *status == 401 {
                assert!(answer.header("www-authenticate").is_some());
            }
        }
        let definition = send(addr, "GET", "/v1/flag-sets/default", headers, &[]).await;
        assert_eq!(definition.status, *status, "definition {headers:?}");
    }
    // Health needs no token: probes carry none.
    assert_eq!(send(addr, "GET", "/readyz", &[], &[]).await.status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_are_bounded() {
    let (node, _file) = node_with("http-hostile", &flags("hello"), |config| {
        config.connections.header_read_timeout_ms = 500;
    })
    .await;
    let addr = http(&node);
    // A head larger than the limit is refused, not buffered.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = exchange(addr, big.as_bytes()).await;
    assert_eq!(answer.status, 431);
    // A client that never finishes its head is cut off after the header-read timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "a slow-loris connection stayed open");
    // The node still serves.
    assert_eq!(send(addr, "GET", "/healthz", &[], &[]).await.status, 200);
    node.stop().await;
}

/// Splits a Connect stream body into its envelopes: (flags, JSON message).
fn envelopes(mut body: &[u8]) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            break;
        }
        out.push((body[0], serde_json::from_slice(&body[5..5 + len]).unwrap()));
        body = &body[5 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagd_over_connect_for_browsers() {
    let (node, file) = node_with("http-connect", &flags("hello"), |_| {}).await;
    let addr = http(&node);
    const RESOLVE_ALL: &str = "/flagd.evaluation.v1.Service/ResolveAll";
    let answer = post_json(
        addr,
        RESOLVE_ALL,
        &[("connect-protocol-version", "1")],
        &json!({"context": {"targetingKey": "u", "plan": "pro"}}),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let all = answer.json();
    let cases = [
        ("bool-flag", "boolValue", json!(true)),
        ("string-flag", "stringValue", json!("bye")),
        ("int-flag", "doubleValue", json!(10.0)),
        ("float-flag", "doubleValue", json!(0.5)),
        (
            "object-flag",
            "objectValue",
            json!({"colour": "green", "n": 3}),
        ),
    ];
    for (flag, arm, value) in cases {
        assert_eq!(all["flags"][flag][arm], value, "{flag} in {all}");
    }
    assert_eq!(all["flags"]["string-flag"]["reason"], "TARGETING_MATCH");
    // flagd's ResolveAll leaves disabled flags out (its ResolveAllValues skips them).
    assert!(
        all["flags"].get("disabled-flag").is_none(),
        "a disabled flag is listed: {all}"
    );
    assert_eq!(all["metadata"]["team"], "growth");
    // An empty request message may omit the context.
    assert_eq!(
        post_json(addr, RESOLVE_ALL, &[], &json!({})).await.status,
        200
    );
    // Binary protobuf is not served: Connect's plain 415.
    let binary = send(
        addr,
        "POST",
        RESOLVE_ALL,
        &[("content-type", "application/proto")],
        b"",
    )
    .await;
    assert_eq!(binary.status, 415);
    let bad = post_json(addr, RESOLVE_ALL, &[], &json!({"context": 3})).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "invalid_argument");

    // EventStream: provider_ready at once, configuration_change when the set changes.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request_envelope = [0u8, 0, 0, 0, 2, b'{', b'}'];
    let head = format!(
        "POST /flagd.evaluation.v1.Service/EventStream HTTP/1.1\r\nhost: x\r\ncontent-type: application/connect+json\r\ncontent-length: {}\r\n\r\n",
        request_envelope.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&request_envelope).await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "provider_ready").await;
    write(&file, &flags("changed"));
    read_until(&mut stream, &mut seen, "configuration_change").await;
    read_until(&mut stream, &mut seen, "string-flag").await;
    let start = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let messages = envelopes(&common::http::dechunk(&seen[start..]));
    assert_eq!(
        messages[0],
        (0, json!({"type": "provider_ready", "data": {}}))
    );
    let change = messages
        .iter()
        .find(|(_, m)| m["type"] == "configuration_change")
        .unwrap();
    assert_eq!(
        change.1["data"]["flags"]["string-flag"]["type"], "update",
        "{messages:?}"
    );
    drop(stream);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_carries_the_same_notices() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (node, file) = node_with("http-ws", &flags("hello"), |_| {}).await;
    let addr = http(&node);
    let (mut socket, answer) = tokio_tungstenite::connect_async(format!("ws://{addr}/ofrep/v1/ws"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 101);
    write(&file, &flags("changed"));
    let text = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("the socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no notice within 10 s");
    let notice: Value = serde_json::from_str(&text).unwrap();
    let definition = send(addr, "GET", "/v1/flag-sets/default", &[], &[]).await;
    assert_eq!(notice["type"], "refetchEvaluation");
    assert_eq!(notice["etag"].as_str(), definition.header("etag"));
    // A closed node ends the socket rather than holding shutdown open.
    node.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the socket outlived the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped() {
    let (node, _file) = node_with("http-stream-cap", &flags("hello"), |config| {
        config.http.max_event_streams = 1;
    })
    .await;
    let addr = http(&node);
    let mut first = TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET /ofrep/v1/events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut first, &mut seen, "following flag set").await;
    let second = send(addr, "GET", "/ofrep/v1/events", &[], &[]).await;
    assert_eq!(second.status, 429);
    assert!(second.header("retry-after").is_some());
    // The slot comes back when the first client goes.
    drop(first);
    common::wait_until(
        "the first stream's slot to come back",
        Duration::from_secs(10),
        || async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /ofrep/v1/events HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
        },
    )
    .await;
    node.stop().await;
}
