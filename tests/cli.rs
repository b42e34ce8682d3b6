//! The `bunting` binary end to end: what a user types, what they see, the exit status.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn bunting(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bunting"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("bunting runs")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const FLAGS: &str = "cluster-config/flags.json";

#[test]
fn eval_prints_the_resolution_as_flagd_json() {
    let out = bunting(&[
        "eval",
        "--flags",
        FLAGS,
        "--flag",
        "welcome-banner",
        "--context",
        r#"{"email": "ada@bunting.example"}"#,
    ]);
    assert!(out.status.success());
    let got = stdout_json(&out);
    assert_eq!(got["value"], json!(true));
    assert_eq!(got["variant"], json!("on"));
    assert_eq!(got["reason"], json!("TARGETING_MATCH"));
    assert_eq!(got["metadata"]["owner"], json!("growth"));
    assert!(got.get("errorCode").is_none(), "absent fields are omitted");
}

#[test]
fn eval_of_a_disabled_flag_has_no_value() {
    let out = bunting(&["eval", "--flags", FLAGS, "--flag", "legacy-reports"]);
    assert!(out.status.success());
    let got = stdout_json(&out);
    assert_eq!(got["reason"], json!("DISABLED"));
    assert!(got.get("value").is_none() && got.get("variant").is_none());
}

#[test]
fn eval_errors_exit_one_and_say_why() {
    let out = bunting(&["eval", "--flags", FLAGS, "--flag", "no-such-flag"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["errorCode"], json!("FLAG_NOT_FOUND"));

    let out = bunting(&[
        "eval", "--flags", FLAGS, "--flag", "theme", "--type", "boolean",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["errorCode"], json!("TYPE_MISMATCH"));
}

#[test]
fn eval_refuses_unusable_input_with_status_two() {
    let out = bunting(&[
        "eval",
        "--flags",
        FLAGS,
        "--flag",
        "theme",
        "--context",
        "[1]",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--context") && err.contains("JSON object"),
        "{err}"
    );

    let out = bunting(&["eval", "--flags", "no/such/file.json", "--flag", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.json"));
}

#[test]
fn fractional_mode_is_selectable() {
    // flagd's v2 conformance example: this key lands on "heads" under string hashing.
    let dir = tempdir();
    let file = dir.join("coin.json");
    std::fs::write(
        &file,
        json!({"flags": {"fractional-flag-shorthand": {
            "state": "ENABLED",
            "variants": {"heads": "heads", "tails": "tails", "draw": "draw"},
            "defaultVariant": "draw",
            "targeting": {"fractional": [["heads"], ["tails", 1]]}
        }}})
        .to_string(),
    )
    .unwrap();
    let run = |mode: &str| {
        stdout_json(&bunting(&[
            "eval",
            "--flags",
            file.to_str().unwrap(),
            "--flag",
            "fractional-flag-shorthand",
            "--context",
            r#"{"targetingKey": "jon@company.com"}"#,
            "--fractional",
            mode,
        ]))["value"]
            .clone()
    };
    assert_eq!(run("string"), json!("heads"));
    assert_eq!(run("cbor"), json!("tails"));
}

#[test]
fn validate_reports_every_problem_with_its_path() {
    let dir = tempdir();
    let file = dir.join("broken.json");
    std::fs::write(
        &file,
        json!({"flags": {
            "welcome-banner": {"state": "ENABLED", "variants": {"on": true, "off": false},
                               "defaultVariant": "on",
                               "targeting": {"if": [true, {"fo": [1]}, "off"]}},
            "rollout": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
                        "targeting": {"fractional": [{"var": "targetingKey"}, ["a", -5], ["b", 5]]}}
        }})
        .to_string(),
    )
    .unwrap();
    let out = bunting(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("error: flags.welcome-banner.targeting.if[1]: unknown operator \"fo\""),
        "{text}"
    );
    assert!(
        text.contains("warning: flags.rollout.targeting.fractional[1][1]: weight -5 is negative"),
        "{text}"
    );
    assert!(text.contains("1 error(s), 1 warning(s)"), "{text}");
}

#[test]
fn validate_passes_a_clean_file_and_fails_malformed_json() {
    let out = bunting(&["validate", FLAGS]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok (6 flags)"), "{text}");
    // The mode it compiled with, and whom it agrees with: the default is the flagd server's.
    assert!(
        text.starts_with("fractional: string (buckets agree with the flagd server"),
        "{text}"
    );
    let out = bunting(&["validate", "--fractional", "cbor", FLAGS]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("fractional: cbor (buckets agree with the Python"),
        "{text}"
    );

    let dir = tempdir();
    let file = dir.join("truncated.json");
    std::fs::write(&file, r#"{"flags": {"a": "#).unwrap();
    let out = bunting(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not valid JSON"));
}

/// A fresh directory under target/ (cleaned by `cargo clean`), unique per test.
fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cli-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn tokens_generate_prints_a_fresh_token_and_a_tokens_file_entry_that_verifies_it() {
    use bunting_node::auth::ApiToken;
    use bunting_node::auth::token::TokenHash;

    let first = bunting(&["tokens", "generate"]);
    let second = bunting(&["tokens", "generate"]);
    assert_eq!(first.status.code(), Some(0));
    let text = String::from_utf8(first.stdout).unwrap();
    let token = ApiToken::parse(text.trim()).unwrap();
    assert_ne!(
        text,
        String::from_utf8(second.stdout).unwrap(),
        "two runs, one secret"
    );

    let out = bunting(&[
        "tokens", "generate", "--name", "ci", "--scope", "evaluate", "--set", "shop",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let (line, entry) = text.trim().split_once('\n').unwrap();
    let token = ApiToken::parse(line).unwrap_or_else(|e| panic!("{e} ({token:?})"));
    let entry: Value = serde_json::from_str(entry).unwrap();
    assert_eq!(entry["name"], "ci");
    assert_eq!(entry["scopes"], json!(["evaluate"]));
    assert_eq!(entry["flag_sets"], json!(["shop"]));
    assert_eq!(entry["id"], token.id().as_str());
    let hash = TokenHash::from_hex(entry["hash"].as_str().unwrap()).unwrap();
    assert!(hash.verifies(&token));
    assert!(
        !entry.to_string().contains(&line[21..]),
        "the entry holds the secret"
    );

    // A bad scope is refused before any secret is printed.
    let out = bunting(&["tokens", "generate", "--name", "ci", "--scope", "root"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("root"));
}

/// Issue 13: `bunting serve` without a config, started in an empty directory. A start it refuses
/// leaves no `bunting-data` behind and counts only errors as what refused it; `--broken-flags
/// serve` serves a file with a broken flag as flagd does; a node that starts writes its log
/// without colour codes when the log goes to a file. (flags file, extra args, starts, logged)
#[test]
fn serve_leaves_no_data_dir_when_refused_and_logs_plain_text_to_a_file() {
    let good = r#"{"flags": {"f": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}}}"#;
    let broken = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-config/broken.json"),
    )
    .unwrap();
    for (flags, extra, starts, logged) in [
        ("{not json", &[][..], false, "flags.json"),
        (
            &broken,
            &[],
            false,
            "has 1 error(s) that stop flags being served",
        ),
        (
            &broken,
            &["--broken-flags", "serve"],
            true,
            "serving flags from a file",
        ),
        (good, &[], true, "serving flags from a file"),
    ] {
        let dir = tempdir();
        std::fs::write(dir.join("flags.json"), flags).unwrap();
        let log = dir.join("node.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_bunting"))
            .args(["serve", "--flags", "flags.json", "--port", "0"])
            .args(["--metrics-port", "0", "--http-port", "0"])
            .args(extra)
            .current_dir(&dir)
            .env_remove("NO_COLOR")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
            let exited = child.try_wait().unwrap().is_some();
            if exited || text.contains(logged) || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let running = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(running, starts, "{flags}: {text}");
        assert!(text.contains(logged), "{flags}: {text}");
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in a log file: {text:?}"
        );
        assert_eq!(dir.join("bunting-data").exists(), starts, "{flags}: {text}");
    }
}

/// The README tour's offline commands, pasted as a reader would: every `$ bunting ...` line of
/// "Resolve flags" and "Check a flag file" prints exactly the lines shown under it.
#[test]
fn the_readme_tour_prints_what_it_shows() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("### Resolve flags").unwrap();
    let end = readme.find("### Use the engine as a library").unwrap();
    let mut checked = 0;
    let mut lines = readme[start..end].lines().peekable();
    while let Some(line) = lines.next() {
        let Some(command) = line.strip_prefix("$ bunting ") else {
            continue;
        };
        let mut shown = Vec::new();
        while let Some(next) = lines.peek() {
            if next.is_empty() || next.starts_with("$ ") || next.starts_with("```") {
                break;
            }
            shown.push(*next);
            lines.next();
        }
        // Through a shell, so the README's quoting is what is tested.
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("\"$BUNTING\" {command}"))
            .env("BUNTING", env!("CARGO_BIN_EXE_bunting"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            printed.lines().collect::<Vec<_>>(),
            shown,
            "bunting {command}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} tour commands found");
}
