//! Issue 9, item 3: a real `bunting serve` under an open-files limit of 1,024, flooded with 5,000
//! idle TCP connections on its gRPC port. The node must keep serving the client it already had,
//! answer `/metrics`, reload an edited flag file, count the refused connections, and take new
//! clients again once the header-read timeout has freed the flood's slots. And the idle rule: a
//! connection with no stream open is closed even though it answers every keepalive ping, while a
//! silent EventStream on another connection is never cut.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bunting_proto::flagd::evaluation::v1;
use prost_types::{Struct, Value, value::Kind};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use bunting_node::config::{Config, ConnectionsConfig, FlagSourceConfig};
use bunting_stores::file::BrokenFlags;
use common::Serve;
use common::in_process::TestNode;

/// Idle sockets the flood opens.
const FLOOD: usize = 5_000;
/// The node's open-files limit, soft and hard.
const OPEN_FILES: u64 = 1_024;
/// The node's `fd_reserve` default and the `/metrics` cap: the gRPC cap is what they leave.
const EXPECTED_CAP: u64 = OPEN_FILES - 256 - 16;
/// Long enough that the flood (5,000 loopback connects, well under a second) fills the cap before
/// the first of its sockets times out, short enough to keep the test quick.
const HEADER_READ_TIMEOUT_MS: u64 = 2_000;
/// Bounds anything asynchronous; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(10);

fn flags(colour: &str) -> String {
    json!({"flags": {
        "colour": {"state": "ENABLED", "variants": {"red": "red", "blue": "blue"},
                   "defaultVariant": colour}
    }})
    .to_string()
}

/// Rewrites the file the way editors do (write a temporary file, rename it over).
fn save(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
}

async fn colour(channel: Channel) -> Result<String, tonic::Status> {
    let context = Struct {
        fields: [(
            "targetingKey".to_owned(),
            Value {
                kind: Some(Kind::StringValue("u1".to_owned())),
            },
        )]
        .into_iter()
        .collect(),
    };
    v1::service_client::ServiceClient::new(channel)
        .resolve_string(v1::ResolveStringRequest {
            flag_key: "colour".into(),
            context: Some(context),
        })
        .await
        .map(|r| r.into_inner().value)
}

/// `GET /metrics` with a deadline: the Prometheus text, or why not.
fn scrape(port: u16) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut socket =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    socket
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(response);
    }
    Ok(response)
}

/// The value of the sample of `name` whose labels include every one of `labels`; 0 if absent.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The node's resident memory, from /proc (kB).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// This process needs a descriptor per flood socket.
fn raise_own_open_files(at_least: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|soft| soft < at_least) {
        limit.current = limit.maximum.map(|hard| hard.max(at_least));
        setrlimit(Resource::Nofile, limit)
            .unwrap_or_else(|e| panic!("the test needs {at_least} open files (ulimit -n): {e}"));
    }
}

/// Opens `n` idle connections (they never send a byte); those that connected. A connect whose
/// SYN the kernel dropped (the node's accept queue momentarily full) is given up after a short
/// wait rather than retried: the kernel's retry comes a second later, and the flood must be fast.
fn flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_neither_stops_the_node_nor_locks_clients_out() {
    raise_own_open_files(FLOOD as u64 + 1_000);
    let dir = common::scratch_dir("node-limits");
    let file = dir.join("flags.json");
    std::fs::write(&file, flags("red")).unwrap();
    let node = Serve::new(&file)
        .open_files(OPEN_FILES)
        .config(&format!(
            "[connections]\n\
             header_read_timeout_ms = {HEADER_READ_TIMEOUT_MS}\n\
             idle_timeout_ms = 30000\n\
             keepalive_interval_ms = 1000\n\
             keepalive_timeout_ms = 1000\n\
             # The gRPC port alone: with the HTTP edge on, the two share the descriptors\n\
             # (edge::fd_limit's own tests cover the split).\n\
             [http]\n\
             enabled = false\n"
        ))
        .start(&dir);
    let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, node.grpc_port()));
    let log = node.log();
    assert!(
        log.contains("client connection cap") && log.contains(&format!("grpc={EXPECTED_CAP}")),
        "the effective cap is logged:\n{log}"
    );

    let existing = connect(grpc).await.unwrap();
    assert_eq!(colour(existing.clone()).await.unwrap(), "red");
    let rss_before = rss_kb(node.pid());

    let started = Instant::now();
    let sockets = tokio::task::spawn_blocking(move || flood(grpc, FLOOD))
        .await
        .unwrap();
    let flood_took = started.elapsed();
    assert!(
        sockets.len() >= FLOOD * 9 / 10,
        "only {} of {FLOOD} flood sockets connected",
        sockets.len()
    );
    let rss_flooded = rss_kb(node.pid());

    // During the flood: the existing client resolves, /metrics answers, an edit is served.
    assert_eq!(colour(existing.clone()).await.unwrap(), "red");
    let metrics_port = node.metrics_port();
    let during = tokio::task::spawn_blocking(move || scrape(metrics_port))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("/metrics during the flood: {e}\n{}", node.log()));
    let refused = sample(
        &during,
        "bunting_connections_refused_total",
        &["listener=\"grpc\"", "reason=\"at_capacity\""],
    );
    assert!(
        refused >= 1_000.0,
        "refusals counted: {refused} ({} sockets in {flood_took:?}):\n{}",
        sockets.len(),
        during
            .lines()
            .filter(|l| l.contains("connections") || l.contains("accept"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    save(&file, &flags("blue"));
    let edited = Instant::now();
    common::wait_until("the edit served during the flood", PATIENCE, || {
        let existing = existing.clone();
        async move { colour(existing).await.is_ok_and(|c| c == "blue") }
    })
    .await;
    let edit_took = edited.elapsed();

    // After the header-read timeout the flood's slots are free: a new client gets in.
    let recovering = Instant::now();
    let recovered_colour = common::eventually("a new client resolving", PATIENCE, || async {
        let channel = connect(grpc).await.ok()?;
        colour(channel).await.ok()
    })
    .await;
    assert_eq!(recovered_colour, "blue");
    let recovery_took = recovering.elapsed();
    let since_flood = started.elapsed();

    let after = scrape(node.metrics_port()).unwrap();
    let closed = sample(
        &after,
        "bunting_connections_closed_total",
        &["listener=\"grpc\"", "reason=\"header_timeout\""],
    );
    assert!(closed >= 1.0, "header-read timeouts counted:\n{after}");
    let open = sample(&after, "bunting_connections_open", &["listener=\"grpc\""]);
    let refused = sample(
        &after,
        "bunting_connections_refused_total",
        &["listener=\"grpc\"", "reason=\"at_capacity\""],
    );
    let fd_errors = sample(&after, "bunting_accept_errors_total", &[]);
    assert_eq!(fd_errors, 0.0, "the node never ran out of descriptors");
    assert!(
        !node.log().contains("flag file unreadable")
            && !node.log().contains("cannot read flag file"),
        "{}",
        node.log()
    );
    eprintln!(
        "flood: {} sockets opened in {flood_took:?}; refused {refused}, closed by header timeout {closed}, open now {open}; \
         edit served in {edit_took:?}; a new client resolved {recovery_took:?} after the edit, {:?} after the flood's last socket ({since_flood:?} after it began); \
         node RSS {rss_before:?} kB before, {rss_flooded:?} kB flooded",
        sockets.len(),
        since_flood.saturating_sub(flood_took),
    );
    drop(sockets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_quiet_streams_are_not() {
    const IDLE_MS: u64 = 400;
    let dir = common::scratch_dir("node-limits-idle");
    let file = dir.join("flags.json");
    std::fs::write(&file, flags("red")).unwrap();
    let node = TestNode::start(Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        flags: FlagSourceConfig::File {
            path: file.clone(),
            set: "default".to_owned(),
            broken_flags: BrokenFlags::Refuse,
        },
        connections: ConnectionsConfig {
            header_read_timeout_ms: IDLE_MS,
            idle_timeout_ms: IDLE_MS,
            // Pings far more often than the idle timeout: answering them must not count as use.
            keepalive_interval_ms: 100,
            keepalive_timeout_ms: 1_000,
            ..ConnectionsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let idle_before = sample(
        &node.scrape().await,
        "bunting_connections_closed_total",
        &["reason=\"idle\""],
    );

    // One connection holds a subscription that stays silent for many idle timeouts.
    let streaming = connect(node.grpc).await.unwrap();
    let mut events = v1::service_client::ServiceClient::new(streaming)
        .event_stream(v1::EventStreamRequest {})
        .await
        .unwrap()
        .into_inner();
    let ready = events.message().await.unwrap().unwrap();
    assert_eq!(ready.r#type, "provider_ready");
    // Another makes one call and then has nothing open (the channel is kept, so it is the node
    // that closes the connection, not the client dropping it).
    let unused = connect(node.grpc).await.unwrap();
    assert_eq!(colour(unused.clone()).await.unwrap(), "red");

    tokio::time::sleep(Duration::from_millis(IDLE_MS * 4)).await;
    let closed = sample(
        &node.scrape().await,
        "bunting_connections_closed_total",
        &["reason=\"idle\""],
    ) - idle_before;
    assert!(closed >= 1.0, "the unused connection was closed as idle");

    save(&file, &flags("blue"));
    let change = tokio::time::timeout(PATIENCE, events.message())
        .await
        .expect("the quiet stream is still open and gets the change")
        .unwrap()
        .unwrap();
    assert_eq!(change.r#type, "configuration_change");
    // A client whose connection was closed for idleness connects again on its next call.
    assert_eq!(colour(unused).await.unwrap(), "blue");
    node.stop().await;
}
