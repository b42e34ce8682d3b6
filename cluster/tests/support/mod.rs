//! Cluster members as child processes (this test binary run again: `child`), one per process
//! as ractor requires, driven over stdin/stdout, and bounded polling.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub mod child;

pub const COOKIE: &str = "test-cookie-not-secret";
/// Generous bound for anything that should happen "soon"; the machine is shared and loaded.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    child: Child,
    stdin: ChildStdin,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub state: String,
    pub shards: u32,
    pub incarnation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub epoch: u64,
    pub coordinator: String,
    pub members: BTreeMap<String, Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    pub epoch: u64,
    pub coordinator: String,
    pub members: Vec<String>,
    /// Owner id per shard ("-" for none).
    pub owners: Vec<String>,
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl Node {
    pub async fn start(id: &str, seeds: &[SocketAddr]) -> Node {
        Node::start_with(id, seeds, COOKIE, &[]).await
    }

    pub async fn start_with(id: &str, seeds: &[SocketAddr], cookie: &str, extra: &[&str]) -> Node {
        let mut args: Vec<String> = ["--id", id, "--listen", "127.0.0.1:0"]
            .into_iter()
            .chain(["--grpc", &format!("{id}.grpc:8013")])
            .chain(extra.iter().copied())
            .map(str::to_string)
            .collect();
        for seed in seeds {
            args.extend(["--seed".to_string(), seed.to_string()]);
        }
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "member_process",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(child::CHILD_ARGS, args.join("\n"))
            .env("BUNTING_CLUSTER_COOKIE", cookie)
            .env("RUST_LOG", "info,ractor_cluster=warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn a member process");
        let stdin = child.stdin.take().unwrap();
        let (tx, mut stdout) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        // libtest may print a line or two ("running 1 test") before the member's first.
        let ready = loop {
            let line = tokio::time::timeout(PATIENCE, stdout.recv())
                .await
                .unwrap_or_else(|_| panic!("{id} did not start"));
            match line {
                Some(line) if line.starts_with("ready ") => break line,
                Some(_) => continue,
                None => {
                    let status = child.wait().await;
                    // Let the stderr reader catch up with what the process wrote before it died.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    panic!(
                        "{id} exited ({status:?}) before it was ready: {}",
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        let addr = ready
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("{id}: unexpected first line {ready:?}"))
            .parse()
            .unwrap();
        Node {
            id: id.to_string(),
            addr,
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Sends one command and returns its answer line.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{}: cannot send {line:?}: {e}", self.id));
        tokio::time::timeout(PATIENCE, self.stdout.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no answer to {line:?}", self.id))
            .unwrap_or_else(|| panic!("{} exited: {}", self.id, self.stderr()))
    }

    pub async fn status(&mut self) -> Status {
        let line = self.cmd("status").await;
        let members = list(field(&line, "members"))
            .into_iter()
            .map(|m| {
                let parts: Vec<&str> = m.split(':').collect();
                let [id, state, shards, _since, incarnation] = parts.as_slice() else {
                    panic!("bad member {m:?}");
                };
                let member = Member {
                    state: state.to_string(),
                    shards: shards.parse().unwrap(),
                    incarnation: incarnation.parse().unwrap(),
                };
                (id.to_string(), member)
            })
            .collect();
        Status {
            epoch: field(&line, "epoch").parse().unwrap(),
            coordinator: field(&line, "coordinator").to_string(),
            members,
        }
    }

    pub async fn map(&mut self) -> Map {
        let line = self.cmd("map").await;
        Map {
            epoch: field(&line, "epoch").parse().unwrap(),
            coordinator: field(&line, "coordinator").to_string(),
            members: list(field(&line, "members"))
                .iter()
                .map(|m| m.split('=').next().unwrap().to_string())
                .collect(),
            owners: list(field(&line, "owners")),
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL: no leave, no goodbye; the sockets close with the process.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Leaves cleanly and waits for the process to exit.
    pub async fn shutdown(mut self) {
        let _ = self.stdin.write_all(b"shutdown\n").await;
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.id))
            .unwrap();
        assert!(
            status.success(),
            "{} exited with {status}: {}",
            self.id,
            self.stderr()
        );
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the process: a hung node whose sockets stay open.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `within` with the last
/// observation.
pub async fn eventually<T, D: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, D>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {last:#?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The map of `nodes` once they are fully meshed (each hears every other: heartbeats travel
/// only over direct sessions) and all hold the same map with exactly `members`, every shard
/// owned by one of them. A map can agree before the mesh is complete, because maps are relayed.
pub async fn agreed_map(nodes: &mut [&mut Node], members: &[&str]) -> Map {
    let expected: Vec<String> = members.iter().map(|s| s.to_string()).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    eventually(
        &format!("{ids:?} meshed and agreed on {members:?}"),
        PATIENCE,
        async || {
            let mut maps = Vec::new();
            let mut statuses = Vec::new();
            for node in nodes.iter_mut() {
                maps.push(node.map().await);
                statuses.push(node.status().await);
            }
            let meshed = statuses.iter().all(|status| {
                ids.iter()
                    .all(|id| status.members.get(id).is_some_and(|m| m.state != "Down"))
            });
            let first = maps[0].clone();
            let agreed = maps.iter().all(|m| *m == first)
                && first.members == expected
                && first.owners.iter().all(|o| expected.contains(o));
            if meshed && agreed {
                Ok(first)
            } else {
                Err((maps, statuses))
            }
        },
    )
    .await
}

/// Shards per owner.
pub fn counts(map: &Map) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for owner in &map.owners {
        *counts.entry(owner.clone()).or_insert(0) += 1;
    }
    counts
}
