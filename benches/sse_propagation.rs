//! Change propagation to the HTTP edge's event streams: how long after an Admin write commits does
//! an OFREP SSE client (`GET /ofrep/v1/events`) receive its `refetchEvaluation` event? Target
//! (issue 12): p99 under 10 ms on one node.
//!
//! Starts a PostgreSQL-backed node in-process on a fresh database (PostgreSQL at
//! `BUNTING_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; the database is
//! dropped at the end) with its HTTP edge on a loopback port, and holds N SSE subscribers on it,
//! each a raw HTTP/1.1 connection of its own reading the event stream as it arrives (as
//! tests/http_edge.rs does). For each N in turn (the subscribers are topped up from one N to the
//! next) it makes a series of `bunting.v1.Admin/UpdateFlag` calls spaced at least [`SPACING`]
//! apart, each only once every subscriber has received the previous one, so every event is
//! attributed to exactly one update. For every update and subscriber it measures the time from
//! the Admin call's return (the commit, as the writer sees it; an event that arrives first counts
//! as 0) to the event's bytes being read, and from the Admin request being sent (an upper bound
//! including the write's round trip), and prints p50/p95/p99/max.
//!
//! The path measured is the production one: commit, NOTIFY, the node's listener, a re-read of the
//! set's snapshot, compile, the catalog watch, each event stream's task, hyper's chunked HTTP/1.1
//! to the socket. Subscribers, node and PostgreSQL share the machine (and the subscribers share
//! the node's runtime).
//!
//! Run: `cargo bench --bench sse_propagation` (10 and 1000 subscribers, 200 updates each);
//! `BUNTING_SSE_SUBSCRIBERS=10,100,1000` chooses the counts; `-- --quick` makes 10 updates per
//! count, to check the bench works, not to measure. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bunting_node::config::{Config, FlagSourceConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

// The integration tests' helpers: a database per run, an in-process node, the test token.
#[path = "../tests/common/mod.rs"]
mod common;

use common::in_process::TestNode;
use common::postgres::TestDb;

const DEFAULT_SUBSCRIBERS: &[usize] = &[10, 1000];
/// Updates not measured, per subscriber count, so pools, caches and buffers are warm.
const WARM_UP: usize = 10;
const UPDATES: usize = 200;
const QUICK_WARM_UP: usize = 2;
const QUICK_UPDATES: usize = 10;
/// From the start of one update to the start of the next (at least).
const SPACING: Duration = Duration::from_millis(20);
/// How long to wait for every subscriber to hear of one update before counting the rest lost.
const PATIENCE: Duration = Duration::from_secs(10);
/// Subscriptions opened at once while topping up.
const OPENING_AT_ONCE: usize = 50;

const EVENT: &[u8] = b"refetchEvaluation";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let counts: Vec<usize> = std::env::var("BUNTING_SSE_SUBSCRIBERS")
        .ok()
        .map(|list| {
            list.split(',')
                .map(|n| n.trim().parse().expect("BUNTING_SSE_SUBSCRIBERS: numbers"))
                .collect()
        })
        .unwrap_or_else(|| DEFAULT_SUBSCRIBERS.to_vec());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(counts, quick));
}

async fn run(counts: Vec<usize>, quick: bool) {
    // Dropped (with its connections) before the reports print, also when the run panics.
    let db = TestDb::create().await;
    let reports = measure(db.url.clone(), counts, quick).await;
    drop(db);
    let (warm_up, updates) = rounds(quick);
    println!(
        "sse propagation: Admin UpdateFlag -> OFREP refetchEvaluation on one node; {updates} \
         updates per subscriber count ({warm_up} warm-up not counted) spaced >= {} ms{}",
        SPACING.as_millis(),
        if quick {
            " (--quick: a check that it works, not a measurement)"
        } else {
            ""
        }
    );
    for report in reports {
        report.print();
    }
}

fn rounds(quick: bool) -> (usize, usize) {
    if quick {
        (QUICK_WARM_UP, QUICK_UPDATES)
    } else {
        (WARM_UP, UPDATES)
    }
}

async fn measure(url: String, counts: Vec<usize>, quick: bool) -> Vec<Report> {
    let mut config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        flags: FlagSourceConfig::Postgres {
            url: url.into(),
            // Long enough that every change measured arrives by LISTEN/NOTIFY.
            version_check: Duration::from_secs(3600),
        },
        ..Config::default()
    };
    let most = counts.iter().copied().max().unwrap_or(0);
    config.http.max_connections = config.http.max_connections.max(most + 64);
    config.http.max_event_streams = config.http.max_event_streams.max(most + 64);
    let node = TestNode::start(config).await;
    let http = node.http.expect("the HTTP edge is on");
    let mut admin = AdminClient::new(node.channel().await);
    admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: "default".into(),
            actor: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create_flag(pb::CreateFlagRequest {
            flag_set_id: "default".into(),
            key: "banner".into(),
            definition: definition(0).to_string(),
            actor: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The set must be in the node's catalog before a stream can follow it.
    let started = Instant::now();
    while common::http::send(http, "GET", "/v1/flag-sets/default", &[auth()], &[])
        .await
        .status
        != 200
    {
        assert!(
            started.elapsed() < PATIENCE,
            "the node never loaded the set"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let mut subscribers = Vec::new();
    let mut reports = Vec::new();
    let mut version: i64 = 1;
    let (warm_up, updates) = rounds(quick);
    for count in counts {
        while subscribers.len() < count {
            let batch = (count - subscribers.len()).min(OPENING_AT_ONCE);
            let opened = futures_join(
                (0..batch)
                    .map(|_| subscribe(http, tx.clone()))
                    .collect::<Vec<_>>(),
            )
            .await;
            subscribers.extend(opened);
        }
        let mut report = Report {
            subscribers: count,
            ..Report::default()
        };
        let mut next_slot = tokio::time::Instant::now();
        for update in 1..=warm_up + updates {
            tokio::time::sleep_until(next_slot).await;
            next_slot += SPACING;
            let sent = Instant::now();
            admin
                .update_flag(pb::UpdateFlagRequest {
                    flag_set_id: "default".into(),
                    key: "banner".into(),
                    definition: definition(update).to_string(),
                    expected_version: version,
                    actor: "bench".into(),
                })
                .await
                .unwrap();
            version += 1;
            let committed = Instant::now();
            let measured = update > warm_up;
            if measured {
                report.admin.push(committed - sent);
            }
            let mut received = 0;
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while received < count {
                let Ok(Some(at)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                    if measured {
                        report.lost += count - received;
                    }
                    break;
                };
                received += 1;
                if measured {
                    if at < committed {
                        report.before_reply += 1;
                    }
                    report
                        .from_reply
                        .push(at.saturating_duration_since(committed));
                    report.from_sent.push(at - sent);
                }
            }
        }
        reports.push(report);
    }
    drop(admin);
    for subscriber in subscribers {
        subscriber.abort();
    }
    node.stop().await;
    reports
}

/// Waits for every future (they run concurrently as spawned tasks).
async fn futures_join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

fn auth() -> (&'static str, &'static str) {
    static BEARER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        "authorization",
        BEARER.get_or_init(|| format!("Bearer {}", common::TEST_TOKEN)),
    )
}

/// Opens one event stream and, once the node says it follows the set, a task that sends the
/// instant each `refetchEvaluation` event's bytes are read.
async fn subscribe(
    http: SocketAddr,
    tx: mpsc::UnboundedSender<Instant>,
) -> tokio::task::JoinHandle<()> {
    let mut stream = TcpStream::connect(http).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (name, value) = auth();
    stream
        .write_all(
            format!(
                "GET /ofrep/v1/events?flagSet=default HTTP/1.1\r\nhost: bench\r\n\
                 accept: text/event-stream\r\n{name}: {value}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        while find(&seen, b"following flag set").is_none() {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the event stream ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no event stream opened");
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    tokio::spawn(async move {
        // Only what may still hold the start of an event name.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = Instant::now();
            tail.extend_from_slice(&buf[..n]);
            while let Some(position) = find(&tail, EVENT) {
                if tx.send(at).is_err() {
                    return;
                }
                tail.drain(..position + EVENT.len());
            }
            let keep = tail.len().min(EVENT.len() - 1);
            tail.drain(..tail.len() - keep);
        }
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The flag's definition at update `n`.
fn definition(n: usize) -> Value {
    json!({"state": "ENABLED", "variants": {"v": format!("update-{n}")}, "defaultVariant": "v"})
}

#[derive(Debug, Default)]
struct Report {
    subscribers: usize,
    admin: Vec<Duration>,
    /// From the Admin reply (the commit as the writer sees it), arrivals before it counted as 0.
    from_reply: Vec<Duration>,
    /// From the Admin request being sent: an upper bound that includes the write itself.
    from_sent: Vec<Duration>,
    lost: usize,
    before_reply: usize,
}

impl Report {
    fn print(mut self) {
        println!("\n{} SSE subscribers", self.subscribers);
        println!(
            "{:<34} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "", "samples", "p50", "p95", "p99", "max"
        );
        for (name, samples) in [
            ("reply -> refetchEvaluation (SSE)", &mut self.from_reply),
            ("request -> refetchEvaluation (SSE)", &mut self.from_sent),
            ("Admin UpdateFlag round trip", &mut self.admin),
        ] {
            samples.sort();
            println!(
                "{name:<34} {:>7} {:>9} {:>9} {:>9} {:>9}",
                samples.len(),
                ms(percentile(samples, 50.0)),
                ms(percentile(samples, 95.0)),
                ms(percentile(samples, 99.0)),
                ms(samples.last().copied()),
            );
        }
        println!(
            "lost (not received within {PATIENCE:?}): {}; received before the Admin reply \
             (counted as 0): {}",
            self.lost, self.before_reply
        );
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1000.0),
    )
}
