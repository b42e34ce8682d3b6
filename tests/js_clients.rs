//! A running `bunting serve` driven by stock OpenFeature JavaScript clients on Node (npm
//! `@openfeature/server-sdk` with `@openfeature/ofrep-provider` over the HTTP edge, and
//! `@openfeature/flagd-provider` in RPC mode over flagd.evaluation.v2 and in-process mode over
//! flagd.sync.v1), and the web providers in headless Chromium from a page of another origin
//! (`@openfeature/ofrep-web-provider` over OFREP and SSE, `@openfeature/flagd-web-provider` over
//! Connect: flagd.evaluation.v1 ResolveAll and EventStream). The scripts and the flag file are in
//! tests/js/; each prints one JSON line of what the SDK returned, and these tests assert on it.
//!
//! Node is the machine's (`node` on PATH, 20 or newer, or `$BUNTING_NODE`); the packages are the
//! ones tests/js/package-lock.json pins, installed by `scripts/node-env` (scripts/test runs it).
//! Without them these tests fail: a compatibility suite that skips itself when its client is
//! missing would pass having checked nothing.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Guarded, Node, Serve, TEST_TOKEN, scratch_dir, workspace};
use serde_json::{Value, json};

/// A whole script run, start-up included. A run takes about a second; this only bounds how long a
/// hung client can hold the suite.
const SCRIPT_PATIENCE: Duration = Duration::from_secs(120);

fn js_dir() -> PathBuf {
    workspace().join("tests/js")
}

fn flags() -> PathBuf {
    js_dir().join("flags.json")
}

/// The node binary, after checking that the packages the scripts import are installed.
fn node_js() -> PathBuf {
    let modules = js_dir().join("node_modules");
    for package in [
        "@openfeature/server-sdk",
        "@openfeature/ofrep-provider",
        "@openfeature/flagd-provider",
    ] {
        assert!(
            modules.join(package).join("package.json").exists(),
            "{package} is not installed in {}: run scripts/node-env (it runs `npm ci` in tests/js \
             from the committed package-lock.json; scripts/test runs it)",
            modules.display()
        );
    }
    let node = std::env::var_os("BUNTING_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"));
    let version = Command::new(&node).arg("--version").output();
    match version {
        Ok(out) if out.status.success() => node,
        _ => panic!(
            "cannot run {} --version: the JS client tests need Node 20 or newer on PATH (or \
             BUNTING_NODE); run scripts/node-env to check the machine",
            node.display()
        ),
    }
}

#[derive(Debug)]
struct ScriptRun {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `node tests/js/<script> args...`, output to files in `dir`, killed if it outlives
/// [`SCRIPT_PATIENCE`]; the JSON line it printed, or a failure with its output and the node's log.
fn run_script(dir: &Path, label: &str, script: &str, args: &[String], node: &Node) -> Value {
    let stdout_path = dir.join(format!("{label}.stdout"));
    let stderr_path = dir.join(format!("{label}.stderr"));
    let mut command = Command::new(node_js());
    command
        .arg(js_dir().join(script))
        .args(args)
        .current_dir(js_dir())
        // The flagd provider reads its settings from FLAGD_* variables too (they override nothing
        // the script passes, but could fill what it leaves out).
        .env_remove("FLAGD_HOST")
        .env_remove("FLAGD_PORT")
        .env_remove("FLAGD_SYNC_PORT")
        .env_remove("FLAGD_RESOLVER")
        .env_remove("FLAGD_SOURCE_SELECTOR")
        .env_remove("FLAGD_CACHE")
        .env_remove("FLAGD_TLS")
        .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()));
    let mut process = Guarded::spawn(command, &format!("node tests/js/{script}"));
    let status = process.wait_for(SCRIPT_PATIENCE);
    let run = ScriptRun {
        success: status.is_some_and(|s| s.success()),
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    };
    if status.is_none() {
        panic!(
            "{label}: {script} did not finish within {SCRIPT_PATIENCE:?} and was killed\n{}",
            report(&run, node)
        );
    }
    if !run.success {
        panic!("{label}: {script} failed\n{}", report(&run, node));
    }
    let line = run.stdout.lines().rev().find(|l| !l.trim().is_empty());
    match line.map(serde_json::from_str::<Value>) {
        Some(Ok(value)) => value,
        _ => panic!(
            "{label}: {script} printed no JSON line\n{}",
            report(&run, node)
        ),
    }
}

fn report(run: &ScriptRun, node: &Node) -> String {
    format!(
        "--- script stdout ---\n{}\n--- script stderr ---\n{}\n--- node log ---\n{}",
        run.stdout,
        run.stderr,
        node.log()
    )
}

/// Asserts that each field of `expected` (an object of evaluation name → fields) is what the
/// script recorded for that evaluation; fields not named are not compared.
fn expect_fields(label: &str, got: &Value, expected: &Value) {
    let mut problems = Vec::new();
    for (name, fields) in expected.as_object().unwrap() {
        let Some(evaluation) = got.get(name) else {
            problems.push(format!("{name}: not evaluated"));
            continue;
        };
        for (field, want) in fields.as_object().unwrap() {
            let have = evaluation.get(field).unwrap_or(&Value::Null);
            if have != want {
                problems.push(format!("{name}: {field} is {have}, expected {want}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{label}: {} mismatches\n{}\n--- everything the client saw ---\n{}",
        problems.len(),
        problems.join("\n"),
        serde_json::to_string_pretty(got).unwrap()
    );
}

/// What every client must see for tests/js/flags.json, resolved by the node or in process: every
/// value type, a targeting match, a disabled flag, an unknown flag and a type mismatch. `reason`
/// is the node's; the providers pass it through.
fn resolutions() -> Value {
    let metadata = json!({"flagSetId": "js-clients", "version": "1"});
    let mut owned = metadata.clone();
    owned["owner"] = json!("growth");
    json!({
        "boolean": {"value": false, "variant": "off", "reason": "DEFAULT", "errorCode": null,
            "flagMetadata": owned},
        "boolean targeting match": {"value": true, "variant": "on", "reason": "TARGETING_MATCH",
            "errorCode": null},
        "string": {"value": "hello", "variant": "hi", "reason": "STATIC", "errorCode": null,
            "flagMetadata": metadata},
        "integer": {"value": 25, "variant": "default", "reason": "STATIC", "errorCode": null},
        "float": {"value": 0.85, "variant": "discount", "reason": "STATIC", "errorCode": null},
        "object": {"value": {"background": "#ffffff", "accent": "#1d4ed8", "size": 3},
            "variant": "light", "reason": "STATIC", "errorCode": null},
        "unknown": {"value": "code default", "variant": null, "reason": "ERROR",
            "errorCode": "FLAG_NOT_FOUND", "thrown": "FlagNotFoundError"},
        "type mismatch": {"value": true, "variant": null, "reason": "ERROR",
            "errorCode": "TYPE_MISMATCH", "thrown": "TypeMismatchError"},
    })
}

/// What the OFREP provider must see on a node that answers it: [`resolutions`], the disabled
/// flag, and the split flag for `user-1`.
fn ofrep_resolutions() -> Value {
    let mut expected = resolutions();
    // The node answers a disabled flag as OFREP's codeDefault: 200 with the reason and no value,
    // which tells the client to use its own default. @openfeature/ofrep-provider 0.1.3 (the only
    // release of the server provider on npm, with ofrep-core 0.1.4) predates that shape: it
    // requires `value` in every 200, throws, and the SDK falls back to the code default with
    // GENERAL. The caller gets its default either way; the error code is the provider's age.
    expected["disabled"] = json!({"value": false, "variant": null, "reason": "ERROR",
        "errorCode": "GENERAL", "thrown": "OFREPApiUnexpectedResponseError"});
    expected["split"] = json!({"value": "one-page", "variant": "treatment",
        "reason": "TARGETING_MATCH", "errorCode": null});
    expected
}

#[test]
fn ofrep_provider_resolves_every_type_and_error_over_http() {
    let dir = scratch_dir("js-ofrep-open");
    // A file-backed node: evaluation is open, so the provider needs no header.
    let node = Serve::new(flags()).fractional("string").start(&dir);
    let base = format!("http://127.0.0.1:{}", node.http_port());
    let got = run_script(&dir, "open", "ofrep_checks.mjs", &[base], &node);
    expect_fields("ofrep provider, open node", &got, &ofrep_resolutions());
}

#[test]
fn ofrep_provider_sends_the_bearer_token_a_closed_node_needs() {
    let dir = scratch_dir("js-ofrep-closed");
    let node = Serve::new(flags())
        .fractional("string")
        .config("[auth]\nopen_evaluation = false")
        .start(&dir);
    let base = format!("http://127.0.0.1:{}", node.http_port());

    // `headers: [['Authorization', 'Bearer ' + token]]`: the same answers as on an open node.
    let with_token = run_script(
        &dir,
        "with-token",
        "ofrep_checks.mjs",
        &[base.clone(), TEST_TOKEN.to_owned()],
        &node,
    );
    expect_fields(
        "ofrep provider with the token, closed node",
        &with_token,
        &ofrep_resolutions(),
    );

    // Without a header, and with a token the node never issued: every evaluation is refused with
    // 401, which the provider throws as OFREPApiUnauthorizedError and the SDK turns into the code
    // default with GENERAL.
    let forged =
        "bnt_7e57000000000002_00000000000000000000000000000000000000000000000000000000000000ff";
    for (label, args) in [
        ("no-token", vec![base.clone()]),
        ("forged-token", vec![base.clone(), forged.to_owned()]),
    ] {
        let got = run_script(&dir, label, "ofrep_checks.mjs", &args, &node);
        let defaults = json!({
            "boolean": true, "boolean targeting match": false, "string": "code default",
            "integer": -1, "float": -1, "object": {"code": "default"}, "disabled": false,
            "unknown": "code default", "type mismatch": true, "split": "code default",
        });
        let expected: serde_json::Map<String, Value> = defaults
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, default)| {
                (
                    name.clone(),
                    json!({"value": default, "variant": null, "reason": "ERROR",
                        "errorCode": "GENERAL", "thrown": "OFREPApiUnauthorizedError"}),
                )
            })
            .collect();
        expect_fields(
            &format!("ofrep provider, {label}, closed node"),
            &got,
            &Value::Object(expected),
        );
    }
}

/// The arms tests/js/flagd_checks.mjs recorded for `split-flag`, one per user.
fn arms(label: &str, got: &Value) -> serde_json::Map<String, Value> {
    let split = got["split"].as_object().unwrap().clone();
    assert_eq!(split.len(), 20, "{label}: {got}");
    for (user, arm) in &split {
        assert!(
            arm == "control" || arm == "treatment",
            "{label}: {user} got {arm}, not an arm of split-flag"
        );
    }
    split
}

fn flagd_resolutions() -> Value {
    let mut expected = resolutions();
    // flagd's shape for a disabled flag: no value, reason DISABLED, which the provider turns into
    // the code default.
    expected["disabled"] = json!({"value": false, "variant": null, "reason": "DISABLED",
        "errorCode": null});
    expected
}

#[test]
fn flagd_provider_rpc_and_in_process_resolve_every_type_and_agree_on_fractional_arms() {
    let dir = scratch_dir("js-flagd");
    // `string` is the node's default and how @openfeature/flagd-core buckets in process
    // (README, "Fractional bucketing across clients"); Serve::new picks cbor for the Python and
    // Rust clients, so it is set back here.
    let node = Serve::new(flags()).fractional("string").start(&dir);
    let port = node.grpc_port().to_string();

    let rpc = run_script(
        &dir,
        "rpc",
        "flagd_checks.mjs",
        &["rpc".into(), port.clone()],
        &node,
    );
    expect_fields(
        "flagd provider, rpc",
        &rpc["evaluations"],
        &flagd_resolutions(),
    );

    // In process the provider syncs from `port` (its own default there is 8015, flagd's sync
    // port; the node serves sync on its gRPC port) and evaluates with @openfeature/flagd-core.
    let in_process = run_script(
        &dir,
        "in-process",
        "flagd_checks.mjs",
        &["in-process".into(), port],
        &node,
    );
    // flagd-core words its errors differently; the codes, values and reasons agree.
    let expected = flagd_resolutions();
    expect_fields(
        "flagd provider, in-process",
        &in_process["evaluations"],
        &expected,
    );

    // The node's answers (RPC) and the provider's own bucketing (in process) put every user in the
    // same arm, and the 20 users are not all in one arm (the check would prove nothing).
    let by_node = arms("rpc", &rpc);
    let in_provider = arms("in-process", &in_process);
    let differing: Vec<String> = by_node
        .iter()
        .filter(|(user, arm)| in_provider.get(*user) != Some(*arm))
        .map(|(user, arm)| format!("{user}: node {arm}, in process {}", in_provider[user]))
        .collect();
    assert!(
        differing.is_empty(),
        "fractional arms differ between the node and @openfeature/flagd-core:\n{}",
        differing.join("\n")
    );
    let treatment = by_node.values().filter(|arm| *arm == "treatment").count();
    assert!(
        (1..20).contains(&treatment),
        "all 20 users landed in one arm ({treatment} in treatment): {by_node:?}"
    );
}

/// Checks that the browser the web test drives is there: `$BUNTING_CHROMIUM`, or Debian's chromium
/// (scripts/node-env installs it). The script reads the same variable.
fn check_chromium() {
    let chromium = std::env::var_os("BUNTING_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "no Chromium at {}: run scripts/node-env (it installs Debian's chromium), or point \
         BUNTING_CHROMIUM at a Chromium binary",
        chromium.display()
    );
}

/// Runs tests/js/web_checks.mjs with `page` (`ofrep` or `flagd`) in headless Chromium against a
/// file-backed node that allows the page's origin, and returns what the page saw. With `token`,
/// the node's evaluation is closed and the page's provider is given the token.
fn run_in_chromium(label: &str, page: &str, provider: &str, token: Option<&str>) -> Value {
    check_chromium();
    for package in [provider, "esbuild", "playwright-core"] {
        assert!(
            js_dir()
                .join("node_modules")
                .join(package)
                .join("package.json")
                .exists(),
            "{package} is not installed in tests/js/node_modules: run scripts/node-env"
        );
    }
    let dir = scratch_dir(label);
    // The script edits the file the node serves, so the node gets a copy of its own.
    let flags = dir.join("flags.json");
    std::fs::copy(self::flags(), &flags).unwrap();
    // The page comes from another origin (a static server the script runs on this port), so every
    // request is cross-origin: the node must allow exactly that origin.
    let page_port = common::spare_port(0);
    let mut config = format!("[http]\ncors_allowed_origins = [\"http://127.0.0.1:{page_port}\"]");
    if token.is_some() {
        config.push_str("\n[auth]\nopen_evaluation = false");
    }
    let node = Serve::new(&flags)
        .fractional("string")
        .config(&config)
        .start(&dir);
    let base = format!("http://127.0.0.1:{}", node.http_port());
    let mut args = vec![
        page.to_owned(),
        base,
        page_port.to_string(),
        flags.display().to_string(),
    ];
    args.extend(token.map(str::to_owned));
    let got = run_script(&dir, "web", "web_checks.mjs", &args, &node);
    assert_eq!(
        got["ready"],
        json!(true),
        "{provider} never became ready: {got}\n--- node log ---\n{}",
        node.log()
    );
    got
}

#[test]
fn ofrep_web_provider_in_chromium_resolves_every_type_and_follows_a_live_change() {
    let got = run_in_chromium(
        "js-ofrep-web",
        "ofrep",
        "@openfeature/ofrep-web-provider",
        None,
    );

    // The web provider (ofrep-core 2.3) reads the node's codeDefault answer for a disabled flag
    // as OFREP means it: the code default, reason DISABLED, no error.
    let mut expected = json!({
        "boolean": {"value": false, "variant": "off", "reason": "DEFAULT", "errorCode": null},
        "string": {"value": "hello", "variant": "hi", "reason": "STATIC", "errorCode": null},
        "integer": {"value": 25, "variant": "default", "reason": "STATIC", "errorCode": null},
        "float": {"value": 0.85, "variant": "discount", "reason": "STATIC", "errorCode": null},
        "object": {"value": {"background": "#ffffff", "accent": "#1d4ed8", "size": 3},
            "variant": "light", "reason": "STATIC", "errorCode": null},
        "disabled": {"value": false, "variant": null, "reason": "DISABLED", "errorCode": null},
        "unknown": {"value": "code default", "variant": null, "reason": "ERROR",
            "errorCode": "FLAG_NOT_FOUND"},
        "split": {"value": "one-page", "variant": "treatment", "reason": "TARGETING_MATCH",
            "errorCode": null},
    });
    expect_fields("ofrep web provider, page load", &got["before"], &expected);

    // The edit reached the page through the node's event stream (the provider is set to SSE
    // change detection, no polling) without a reload; nothing else changed.
    assert_eq!(
        got["seen"],
        json!(true),
        "the page never saw the edit: {got}"
    );
    assert_eq!(got["reloaded"], json!(false), "the page reloaded: {got}");
    assert!(
        got["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_array().unwrap().contains(&json!("string-flag"))),
        "no ConfigurationChanged event naming string-flag: {got}"
    );
    expected["string"] = json!({"value": "goodbye", "variant": "bye", "reason": "STATIC",
        "errorCode": null});
    expect_fields(
        "ofrep web provider, after the edit",
        &got["after"],
        &expected,
    );
    assert_eq!(
        got["consoleErrors"],
        json!([]),
        "the page logged errors (CORS refusals show here)"
    );
    assert_eq!(got["network"], json!([]), "failed requests: {got}");
}

#[test]
fn flagd_web_provider_in_chromium_resolves_every_type_and_follows_a_live_change() {
    // @openfeature/flagd-web-provider, unchanged, over Connect: ResolveAll (unary JSON) for the
    // page's context, EventStream (a stream of enveloped JSON over fetch) for changes, all
    // cross-origin with a CORS preflight before each.
    let got = run_in_chromium(
        "js-flagd-web",
        "flagd",
        "@openfeature/flagd-web-provider",
        None,
    );
    expect_flagd_web("flagd web provider", &got);
}

#[test]
fn flagd_web_provider_in_chromium_sends_the_bearer_token_a_closed_node_needs() {
    // The same page against a closed node, the token added by a Connect interceptor (the
    // provider's only way to set a header): the preflights must allow `authorization`, and the
    // event stream (fetch, unlike OFREP's EventSource) carries it too.
    let got = run_in_chromium(
        "js-flagd-web-closed",
        "flagd",
        "@openfeature/flagd-web-provider",
        Some(TEST_TOKEN),
    );
    expect_flagd_web("flagd web provider with the token, closed node", &got);
}

/// What the flagd web page (tests/js/flagd_web_page.mjs) must have seen.
fn expect_flagd_web(label: &str, got: &Value) {
    // The page's context is {targetingKey: user-1, plan: pro}: bool-flag's targeting matches and
    // user-1 is in split-flag's treatment arm (the node buckets; the provider only caches what
    // ResolveAll answered). ResolveAll carries integers in `doubleValue`, which the provider's
    // number evaluation returns as a plain number.
    let mut expected = json!({
        "boolean": {"value": true, "variant": "on", "reason": "TARGETING_MATCH", "errorCode": null},
        "string": {"value": "hello", "variant": "hi", "reason": "STATIC", "errorCode": null},
        "integer": {"value": 25, "variant": "default", "reason": "STATIC", "errorCode": null},
        "float": {"value": 0.85, "variant": "discount", "reason": "STATIC", "errorCode": null},
        "object": {"value": {"background": "#ffffff", "accent": "#1d4ed8", "size": 3},
            "variant": "light", "reason": "STATIC", "errorCode": null},
        "split": {"value": "one-page", "variant": "treatment", "reason": "TARGETING_MATCH",
            "errorCode": null},
        "unknown": {"value": "code default", "variant": null, "reason": "ERROR",
            "errorCode": "FLAG_NOT_FOUND"},
        "type mismatch": {"value": -1, "variant": null, "reason": "ERROR",
            "errorCode": "TYPE_MISMATCH"},
        // ResolveAll leaves a disabled flag out, as flagd's does, so the provider answers it as
        // it answers a flag it never heard of: the caller's code default.
        "disabled": {"value": false, "variant": null, "reason": "ERROR",
            "errorCode": "FLAG_NOT_FOUND"},
    });
    expect_fields(&format!("{label}, page load"), &got["before"], &expected);

    // The edit reached the page through EventStream's configuration_change (the provider then
    // fetches ResolveAll again and emits PROVIDER_CONFIGURATION_CHANGED) without a reload.
    assert_eq!(
        got["seen"],
        json!(true),
        "the page never saw the edit: {got}"
    );
    assert_eq!(got["reloaded"], json!(false), "the page reloaded: {got}");
    assert!(
        !got["changes"].as_array().unwrap().is_empty(),
        "no ConfigurationChanged event: {got}"
    );
    expected["string"] = json!({"value": "goodbye", "variant": "bye", "reason": "STATIC",
        "errorCode": null});
    expect_fields(
        &format!("{label}, after the edit"),
        &got["after"],
        &expected,
    );
    // A new context on the page ({targetingKey: user-1, plan: free}): the provider resolves all
    // flags again for it, and bool-flag's targeting no longer matches.
    expected["boolean"] = json!({"value": false, "variant": "off", "reason": "DEFAULT",
        "errorCode": null});
    expect_fields(
        &format!("{label}, after a context change"),
        &got["recontext"],
        &expected,
    );
    // No console errors (the provider logs a failed or ended stream there, and the browser a CORS
    // refusal) and no failed request or error answer on the wire.
    assert_eq!(
        got["consoleErrors"],
        json!([]),
        "the page logged errors: {got}"
    );
    assert_eq!(got["network"], json!([]), "failed requests: {got}");
}
