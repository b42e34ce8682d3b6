//! README.md's tour, run as a reader runs it (issue 13): every ```sh block from `## Tour` to the
//! end of the file, pasted in order into one bash with the freshly built `bunting` first on
//! `PATH`, and every output the README shows compared with what the run printed. The README is
//! the test's input, so the two cannot drift apart; README.md's "How the tour is tested" states
//! the conventions (what is run, what is compared, which blocks are not run and why).
//!
//! Heavy tier: it needs PostgreSQL and Redis (`scripts/postgres-up`, `scripts/redis-up`, which the
//! tour itself runs) and the tour's fixed loopback ports (8013, 8016, 9464, and 7101–7104,
//! 8101–8104, 8161–8164, 9101–9104 for the cluster), which nothing else in the suite uses: test
//! binaries run one at a time and this binary has one test that starts processes. It runs in a
//! scratch directory (not the repository, where `bunting serve` would leave `bunting-data/`), on
//! a database and Redis key prefix of its own, and leaves nothing behind (see
//! `readme_tour/session.rs`).

// Tests report failures by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod readme_tour {
    pub mod markdown;
    pub mod normalize;
    pub mod session;
}

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use readme_tour::markdown::read_tour;
use readme_tour::normalize::diff;
use readme_tour::session::Session;

/// The longest the whole tour may take before the session is stopped (it takes well under a
/// minute and a half; this only bounds a hung command).
const LIMIT: Duration = Duration::from_secs(240);

/// The tour's ports: the single node's defaults and the cluster configs'.
const PORTS: &[u16] = &[
    8013, 8016, 9464, 7101, 7102, 7103, 7104, 8101, 8102, 8103, 8104, 8161, 8162, 8163, 8164, 9101,
    9102, 9103, 9104,
];

#[test]
fn the_readme_tour_runs_and_prints_what_it_shows() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let tour = read_tour(&readme).unwrap_or_else(|e| panic!("{e}"));
    // Not run, and said so: the README gives each one's reason beside it.
    for skipped in &tour.skipped {
        eprintln!(
            "not run: README.md:{} ```{}: {}",
            skipped.line, skipped.lang, skipped.reason
        );
    }
    // A README that lost its blocks or samples (a renamed heading, a changed fence) must not
    // pass by running nothing.
    let shown = tour.steps.iter().filter(|s| s.expect.is_some()).count();
    assert!(
        tour.steps.len() >= 40 && shown >= 20,
        "only {} tour commands found, {shown} with output shown",
        tour.steps.len()
    );
    let busy: Vec<u16> = PORTS
        .iter()
        .copied()
        .filter(|&p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_err())
        .collect();
    assert!(
        busy.is_empty(),
        "the tour's ports {busy:?} are in use: stop what listens there (a bunting serve?)"
    );

    let mut session = Session::new(repo, Path::new(env!("CARGO_TARGET_TMPDIR")));
    let bin = Path::new(env!("CARGO_BIN_EXE_bunting")).parent().unwrap();
    let started = Instant::now();
    let ran = session.run(&tour.steps, bin, LIMIT);
    let wall = started.elapsed();

    let mut failures = Vec::new();
    for (step, ran) in tour.steps.iter().zip(&ran) {
        eprintln!(
            "{:>6} ms  README.md:{}  {}",
            ran.elapsed.as_millis(),
            step.line,
            step.command.lines().next().unwrap_or_default()
        );
        let context = || {
            format!(
                "README.md:{}: {}\n--- stdout\n{}--- stderr\n{}",
                step.line,
                session.rewrite(&step.command),
                ran.stdout,
                ran.stderr
            )
        };
        match ran.status {
            None if session.timed_out => {
                failures.push(format!("did not finish within {LIMIT:?}\n{}", context()));
                break;
            }
            None => {
                failures.push(format!(
                    "bash stopped before this command finished: {}\n{}",
                    session.bash_stderr(),
                    context()
                ));
                break;
            }
            Some(status) if status != 0 && !step.transcript => {
                failures.push(format!("exited {status}\n{}", context()));
                break;
            }
            Some(_) => {}
        }
        if let Some(expect) = &step.expect {
            let printed: Vec<String> = ran.stdout.lines().map(str::to_owned).collect();
            if let Some(d) = diff(&step.command, expect.line, &expect.lines, &printed) {
                failures.push(format!("printed other than shown\n{d}{}", context()));
            }
        }
    }
    eprintln!("the tour took {wall:?}");
    if !failures.is_empty() {
        session.keep = true;
    }
    assert!(
        failures.is_empty(),
        "{} README tour failure(s):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}
