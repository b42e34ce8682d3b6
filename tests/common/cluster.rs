//! Real `bunting serve` processes joined into one loopback cluster on PostgreSQL: fixed ports per
//! node (a restarted node comes back where it was), the cookie in the environment, and polling
//! helpers that wait until every live node agrees on one shard map.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bunting_proto::bunting::v1::cluster_admin_client::ClusterAdminClient;
use bunting_proto::bunting::v1::topology_client::TopologyClient;
use bunting_proto::bunting::v1::{
    ClusterStatusRequest, GetTopologyRequest, GetTopologyResponse, NodeState,
};

use super::{Guarded, free_ports, read_log, toml_string, workspace};

/// The cookie every test node shares; tests pass it through the environment like operators do.
pub const COOKIE: &str = "chaos-test-cookie";

/// One node's identity and ports, and its process while it runs.
#[derive(Debug)]
pub struct ClusterNode {
    pub id: String,
    pub grpc: SocketAddr,
    pub cluster: SocketAddr,
    pub metrics: SocketAddr,
    cookie: String,
    config: PathBuf,
    log: PathBuf,
    process: Option<Guarded>,
    starts: u32,
}

impl ClusterNode {
    /// Writes the node's config: the `[flags]` section `flags` (see [`postgres_flags`],
    /// [`file_flags`]), seeded with `seeds`.
    pub fn new(dir: &Path, id: &str, flags: &str, seeds: &[SocketAddr]) -> ClusterNode {
        let (grpc_port, metrics_port) = free_ports();
        let (cluster_port, _) = free_ports();
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc_port));
        let cluster = SocketAddr::from((Ipv4Addr::LOCALHOST, cluster_port));
        let config = dir.join(format!("{id}.toml"));
        let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "grpc_addr = \"{grpc}\"\n\
                 metrics_addr = \"127.0.0.1:{metrics_port}\"\nhttp_addr = \"127.0.0.1:0\"\n\
                 [flags]\n\
                 {flags}\n\
                 [cluster]\n\
                 node_id = \"{id}\"\n\
                 listen = \"{cluster}\"\n\
                 seeds = [{}]\n\
                 [auth]\n\
                 # These tests are about the cluster: its clients evaluate, sync and track as\n\
                 # stock providers do, without a token; everything else sends TEST_TOKEN.\n\
                 open_evaluation = true\n\
                 open_sync = true\n\
                 open_track = true\n",
                seeds.join(", "),
            ),
        )
        .unwrap();
        ClusterNode {
            id: id.to_owned(),
            grpc,
            cluster,
            metrics: SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port)),
            cookie: COOKIE.to_owned(),
            log: dir.join(format!("{id}.log")),
            config,
            process: None,
            starts: 0,
        }
    }

    /// Replaces the node's seeds (for nodes seeded with each other, whose ports are known only
    /// once all of them exist).
    pub fn with_seeds(self, seeds: &[SocketAddr]) -> ClusterNode {
        let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text: Vec<String> = text
            .lines()
            .map(|line| match line.starts_with("seeds = ") {
                true => format!("seeds = [{}]", seeds.join(", ")),
                false => line.to_owned(),
            })
            .collect();
        std::fs::write(&self.config, text.join("\n") + "\n").unwrap();
        self
    }

    /// Appends TOML to the node's config (sections such as `[shared_tier]`).
    pub fn extra_config(self, toml: &str) -> ClusterNode {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push('\n');
        text.push_str(toml);
        std::fs::write(&self.config, text).unwrap();
        self
    }

    /// Puts top-level settings (such as `data_dir = "..."`) ahead of every section.
    pub fn top_level_config(self, toml: &str) -> ClusterNode {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, format!("{toml}\n{text}")).unwrap();
        self
    }

    /// Uses another cookie than the rest of the cluster (the wrong-cookie test).
    pub fn with_cookie(mut self, cookie: &str) -> ClusterNode {
        self.cookie = cookie.to_owned();
        self
    }

    /// Starts the process and waits until its gRPC port accepts connections.
    pub fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_bunting"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .current_dir(workspace())
            .env("BUNTING_CLUSTER_COOKIE", &self.cookie)
            .env("BUNTING_SHARED_TIER_KEY", super::redis::TIER_KEY)
            .env("BUNTING_BOOTSTRAP_TOKEN", super::TEST_TOKEN)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut process = Guarded::spawn(command, &format!("bunting serve ({})", self.id));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200)).is_err() {
            if let Some(status) = process.exited() {
                panic!(
                    "{} exited ({status}) while starting:\n{}",
                    self.id,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(process);
    }

    /// Starts the process expecting it to exit within `patience` (a refused start): its exit
    /// status, or `None` when it was still running (it is then killed).
    pub fn run_expecting_exit(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_bunting"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .current_dir(workspace())
            .env("BUNTING_CLUSTER_COOKIE", &self.cookie)
            .env("BUNTING_BOOTSTRAP_TOKEN", super::TEST_TOKEN)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut process = Guarded::spawn(command, &format!("bunting serve ({})", self.id));
        process.wait_for(patience)
    }

    /// `kill -9`.
    pub fn kill_hard(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_hard();
        }
    }

    /// SIGTERM, then waits (bounded) for a graceful exit.
    pub fn stop(&mut self) -> bool {
        match self.process.take() {
            Some(mut p) => {
                p.terminate();
                p.wait_for(Duration::from_secs(15))
                    .is_some_and(|s| s.success())
            }
            None => true,
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// The node's Prometheus text.
    pub fn metrics_text(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }
}

/// A `[flags]` section reading PostgreSQL at `url`, checking versions every second.
pub fn postgres_flags(url: &str) -> String {
    format!(
        "source = \"postgres\"\nurl = {}\nversion_check = 1",
        toml_string(Path::new(url))
    )
}

/// A `[flags]` section serving the flag file at `path`.
pub fn file_flags(path: &Path) -> String {
    format!("source = \"file\"\npath = {}", toml_string(path))
}

/// One node's view: its topology (epoch, owners) and which members it considers up.
pub async fn topology(node: &ClusterNode) -> Option<GetTopologyResponse> {
    let mut client = TopologyClient::connect(node.url()).await.ok()?;
    client
        .get_topology(GetTopologyRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// The node ids owning at least one shard in a topology.
pub fn owners(topology: &GetTopologyResponse) -> BTreeSet<String> {
    topology
        .shard_owner
        .iter()
        .filter_map(|&i| topology.nodes.get(i as usize).map(|n| n.id.clone()))
        .collect()
}

/// Waits until every node in `live` answers the same epoch, with every shard owned by exactly one
/// node of `owners_wanted` and each of them owning some, and every node hears every owner's
/// heartbeat directly (so forwards between any two of them have a connection). Returns the
/// agreed epoch, or `None` after `patience`.
pub async fn agreement(
    live: &[&ClusterNode],
    owners_wanted: &[&str],
    patience: Duration,
) -> Option<u64> {
    let wanted: BTreeSet<String> = owners_wanted.iter().map(|s| (*s).to_owned()).collect();
    super::poll(patience, || async {
        let mut epochs = BTreeSet::new();
        for node in live {
            match topology(node).await {
                Some(t)
                    if owners(&t) == wanted
                        && t.shard_owner.len() == t.shard_count as usize
                        && hears(node, &wanted).await =>
                {
                    epochs.insert(t.epoch);
                }
                _ => return None,
            }
        }
        (epochs.len() == 1)
            .then(|| epochs.into_iter().next())
            .flatten()
    })
    .await
}

/// True when `node` sees every member of `members` up.
async fn hears(node: &ClusterNode, members: &BTreeSet<String>) -> bool {
    let Ok(mut client) = super::connect(node.url())
        .await
        .map(ClusterAdminClient::new)
    else {
        return false;
    };
    let Ok(status) = client.status(ClusterStatusRequest {}).await else {
        return false;
    };
    let up: BTreeSet<String> = status
        .into_inner()
        .members
        .into_iter()
        .filter(|m| m.state == NodeState::Up as i32)
        .map(|m| m.id)
        .collect();
    members.is_subset(&up)
}

/// `bunting.v1.ClusterAdmin/Status` from one node, for failure messages and the printed summary.
pub async fn status_text(node: &ClusterNode) -> String {
    let Ok(mut client) = super::connect(node.url())
        .await
        .map(ClusterAdminClient::new)
    else {
        return format!("{}: unreachable", node.id);
    };
    match client.status(ClusterStatusRequest {}).await {
        Ok(s) => format!("{}: {:?}", node.id, s.into_inner()),
        Err(e) => format!("{}: {e}", node.id),
    }
}
