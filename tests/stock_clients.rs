//! A running `bunting serve` driven by the stock OpenFeature Python SDK and flagd provider
//! (PyPI `openfeature-sdk`, `openfeature-provider-flagd`): RPC mode over flagd.evaluation.v2 and
//! in-process mode over flagd.sync.v1. The scripts are in tests/python/.
//!
//! The interpreter is `$BUNTING_PYTHON`, by default the virtualenv `scripts/python-env` makes in
//! target/pyenv (scripts/test runs it first). Without it these tests fail: a compatibility suite
//! that skips itself when its client is missing would pass having checked nothing.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Guarded, Node, Serve, scratch_dir, workspace};

/// The flagd testbed's provider cases and the flag file they run against, shared with the rest of
/// the project beside the workspace.
const TESTBED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/conformance/flagd-testbed"
);

/// flagd-cases.json holds this many cases; every one must pass.
const TESTBED_CASES: usize = 237;

/// A whole script run, start-up included. The testbed run takes a few seconds; this only bounds
/// how long a hung client can hold the suite.
const SCRIPT_PATIENCE: Duration = Duration::from_secs(180);

fn python() -> PathBuf {
    let python = std::env::var_os("BUNTING_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/pyenv/bin/python"));
    assert!(
        python.exists(),
        "no Python interpreter at {} for the stock-client tests. Run scripts/python-env (it makes \
         target/pyenv with openfeature-sdk and openfeature-provider-flagd; scripts/test runs it), \
         or point BUNTING_PYTHON at an interpreter that has both packages.",
        python.display()
    );
    python
}

#[derive(Debug)]
struct ScriptRun {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs tests/python/`script` with `args`, output to files in `dir` (a pipe nobody reads while
/// waiting could fill and stall the script), killed if it outlives [`SCRIPT_PATIENCE`].
fn run_script(
    python: &Path,
    dir: &Path,
    script: &str,
    args: &[OsString],
    node: &Node,
) -> ScriptRun {
    let stdout_path = dir.join(format!("{script}.stdout"));
    let stderr_path = dir.join(format!("{script}.stderr"));
    let mut command = Command::new(python);
    command
        .arg(workspace().join("tests/python").join(script))
        .args(args)
        .current_dir(workspace())
        // The providers read their settings from FLAGD_* variables too; the scripts pass every
        // one they need, but make sure nothing from the caller's environment steers them.
        .env_remove("FLAGD_HOST")
        .env_remove("FLAGD_PORT")
        .env_remove("FLAGD_RESOLVER")
        .env_remove("FLAGD_SOURCE_SELECTOR")
        .env_remove("FLAGD_CACHE")
        .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()));
    let mut process = Guarded::spawn(command, &format!("tests/python/{script}"));
    let status = process.wait_for(SCRIPT_PATIENCE);
    let run = ScriptRun {
        success: status.is_some_and(|s| s.success()),
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    };
    if status.is_none() {
        panic!(
            "{script} did not finish within {SCRIPT_PATIENCE:?} and was killed\n{}",
            report(&run, node)
        );
    }
    run
}

fn report(run: &ScriptRun, node: &Node) -> String {
    format!(
        "--- script stdout ---\n{}\n--- script stderr ---\n{}\n--- node log ---\n{}",
        run.stdout,
        run.stderr,
        node.log()
    )
}

/// The `<label>: N passed, M failed` line a script ends with.
fn tally(run: &ScriptRun, label: &str, node: &Node) -> (usize, usize) {
    let line = run
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in the output\n{}", report(run, node)));
    // Shown even when the test passes (the harness captures print!, not direct writes): the count
    // is the point of the test.
    let _ = writeln!(std::io::stderr(), "{line}");
    let counts: Vec<&str> = line[label.len()..].split_whitespace().collect();
    match counts[..] {
        [passed, "passed,", failed, "failed"] => match (passed.parse(), failed.parse()) {
            (Ok(passed), Ok(failed)) => (passed, failed),
            _ => panic!("cannot read the counts in {line:?}"),
        },
        _ => panic!("cannot read the counts in {line:?}"),
    }
}

#[test]
fn every_flagd_testbed_case_passes_through_the_python_rpc_provider() {
    let python = python();
    let dir = scratch_dir("stock-clients-testbed");
    // The testbed includes flags that do not compile (an unknown operator, a $ref to a missing
    // evaluator) and expects them to answer PARSE_ERROR while the rest serve, as flagd does.
    //
    // `fractional`: cbor, not the node's default (string). The testbed's fractional cases here
    // (structured bucketing values, string-length boundaries, UTF-8 keys, the implicit targeting
    // key) are its `@fractional-v3` ones, the CBOR hashing of flagd's accepted ADR that the
    // Python provider 0.6 implements: all 237 pass under `cbor`, while `string` (what the flagd
    // server still computes) fails 123 of them, every fractional case whose bucket differs.
    let node = Serve::new(format!("{TESTBED}/flagd-all-flags.json"))
        .fractional("cbor")
        .broken_flags("serve")
        .start(&dir);
    let run = run_script(
        &python,
        &dir,
        "flagd_cases.py",
        &[
            node.grpc_port().to_string().into(),
            format!("{TESTBED}/flagd-cases.json").into(),
        ],
        &node,
    );
    let (passed, failed) = tally(&run, "flagd testbed cases:", &node);
    assert!(
        failed == 0 && passed == TESTBED_CASES && run.success,
        "flagd testbed cases: {passed} passed, {failed} failed (expected {TESTBED_CASES} passed)\n{}",
        report(&run, &node)
    );
}

#[test]
fn python_rpc_provider_resolves_every_type_and_error() {
    let python = python();
    let dir = scratch_dir("stock-clients-python-rpc");
    let node = Serve::new(workspace().join("cluster-config/flags.json")).start(&dir);
    let run = run_script(
        &python,
        &dir,
        "provider_checks.py",
        &["rpc".into(), node.grpc_port().to_string().into()],
        &node,
    );
    let (passed, failed) = tally(&run, "provider checks (rpc):", &node);
    assert!(
        failed == 0 && passed > 0 && run.success,
        "{}",
        report(&run, &node)
    );
}

#[test]
fn python_in_process_provider_syncs_and_sees_a_flag_change() {
    let python = python();
    let dir = scratch_dir("stock-clients-python-in-process");
    // The script edits the file the node serves, so the node gets a copy of its own.
    let flags = dir.join("flags.json");
    std::fs::copy(workspace().join("cluster-config/flags.json"), &flags).unwrap();
    // The Python provider (0.6) buckets in process with CBOR: the node must too, or its
    // `checkout-flow` answers would differ from the provider's (README, "Fractional bucketing
    // across clients").
    let node = Serve::new(&flags).fractional("cbor").start(&dir);
    let run = run_script(
        &python,
        &dir,
        "provider_checks.py",
        &[
            "in-process".into(),
            node.grpc_port().to_string().into(),
            flags.clone().into(),
        ],
        &node,
    );
    let (passed, failed) = tally(&run, "provider checks (in-process):", &node);
    assert!(
        failed == 0 && passed > 0 && run.success,
        "{}",
        report(&run, &node)
    );
}
