//! Real Redis servers for the tests: a standalone `redis-server`, or a 3-master Redis Cluster,
//! each on spare loopback ports with its data in a scratch directory, killed when dropped however
//! the test ends. `scripts/redis-up` makes sure the binaries are installed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Guarded;

/// The shared-tier signing key every test node of a deployment shares (`[shared_tier]
/// signing_key_file`, or `BUNTING_SHARED_TIER_KEY` for process nodes): a test value, like the
/// cluster cookie.
pub const TIER_KEY: &str = "test-shared-tier-signing-key-0123456789abcdef";

/// A file holding [`TIER_KEY`], for in-process nodes (they cannot set environment variables).
pub fn tier_key_file() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared-tier-test.key");
    // Written whole by every caller with the same bytes, so concurrent tests cannot see a torn one.
    let staging = path.with_extension(format!("{}", std::process::id()));
    std::fs::write(&staging, TIER_KEY).unwrap();
    std::fs::rename(&staging, &path).unwrap();
    path
}

/// How long a server or a cluster may take to come up; only bounds a broken start.
const PATIENCE: Duration = Duration::from_secs(30);

/// One redis-server process that can be stopped and started again on the same port.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    cluster: bool,
    process: Option<Guarded>,
}

impl RedisServer {
    /// A standalone server on a spare port.
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_on(free_port(false), dir, false)
    }

    fn start_on(port: u16, dir: &Path, cluster: bool) -> RedisServer {
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            dir,
            cluster,
            process: None,
        };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage: no shutdown, nothing saved).
    pub fn stop(&mut self) {
        self.process = None;
        let deadline = Instant::now() + PATIENCE;
        while ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis on {} did not stop",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on its port (a cluster node keeps its nodes.conf, so it rejoins).
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "redis on {} is running", self.port);
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"]);
        if self.cluster {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"]);
        }
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let mut process = Guarded::spawn(command, "redis-server (run scripts/redis-up)");
        let deadline = Instant::now() + PATIENCE;
        while !ping(self.port) {
            if let Some(status) = process.exited() {
                panic!(
                    "redis-server on {} exited ({status}):\n{}",
                    self.port,
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(process);
    }

    /// Runs `redis-cli` against this server (`-c` follows cluster redirects); returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

/// Three masters, no replicas, all 16384 slots assigned.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_on(free_port(true), dir, true))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null());
        // It waits for the nodes to join without a limit of its own.
        let status = Guarded::spawn(create, "redis-cli --cluster create").wait_for(PATIENCE);
        assert!(
            status.is_some_and(|s| s.success()),
            "redis-cli --cluster create {addrs:?}: {status:?}"
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    /// Restarts every node on its port and waits until the cluster is whole again.
    pub fn restart(&mut self) {
        for node in &mut self.nodes {
            node.restart();
        }
        self.wait_ok();
    }

    /// Until every node reports `cluster_state:ok` (slots assigned and agreed).
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self
                .nodes
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the redis cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether something on `port` answers PING like Redis.
fn ping(port: u16) -> bool {
    let Ok(mut socket) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    if socket.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    socket.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A free loopback port; for a cluster node, its bus port (port + 10000) must be free as well.
fn free_port(with_bus: bool) -> u16 {
    super::spare_port(if with_bus { 10_000 } else { 0 })
}
