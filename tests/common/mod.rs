//! The real `bunting serve`, started for tests that drive it with other programs (the stock
//! OpenFeature clients): a config file written to a scratch directory, free loopback ports, a wait
//! until the gRPC port accepts connections, and a guard that kills the process however the test
//! ends.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod admin;
pub mod admin_contract;
pub mod cluster;
pub mod http;
pub mod in_process;
pub mod postgres;
pub mod redis;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The bootstrap (admin, every scope, every set) token every test node is started with, through
/// `BUNTING_BOOTSTRAP_TOKEN` or `Config::auth.bootstrap_token`, and that the helpers' clients send.
/// A test constant, never a deployment's: real bootstrap secrets come from `bunting tokens
/// generate`.
pub const TEST_TOKEN: &str =
    "bnt_7e57000000000001_0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A channel whose every call carries [`TEST_TOKEN`]: what the tests' clients use.
pub type Channel = bunting_node::auth::client::AuthChannel;

/// [`TEST_TOKEN`] as parsed, for configs built in code.
pub fn test_token() -> bunting_node::auth::ApiToken {
    bunting_node::auth::ApiToken::parse(TEST_TOKEN).unwrap()
}

/// `channel` sending [`TEST_TOKEN`].
pub fn authorized(channel: tonic::transport::Channel) -> Channel {
    bunting_node::auth::client::Bearer::new(Some(TEST_TOKEN))
        .unwrap()
        .wrap(channel)
}

/// A connected channel to `url` (`http://host:port`) sending [`TEST_TOKEN`].
pub async fn connect(url: impl Into<String>) -> Result<Channel, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(url.into())?
        .connect()
        .await?;
    Ok(authorized(channel))
}

/// A client of `make` on a connected channel to `url` sending [`TEST_TOKEN`]: what replaces
/// `XClient::connect(url)` for the services that need a token.
pub async fn connect_with<C>(
    make: impl FnOnce(Channel) -> C,
    url: impl Into<String>,
) -> Result<C, tonic::transport::Error> {
    connect(url).await.map(make)
}

/// How long a node may take to start accepting connections. Start-up takes well under a second;
/// this only bounds how long a broken start can hang a test.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// How often a node is restarted on fresh ports when another process took one of the ports
/// between choosing it and the node binding it.
const START_ATTEMPTS: usize = 3;

pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty directory under target/tmp, unique to this process and `label`.
pub fn scratch_dir(label: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process that is killed and reaped when dropped, so a failing assertion or a panic
/// never leaves it running.
#[derive(Debug)]
pub struct Guarded {
    child: Child,
}

impl Guarded {
    pub fn spawn(mut command: Command, what: &str) -> Guarded {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Guarded { child }
    }

    /// `Some(status)` if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to end; kills it and returns `None` if it runs longer than `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The operating system's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as `kill -9`: the process gets no chance to clean up.
    pub fn kill_hard(&mut self) {
        self.kill();
    }

    /// SIGTERM, as an orchestrator stopping a node: it shuts down gracefully.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    fn kill(&mut self) {
        // Fails only if the process has already ended, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// How to run a node: a flag file and the few settings the tests vary.
#[derive(Debug, Clone)]
pub struct Serve {
    flags: PathBuf,
    fractional: &'static str,
    broken_flags: &'static str,
    /// TOML appended to the config file (whole tables, e.g. `[connections]`).
    extra: String,
    /// The open-files limit (soft and hard) the node starts under, when set.
    open_files: Option<u64>,
    /// Top-level settings (TOML lines) added to the config file before its tables.
    settings: String,
}

impl Serve {
    /// `fractional = "cbor"` and `broken_flags = "refuse"` on `flags`. cbor is not the node's
    /// default (string, flagd server's), but what the stock clients these tests drive in process
    /// hash (Python provider 0.6, Rust 0.3), and the buckets the scripts expect were computed so.
    pub fn new(flags: impl Into<PathBuf>) -> Serve {
        Serve {
            flags: flags.into(),
            fractional: "cbor",
            broken_flags: "refuse",
            extra: String::new(),
            settings: String::new(),
            open_files: None,
        }
    }

    /// Adds top-level settings (TOML lines, e.g. `max_streams = 10`) to the node's config.
    pub fn settings(mut self, toml: &str) -> Serve {
        self.settings.push_str(toml);
        self.settings.push('\n');
        self
    }

    /// Appends `toml` (whole tables) to the node's config file.
    pub fn config(mut self, toml: &str) -> Serve {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Starts the node under an open-files limit of `limit` (soft and hard, as `ulimit -n`).
    pub fn open_files(mut self, limit: u64) -> Serve {
        self.open_files = Some(limit);
        self
    }

    pub fn fractional(mut self, mode: &'static str) -> Serve {
        self.fractional = mode;
        self
    }

    pub fn broken_flags(mut self, what: &'static str) -> Serve {
        self.broken_flags = what;
        self
    }

    /// Starts `bunting serve` with a config file written to `dir` and returns once its gRPC port
    /// accepts connections. The node's output goes to `dir/node.log`.
    pub fn start(&self, dir: &Path) -> Node {
        let mut problems = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match self.try_start(dir, attempt) {
                Ok(node) => return node,
                Err(problem) => problems.push(problem),
            }
        }
        panic!(
            "bunting serve did not start in {START_ATTEMPTS} attempts:\n{}",
            problems.join("\n---\n")
        );
    }

    fn try_start(&self, dir: &Path, attempt: usize) -> Result<Node, String> {
        let (grpc_port, metrics_port) = free_ports();
        let http_port = spare_port(0);
        let config = dir.join(format!("node-{attempt}.toml"));
        std::fs::write(
            &config,
            format!(
                "grpc_addr = \"127.0.0.1:{grpc_port}\"\n\
                 metrics_addr = \"127.0.0.1:{metrics_port}\"\nhttp_addr = \"127.0.0.1:{http_port}\"\n\
                 fractional = \"{}\"\n\
                 {}\n\
                 [flags]\n\
                 source = \"file\"\n\
                 path = {}\n\
                 broken_flags = \"{}\"\n\
                 {}",
                self.fractional,
                self.settings,
                toml_string(&self.flags),
                self.broken_flags,
                self.extra,
            ),
        )
        .unwrap();
        let log_path = dir.join(format!("node-{attempt}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = match self.open_files {
            // The shell sets the limit and execs the node in its place: the pid stays the node's.
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_bunting"));
                sh
            }
            None => Command::new(env!("CARGO_BIN_EXE_bunting")),
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(workspace())
            // Plain log lines: they are read by people in test failures, not by a terminal.
            .env("NO_COLOR", "1")
            .env("BUNTING_BOOTSTRAP_TOKEN", TEST_TOKEN)
            .env("BUNTING_TOKEN", TEST_TOKEN)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut process = Guarded::spawn(command, "bunting serve");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc_port));
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Some(status) = process.exited() {
                return Err(format!(
                    "bunting serve exited ({status}) before accepting connections:\n{}",
                    read_log(&log_path)
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // The port could in principle belong to a process that took it first; the node
                // then fails to bind and exits, which the check above catches on the next try.
                std::thread::sleep(Duration::from_millis(50));
                if process.exited().is_none() {
                    return Ok(Node {
                        process,
                        grpc_port,
                        metrics_port,
                        http_port,
                        log: log_path,
                    });
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "bunting serve did not accept connections on {addr} within {START_PATIENCE:?}:\n{}",
                    read_log(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running node; killed when dropped.
#[derive(Debug)]
pub struct Node {
    process: Guarded,
    grpc_port: u16,
    metrics_port: u16,
    http_port: u16,
    log: PathBuf,
}

impl Node {
    /// The HTTP edge's port (OFREP, event streams, definitions, health).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The operating system's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGTERM, then waits up to `limit` for the node to exit; `None` (and the node killed) if it
    /// did not.
    pub fn terminate_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.process.terminate();
        self.process.wait_for(limit)
    }

    /// The node's resident set size (VmRSS in `/proc/PID/status`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .expect("the node's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line");
        kib * 1024
    }

    /// Everything the node has logged so far, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }
}

/// Retries `attempt` every 25 ms until it gives `Some`, for at most `patience`; its value, or
/// `None` when time ran out. A bound on how long a broken run can hang, never a speed assertion.
pub async fn poll<T, F, Fut>(patience: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// [`poll`] for a test: the value once `attempt` finds it, or a failure naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, patience: Duration, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(patience, attempt)
        .await
        .unwrap_or_else(|| panic!("{what}: not seen within {patience:?}"))
}

/// [`eventually`] for a condition.
pub async fn wait_until<F, Fut>(what: &str, patience: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, patience, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Two distinct free loopback ports (see [`spare_port`]).
pub fn free_ports() -> (u16, u16) {
    (spare_port(0), spare_port(0))
}

/// A loopback port free now, and likely to stay free until a child process binds it: it is taken
/// from below the kernel's ephemeral range (32768 and up on Linux), where outgoing connections never
/// land, and never handed out twice by this process. (A port the kernel picks with `bind(0)` can be
/// given to some client socket between the test releasing it and the node binding it.) With
/// `also_free_at` non-zero, `port + also_free_at` must be free too (a Redis Cluster bus port).
pub fn spare_port(also_free_at: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts somewhere else in the span, so test binaries run one after the
    // other do not retry the same ports.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN).unwrap();
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && (also_free_at == 0 || free(port + also_free_at)) {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}

/// A path as a TOML basic string (JSON's escaping is valid TOML for any path).
pub fn toml_string(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}
