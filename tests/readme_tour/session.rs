//! One bash session that runs the tour's commands in order, as a reader pasting them would: one
//! shell, so `export`s and background jobs carry from one command to the next. It runs in a
//! scratch copy of what the tour reads (`cluster-config/`, with `scripts/` linked), never in the
//! repository, and on a PostgreSQL database and Redis key prefix of its own; dropping the
//! [`Session`] kills every process the tour started and removes all of it, also when the test
//! fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};

use super::markdown::Step;

/// Where the tour's PostgreSQL database lives (the cluster configs name it).
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// How a step ended.
#[derive(Debug)]
pub struct Ran {
    /// The exit status; `None` if the session stopped before the step finished.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

pub struct Session {
    root: PathBuf,
    /// The tour's working directory: the reader's repository root.
    pub work: PathBuf,
    /// The step outputs, kept out of `work` so the tour's commands never see them.
    steps: PathBuf,
    database: String,
    redis_prefix: String,
    bash: Option<Child>,
    /// The session was stopped at its time limit (rather than bash finishing or stopping).
    pub timed_out: bool,
    /// Left in place for a failing test to be looked at.
    pub keep: bool,
}

impl Session {
    /// A scratch repository root under `tmp`: `cluster-config/` copied from `repo` (the tour
    /// edits its flag file), `scripts/` linked, and the cluster configs pointed at this session's
    /// database and Redis key prefix instead of the tour's `bunting` and default prefix.
    pub fn new(repo: &Path, tmp: &Path) -> Session {
        let unique = format!(
            "{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
        );
        let root = tmp.join(format!("readme-tour-{unique}"));
        let work = root.join("repo");
        let steps = root.join("steps");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&steps).unwrap();
        copy_dir(&repo.join("cluster-config"), &work.join("cluster-config"));
        std::os::unix::fs::symlink(repo.join("scripts"), work.join("scripts")).unwrap();
        let session = Session {
            root,
            work,
            steps,
            database: format!("bunting_tour_{unique}"),
            redis_prefix: format!("bunting-tour-{unique}"),
            bash: None,
            timed_out: false,
            keep: false,
        };
        session.point_cluster_configs_here();
        session
    }

    /// The three-node configs name database `bunting` and Redis's default key prefix: both are
    /// the reader's, and another test's or tour's could be running on the same servers.
    fn point_cluster_configs_here(&self) {
        let dir = self.work.join("cluster-config/three-node");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let url = format!("url = \"{POSTGRES}/bunting\"");
            let tier = "[shared_tier]\n";
            assert!(
                text.contains(&url) && text.contains(tier),
                "{} no longer has {url:?} and {tier:?}: update tests/readme_tour/session.rs",
                path.display()
            );
            let text = text.replace(&url, &format!("url = \"{POSTGRES}/{}\"", self.database));
            let text = text.replace(
                tier,
                &format!("{tier}key_prefix = \"{}\"\n", self.redis_prefix),
            );
            std::fs::write(&path, text).unwrap();
        }
    }

    /// What the session runs for a README command: the same text, with the tour's database name
    /// and Redis key pattern this session's (as in its copies of the cluster configs).
    pub fn rewrite(&self, command: &str) -> String {
        let ours = command
            .replace("DATABASE bunting'", &format!("DATABASE {}'", self.database))
            .replace("'{bunting*'", &format!("'{{{}*'", self.redis_prefix));
        // A command that reaches the reader's data some other way would drop or delete it on
        // the machine running the test.
        let database = format!("DATABASE {}'", self.database);
        let keys = format!("{{{}", self.redis_prefix);
        assert!(
            ours.matches("DATABASE ").count() == ours.matches(&database).count()
                && ours.matches("{bunting").count() == ours.matches(&keys).count(),
            "a README command names a database or Redis keys in a form \
             tests/readme_tour/session.rs does not rewrite: {command}"
        );
        ours
    }

    /// Runs `steps` in one bash whose `PATH` starts with `bin_dir`, stopping at the first plain
    /// command that fails (a transcript's status is not checked: its output is) or at `limit`.
    pub fn run(&mut self, steps: &[Step], bin_dir: &Path, limit: Duration) -> Vec<Ran> {
        let mut script = String::from("# Generated by tests/readme_tour.rs: the README tour.\n");
        for (i, step) in steps.iter().enumerate() {
            let s = self.steps.join(i.to_string());
            let s = s.display();
            let check = if step.transcript {
                ""
            } else {
                "[ $rc = 0 ] || exit 1\n"
            };
            script.push_str(&format!(
                "# README.md:{line}\ndate +%s%N > {s}.start\n{{ {command}\n}} > {s}.out 2> {s}.err < /dev/null\n\
                 rc=$?; echo $rc > {s}.rc; date +%s%N > {s}.end\n{check}",
                line = step.line,
                command = self.rewrite(&step.command),
            ));
        }
        let script_path = self.root.join("tour.sh");
        std::fs::write(&script_path, script).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        let mut command = Command::new("bash");
        command
            .arg(&script_path)
            .current_dir(&self.work)
            .env("PATH", format!("{}:{path}", bin_dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // What bash itself says (a syntax error stops it between steps).
            .stderr(std::fs::File::create(self.root.join("bash.err")).unwrap())
            // Its own process group, so every server the tour starts in the background can be
            // stopped at once, whatever bash has done with its jobs.
            .process_group(0);
        // The reader's own settings must not change what the tour does.
        for (key, _) in std::env::vars() {
            if key.starts_with("BUNTING_") {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().expect("bash");
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() >= limit {
                self.timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.bash = Some(child);
        (0..steps.len()).map(|i| self.ran(i)).collect()
    }

    /// What bash wrote on its own stderr (the steps' output is in their [`Ran`]).
    pub fn bash_stderr(&self) -> String {
        std::fs::read_to_string(self.root.join("bash.err")).unwrap_or_default()
    }

    fn ran(&self, i: usize) -> Ran {
        let read = |ext: &str| {
            std::fs::read_to_string(self.steps.join(format!("{i}.{ext}"))).unwrap_or_default()
        };
        let nanos = |ext: &str| read(ext).trim().parse::<u64>().ok();
        let elapsed = match (nanos("start"), nanos("end")) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => Duration::ZERO,
        };
        Ran {
            status: read("rc").trim().parse().ok(),
            stdout: read("out"),
            stderr: read("err"),
            elapsed,
        }
    }

    /// Stops every process of the session: SIGTERM, then SIGKILL for what is left after a
    /// moment (a node drains its requests first; the tour's are finished).
    fn stop_processes(&mut self) {
        let Some(mut bash) = self.bash.take() else {
            return;
        };
        let group = Pid::from_raw(i32::try_from(bash.id()).unwrap()).unwrap();
        let _ = kill_process_group(group, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while test_kill_process_group(group).is_ok() && Instant::now() < deadline {
            let _ = bash.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill_process_group(group, Signal::KILL);
        let _ = bash.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_processes();
        // The database may not exist (the tour stopped before creating it): IF EXISTS.
        let dropped = Command::new("psql")
            .args([
                &format!("{POSTGRES}/postgres"),
                "-qc",
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database),
            ])
            .output();
        if !matches!(&dropped, Ok(o) if o.status.success()) {
            eprintln!("could not drop database {}: {dropped:?}", self.database);
        }
        // Every key the shared tier writes starts with `{<prefix>` (a Redis Cluster hash tag).
        let deleted = Command::new("sh")
            .arg("-c")
            .arg(
                "redis-cli --scan --pattern \"{$1*\" | while read -r key; do \
                 redis-cli del \"$key\" > /dev/null; done",
            )
            .arg("sh")
            .arg(&self.redis_prefix)
            .status();
        if !matches!(&deleted, Ok(s) if s.success()) {
            eprintln!(
                "could not delete Redis keys {{{}*: {deleted:?}",
                self.redis_prefix
            );
        }
        if self.keep {
            eprintln!("the tour's files are kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
