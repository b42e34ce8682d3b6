//! Change propagation: how long after an Admin write commits do subscribers hear of it?
//!
//! Starts a PostgreSQL-backed node in-process on a fresh database (PostgreSQL at
//! `BUNTING_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; the database is
//! dropped at the end), opens flagd v1 `EventStream` and flagd sync `SyncFlags` subscribers, each
//! on a connection of its own, then makes a series of `bunting.v1.Admin/UpdateFlag` calls spaced
//! [`SPACING`] apart. For every update and every subscriber it measures the time from the Admin
//! call's return (the commit, as the writer sees it) to the subscriber receiving the change, and
//! prints p50/p95/p99/max per stream kind. Because a change can reach a subscriber before the
//! Admin reply reaches the writer, it also prints the same from the moment the Admin request was
//! sent: an upper bound that includes the write's own round trip.
//!
//! The path measured is the production one: commit, NOTIFY, the node's listener, a re-read of the
//! set's snapshot, compile, fan-out to the shards and the catalog watch, each stream's task, gRPC
//! to the client. Updates are not overlapped: the next one starts once its slot has come and every
//! subscriber has the previous one, so each message is attributed to exactly one update (a
//! change can arrive before the Admin reply does; that counts as 0).
//!
//! With `BUNTING_PROPAGATION_NODES=3` the nodes are three real `bunting serve` processes joined
//! into one loopback cluster (`[cluster]`, cookie from the environment) on the same database; the
//! Admin writes go to the first, the subscribers are spread over all three, so the figures are
//! the cluster-wide path: every node's LISTEN, catch-up, supervisor fan-out and streams.
//!
//! Run: `cargo bench --bench propagation` (one in-process node) or
//! `BUNTING_PROPAGATION_NODES=3 cargo bench --bench propagation`. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bunting_node::config::{Config, FlagSourceConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::flagd::evaluation::v1;
use bunting_proto::flagd::sync::v1::SyncFlagsRequest;
use bunting_proto::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::transport::Channel;

// The integration tests' helpers: a database per run, real cluster processes, an in-process node.
#[path = "../tests/common/mod.rs"]
mod common;

use common::cluster::ClusterNode;
use common::in_process::TestNode;
use common::postgres::TestDb;
const EVENT_SUBSCRIBERS: usize = 10;
const SYNC_SUBSCRIBERS: usize = 10;
/// Updates not measured, so connection pools and caches are warm.
const WARM_UP: usize = 10;
const UPDATES: usize = 200;
/// From the start of one update to the start of the next (at least).
const SPACING: Duration = Duration::from_millis(20);
/// How long to wait for every subscriber to hear of one update before counting the rest lost.
const PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    EventStream,
    SyncFlags,
}

/// One message a subscriber received: when, and for sync, which update it carries.
#[derive(Debug)]
struct Received {
    kind: Kind,
    at: Instant,
    /// The update number a SyncFlags configuration carries; `None` for events, which name the
    /// changed flag but not its value.
    update: Option<usize>,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    // Dropped (with its connections) before the report prints, also when the run panics.
    let db = TestDb::create().await;
    let result = measure(db.url.clone()).await;
    drop(db);
    result.print();
}

/// Starts `nodes` clustered `bunting serve` processes on `url`, each seeded with the ones before
/// it; each `start` returns once the node accepts gRPC connections.
fn spawn_cluster(url: &str, nodes: usize) -> Vec<ClusterNode> {
    let dir = common::scratch_dir("propagation");
    // Long enough that every change measured arrives by LISTEN/NOTIFY.
    let flags = format!(
        "source = \"postgres\"\nurl = {}\nversion_check = 3600",
        common::toml_string(std::path::Path::new(url))
    );
    let mut started: Vec<ClusterNode> = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let seeds: Vec<_> = started.iter().map(|n| n.cluster).collect();
        let mut node = ClusterNode::new(&dir, &format!("node-{i}"), &flags, &seeds);
        node.start();
        started.push(node);
    }
    started
}

async fn measure(url: String) -> Report {
    let nodes: usize = std::env::var("BUNTING_PROPAGATION_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    if nodes > 1 {
        let cluster = spawn_cluster(&url, nodes);
        let endpoints = cluster.iter().map(ClusterNode::url).collect();
        return measure_on(endpoints, nodes).await;
    }
    let config = Config {
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
    let node = TestNode::start(config).await;
    let report = measure_on(vec![format!("http://{}", node.grpc)], 1).await;
    node.stop().await;
    report
}

/// Admin writes go to the first endpoint; subscriber `i` connects to endpoint `i % n`.
async fn measure_on(endpoints: Vec<String>, nodes: usize) -> Report {
    let connect_to = |i: usize| {
        let endpoint = endpoints[i % endpoints.len()].clone();
        async move {
            Channel::from_shared(endpoint)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
    };
    let connect = || connect_to(0);

    let mut admin = AdminClient::new(connect().await);
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
    // SyncFlags needs the set on every node: wait for it.
    for n in 0..endpoints.len() {
        let mut probe = FlagSyncServiceClient::new(connect_to(n).await);
        let started = Instant::now();
        while probe
            .fetch_all_flags(bunting_proto::flagd::sync::v1::FetchAllFlagsRequest::default())
            .await
            .map_or(true, |r| {
                update_of(&r.into_inner().flag_configuration) != Some(0)
            })
        {
            assert!(
                started.elapsed() < PATIENCE,
                "node {n} never loaded the set"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Received>();
    let mut subscribers = Vec::new();
    for i in 0..EVENT_SUBSCRIBERS {
        let mut stream = v1::service_client::ServiceClient::new(connect_to(i).await)
            .event_stream(v1::EventStreamRequest {})
            .await
            .unwrap()
            .into_inner();
        // provider_ready first: the subscription is live once it arrives.
        let ready = stream.message().await.unwrap().unwrap();
        assert_eq!(ready.r#type, "provider_ready");
        let tx = tx.clone();
        subscribers.push(tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                let at = Instant::now();
                if event.r#type == "configuration_change" {
                    let sent = tx.send(Received {
                        kind: Kind::EventStream,
                        at,
                        update: None,
                    });
                    if sent.is_err() {
                        break;
                    }
                }
            }
        }));
    }
    for i in 0..SYNC_SUBSCRIBERS {
        let mut stream = FlagSyncServiceClient::new(connect_to(i).await)
            .sync_flags(SyncFlagsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let initial = stream.message().await.unwrap().unwrap();
        assert_eq!(update_of(&initial.flag_configuration), Some(0));
        let tx = tx.clone();
        subscribers.push(tokio::spawn(async move {
            while let Ok(Some(sync)) = stream.message().await {
                let at = Instant::now();
                let sent = tx.send(Received {
                    kind: Kind::SyncFlags,
                    at,
                    update: update_of(&sync.flag_configuration),
                });
                if sent.is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let mut report = Report {
        nodes,
        ..Report::default()
    };
    let mut next_slot = tokio::time::Instant::now();
    for update in 1..=WARM_UP + UPDATES {
        tokio::time::sleep_until(next_slot).await;
        next_slot += SPACING;
        let sent = Instant::now();
        admin
            .update_flag(pb::UpdateFlagRequest {
                flag_set_id: "default".into(),
                key: "banner".into(),
                definition: definition(update).to_string(),
                // The flag was created at version 1; each update bumps it.
                expected_version: i64::try_from(update).unwrap(),
                actor: "bench".into(),
            })
            .await
            .unwrap();
        let committed = Instant::now();
        let measured = update > WARM_UP;
        if measured {
            report.admin.push(committed - sent);
        }
        let (mut events, mut syncs) = (0, 0);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while events < EVENT_SUBSCRIBERS || syncs < SYNC_SUBSCRIBERS {
            let Ok(Some(received)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                if measured {
                    report.lost += EVENT_SUBSCRIBERS - events + SYNC_SUBSCRIBERS - syncs;
                }
                break;
            };
            // An arrival before the Admin reply is an arrival at the commit.
            let latency = received.at.saturating_duration_since(committed);
            if measured && received.at < committed {
                report.before_reply += 1;
            }
            match received.kind {
                Kind::EventStream => {
                    events += 1;
                    if measured {
                        report.event_stream.push(latency);
                        report.event_stream_from_sent.push(received.at - sent);
                    }
                }
                Kind::SyncFlags => {
                    assert_eq!(received.update, Some(update), "a sync out of order");
                    syncs += 1;
                    if measured {
                        report.sync.push(latency);
                        report.sync_from_sent.push(received.at - sent);
                    }
                }
            }
        }
    }

    drop(admin);
    for subscriber in subscribers {
        subscriber.abort();
    }
    report
}

/// The flag's definition at update `n`: its one variant's value names the update.
fn definition(n: usize) -> Value {
    json!({"state": "ENABLED", "variants": {"v": format!("update-{n}")}, "defaultVariant": "v"})
}

/// Which update a synced configuration carries.
fn update_of(configuration: &str) -> Option<usize> {
    let document: Value = serde_json::from_str(configuration).ok()?;
    document["flags"]["banner"]["variants"]["v"]
        .as_str()?
        .strip_prefix("update-")?
        .parse()
        .ok()
}

#[derive(Debug, Default)]
struct Report {
    nodes: usize,
    admin: Vec<Duration>,
    /// From the Admin reply (the brief's "commit"), arrivals before it counted as 0.
    event_stream: Vec<Duration>,
    sync: Vec<Duration>,
    /// From the Admin request being sent: an upper bound that includes the write itself.
    event_stream_from_sent: Vec<Duration>,
    sync_from_sent: Vec<Duration>,
    lost: usize,
    before_reply: usize,
}

impl Report {
    fn print(mut self) {
        println!(
            "propagation: {UPDATES} updates ({WARM_UP} warm-up not counted) spaced >= {} ms, \
             {EVENT_SUBSCRIBERS} EventStream + {SYNC_SUBSCRIBERS} SyncFlags subscribers over {} node(s)",
            SPACING.as_millis(),
            self.nodes
        );
        println!(
            "{:<34} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "", "samples", "p50", "p95", "p99", "max"
        );
        for (name, samples) in [
            ("reply -> EventStream (flagd v1)", &mut self.event_stream),
            ("reply -> SyncFlags (flagd sync)", &mut self.sync),
            (
                "request -> EventStream (flagd v1)",
                &mut self.event_stream_from_sent,
            ),
            (
                "request -> SyncFlags (flagd sync)",
                &mut self.sync_from_sent,
            ),
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
