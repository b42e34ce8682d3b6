//! The member process the tests start: this test binary run again with
//! `BUNTING_CLUSTER_CHILD_ARGS` set (see `Node::start_with`), hosting one member (one per
//! process is all ractor allows) and driven over stdin/stdout.
//!
//! The arguments (one per line in the variable):
//!
//! ```text
//! --id a [--listen 127.0.0.1:0] [--seed ADDR]... [--grpc HOST:PORT] [--shards N] [--vnodes N] [--peer-protocol N]
//!     [--heartbeat-ms N] [--failure-ms N] [--handshake-ms N] [--max-payload N]
//!     [--cookie-env VAR | --cookie-file PATH] [--tls-cert PEM --tls-key PEM --tls-ca PEM [--tls-name NAME]]
//! ```
//!
//! It prints `ready <cluster addr>`, then answers one line per command with `ok ...` or
//! `err <kind>: <message>`: `status`, `map`, `call <id> <timeout ms> <text>`,
//! `publish <set> <version>`, `notices`, `drain <id> <timeout ms>`, `shutdown`.
//! End of input leaves the cluster cleanly too. The handler answers `<self> got <text> from
//! <caller>`; `sleep:<ms>` makes it wait first, `big:<n>` makes it answer n bytes.
//!
//! Why not a `[[bin]]`: every worktree's build uplifts its binaries to the one shared
//! `target/debug/`, so a test could start another worktree's build of the member; the test
//! binary's own path is unique to this build.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bunting_cluster::{
    CallError, Cluster, ClusterConfig, ClusterTls, Cookie, ForwardHandler, NodeId, Notice,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

struct Echo(NodeId);

#[async_trait::async_trait]
impl ForwardHandler for Echo {
    async fn handle(&self, from: &NodeId, request: Vec<u8>) -> Vec<u8> {
        let text = String::from_utf8_lossy(&request).into_owned();
        if let Some(ms) = text.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(n) = text.strip_prefix("big:").and_then(|n| n.parse().ok()) {
            return vec![b'x'; n];
        }
        format!("{} got {text} from {from}", self.0).into_bytes()
    }
}

fn config(args: &[String]) -> Result<ClusterConfig, String> {
    let mut id = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut grpc = None;
    let mut seeds = Vec::new();
    let mut cookie = None;
    let mut numbers: Vec<(&str, u64)> = Vec::new();
    let mut tls: [Option<&str>; 4] = [None; 4];
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--id" => id = Some(value.parse::<NodeId>().map_err(|e| bad(&e))?),
            "--listen" => listen = value.parse().map_err(|e| bad(&e))?,
            "--grpc" => grpc = Some(value.clone()),
            "--seed" => seeds.push(value.parse().map_err(|e| bad(&e))?),
            "--cookie-env" => cookie = Some(Cookie::from_env(value).map_err(|e| bad(&e))?),
            "--cookie-file" => {
                cookie = Some(Cookie::from_file(Path::new(value)).map_err(|e| bad(&e))?);
            }
            "--tls-cert" => tls[0] = Some(value),
            "--tls-key" => tls[1] = Some(value),
            "--tls-ca" => tls[2] = Some(value),
            "--tls-name" => tls[3] = Some(value),
            "--shards" | "--vnodes" | "--heartbeat-ms" | "--failure-ms" | "--handshake-ms"
            | "--max-payload" | "--peer-protocol" => {
                numbers.push((flag.as_str(), value.parse().map_err(|e| bad(&e))?))
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let id = id.ok_or("--id is required")?;
    let cookie = match cookie {
        Some(cookie) => cookie,
        None => Cookie::from_env("BUNTING_CLUSTER_COOKIE").map_err(|e| e.to_string())?,
    };
    let grpc = grpc.unwrap_or_else(|| format!("{id}.invalid:8013"));
    let mut config = ClusterConfig::new(id, listen, grpc, cookie);
    config.seeds = seeds;
    config.tls = match tls {
        [None, None, None, None] => None,
        [Some(cert), Some(key), Some(ca), name] => Some(
            ClusterTls::from_pem_files(Path::new(cert), Path::new(key), Path::new(ca), name)
                .map_err(|e| e.to_string())?,
        ),
        _ => return Err("--tls-cert, --tls-key and --tls-ca go together".to_string()),
    };
    for (flag, n) in numbers {
        let too_big = || format!("{flag} {n} is too large");
        match flag {
            "--shards" => config.shards = u32::try_from(n).map_err(|_| too_big())?,
            "--vnodes" => config.vnodes_per_node = u16::try_from(n).map_err(|_| too_big())?,
            "--heartbeat-ms" => config.heartbeat_interval = Duration::from_millis(n),
            "--failure-ms" => config.failure_timeout = Duration::from_millis(n),
            "--handshake-ms" => config.handshake_timeout = Duration::from_millis(n),
            "--peer-protocol" => config.peer_protocol = u32::try_from(n).map_err(|_| too_big())?,
            _ => config.max_payload_bytes = usize::try_from(n).map_err(|_| too_big())?,
        }
    }
    Ok(config)
}

fn call_error_kind(error: &CallError) -> &'static str {
    match error {
        CallError::UnknownNode(_) => "UnknownNode",
        CallError::NodeDown(_) => "NodeDown",
        CallError::NotConnected(_) => "NotConnected",
        CallError::Disconnected(_) => "Disconnected",
        CallError::Timeout { .. } => "Timeout",
        CallError::Busy(_) => "Busy",
        CallError::TooLarge { .. } => "TooLarge",
        CallError::Remote { .. } => "Remote",
        CallError::ShutDown => "ShutDown",
    }
}

/// One command's answer line.
async fn answer(cluster: &Cluster, notices: &Mutex<Vec<String>>, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => {
            let status = cluster.status();
            let members: Vec<String> = status
                .members
                .iter()
                .map(|m| {
                    let since = m
                        .since_heartbeat
                        .map_or_else(|| "-".to_string(), |d| d.as_millis().to_string());
                    format!(
                        "{}:{}:{}:{}:{}",
                        m.id, m.state, m.shards_owned, since, m.incarnation
                    )
                })
                .collect();
            format!(
                "ok local={} epoch={} coordinator={} members={}",
                status.local,
                status.epoch,
                status.coordinator,
                members.join(",")
            )
        }
        ["map"] => {
            let map = cluster.shard_map().borrow().clone();
            let owners: Vec<String> = (0..map.shards())
                .map(|s| {
                    map.owner(s)
                        .map_or_else(|| "-".to_string(), |m| m.id.to_string())
                })
                .collect();
            let members: Vec<String> = map
                .members()
                .iter()
                .map(|m| format!("{}={}", m.id, m.grpc_addr))
                .collect();
            format!(
                "ok epoch={} coordinator={} members={} owners={}",
                map.epoch(),
                map.coordinator(),
                members.join(","),
                owners.join(",")
            )
        }
        ["call", node, timeout_ms, text @ ..] => {
            let (Ok(node), Ok(ms)) = (node.parse::<NodeId>(), timeout_ms.parse::<u64>()) else {
                return "err usage: call <id> <timeout ms> <text>".to_string();
            };
            let request = text.join(" ").into_bytes();
            match cluster
                .call(&node, request, Duration::from_millis(ms))
                .await
            {
                Ok(answer) if answer.len() > 200 => format!("ok {} bytes", answer.len()),
                Ok(answer) => format!("ok {}", String::from_utf8_lossy(&answer)),
                Err(e) => format!("err {}: {e}", call_error_kind(&e)),
            }
        }
        ["publish", set, version] => match version.parse() {
            Ok(version) => {
                cluster.publish(Notice::FlagSetChanged {
                    set: (*set).to_string(),
                    version,
                });
                "ok".to_string()
            }
            Err(_) => "err usage: publish <set> <version>".to_string(),
        },
        ["notices"] => {
            let seen = std::mem::take(&mut *notices.lock().unwrap_or_else(PoisonError::into_inner));
            format!("ok {}", seen.join(" ")).trim_end().to_string()
        }
        ["drain", node, timeout_ms] => {
            let (Ok(node), Ok(ms)) = (node.parse::<NodeId>(), timeout_ms.parse::<u64>()) else {
                return "err usage: drain <id> <timeout ms>".to_string();
            };
            match cluster.drain(&node, Duration::from_millis(ms)).await {
                Ok(epoch) => format!("ok {epoch}"),
                Err(e) => format!("err drain: {e}"),
            }
        }
        _ => format!("err unknown command {line:?}"),
    }
}

async fn run(config: ClusterConfig) -> Result<(), String> {
    let handler = Arc::new(Echo(config.node_id.clone()));
    let cluster = Cluster::start(config, handler)
        .await
        .map_err(|e| e.to_string())?;
    let notices = Arc::new(Mutex::new(Vec::new()));
    let mut incoming = cluster.notices();
    let sink = notices.clone();
    tokio::spawn(async move {
        while let Ok((from, Notice::FlagSetChanged { set, version })) = incoming.recv().await {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!("{from}/{set}/{version}"));
        }
    });

    let mut stdout = tokio::io::stdout();
    let say = |text: String| format!("{text}\n").into_bytes();
    // A line of its own: libtest has just printed "test member_process ... " without a newline.
    let ready = say(format!("\nready {}", cluster.cluster_addr()));
    stdout.write_all(&ready).await.map_err(|e| e.to_string())?;
    stdout.flush().await.map_err(|e| e.to_string())?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "shutdown" {
            break;
        }
        let reply = answer(&cluster, &notices, line.trim()).await;
        stdout
            .write_all(&say(reply))
            .await
            .map_err(|e| e.to_string())?;
        stdout.flush().await.map_err(|e| e.to_string())?;
    }
    cluster.shutdown().await;
    let _ = stdout.write_all(b"ok\n").await;
    let _ = stdout.flush().await;
    Ok(())
}

/// The variable that makes this test binary a member process: its arguments, one per line.
pub const CHILD_ARGS: &str = "BUNTING_CLUSTER_CHILD_ARGS";

/// Runs a member and exits the process if this is a member process; returns otherwise.
pub fn run_if_child() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = args.lines().map(str::to_string).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = match config(&args) {
        Ok(config) => runtime.block_on(run(config)),
        Err(e) => Err(e),
    };
    // Exit here, before libtest prints a summary into the protocol on stdout.
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("cluster member: {e}");
            std::process::exit(1)
        }
    }
}
