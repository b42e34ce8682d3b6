//! The cost of one flag write as a set grows: builds one flag set by single
//! `bunting.v1.Admin/CreateFlag` calls, one after another, and prints the latency of the calls
//! per thousand flags (p50, p99, max).
//!
//! Starts a PostgreSQL-backed node in-process on a fresh database (PostgreSQL at
//! `BUNTING_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; the database is
//! dropped at the end). Each flag has a small targeting rule and refers to one of the set's
//! `$evaluators`, so every write compiles a rule and resolves a `$ref`. The node itself follows
//! the set as it grows (LISTEN/NOTIFY, snapshot re-read, compile), on the same two cores, as in
//! production.
//!
//! Run: `cargo bench --bench admin_writes` (10,000 flags) or
//! `BUNTING_WRITES_FLAGS=2000 cargo bench --bench admin_writes`. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bunting_node::config::{Config, FlagSourceConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::Channel;

#[path = "../tests/common/mod.rs"]
mod common;

use common::in_process::TestNode;
use common::postgres::TestDb;

/// Latencies are reported per this many flags.
const BUCKET: usize = 1000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let flags: usize = std::env::var("BUNTING_WRITES_FLAGS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let db = TestDb::create().await;
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        flags: FlagSourceConfig::Postgres {
            url: db.url.clone().into(),
            version_check: Duration::from_secs(3600),
        },
        ..Config::default()
    };
    let node = TestNode::start(config).await;
    let channel = Channel::from_shared(format!("http://{}", node.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let latencies = build_set(AdminClient::new(channel), flags).await;
    node.stop().await;
    drop(db);
    print_report(&latencies);
}

async fn build_set(mut admin: AdminClient<Channel>, flags: usize) -> Vec<Duration> {
    let mut evaluators = serde_json::Map::new();
    evaluators.insert(
        "beta".into(),
        json!({"in": [{"var": "email"}, ["a@example.com", "b@example.com"]]}),
    );
    admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: "big".into(),
            actor: "bench".into(),
            evaluators: bunting_proto::json::json_to_struct(&evaluators).ok(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut latencies = Vec::with_capacity(flags);
    for i in 0..flags {
        let definition = json!({
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "targeting": {"if": [
                {"or": [{"$ref": "beta"}, {">=": [{"var": "age"}, i % 90]}]}, "on", "off"
            ]}
        });
        let started = Instant::now();
        admin
            .create_flag(pb::CreateFlagRequest {
                flag_set_id: "big".into(),
                key: format!("flag-{i:05}"),
                definition: definition.to_string(),
                actor: "bench".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        latencies.push(started.elapsed());
    }
    latencies
}

fn print_report(latencies: &[Duration]) {
    println!("CreateFlag latency while one set grows, per {BUCKET} flags (ms)");
    println!("{:>13} {:>8} {:>8} {:>8}", "flags", "p50", "p99", "max");
    for (i, chunk) in latencies.chunks(BUCKET).enumerate() {
        let mut sorted = chunk.to_vec();
        sorted.sort();
        let at = |q: f64| {
            let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted[index].as_secs_f64() * 1e3
        };
        println!(
            "{:>6}-{:<6} {:>8.2} {:>8.2} {:>8.2}",
            i * BUCKET + 1,
            i * BUCKET + chunk.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}
