//! gRPC health, reflection and the sync metadata of a file-backed node in-process
//! (`server::bind` on port 0), all reached without a token: health SERVING for the node and each
//! service once the flags are loaded, NOT_SERVING to a watcher when the node shuts down;
//! reflection listing every service; `bunting.fractional` naming the node's bucketing mode.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bunting_node::config::{Config, FlagSourceConfig, FractionalConfig};
use bunting_proto::flagd::sync::v1 as sync;
use bunting_stores::file::BrokenFlags;
use prost_types::value::Kind;
use serde_json::json;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use common::in_process::TestNode;

/// Generous bound for anything asynchronous to arrive; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(10);

fn scratch(label: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("node-health-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path) -> Config {
    let file = dir.join("flags.json");
    std::fs::write(
        &file,
        json!({"flags": {"colour": {"state": "ENABLED", "variants": {"red": "red"},
                                    "defaultVariant": "red"}}})
        .to_string(),
    )
    .unwrap();
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        flags: FlagSourceConfig::File {
            path: file,
            set: "default".to_owned(),
            broken_flags: BrokenFlags::Refuse,
        },
        ..Config::default()
    }
}

/// A channel with no token: what a Kubernetes probe or grpcurl has.
async fn anonymous(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn check(client: &mut HealthClient<Channel>, service: &str) -> Result<i32, Code> {
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_without_a_token_and_a_watcher_sees_not_serving_at_shutdown() {
    let dir = scratch("serving");
    let node = TestNode::start(config(&dir)).await;
    let mut health = HealthClient::new(anonymous(node.grpc).await);
    let serving = Ok(ServingStatus::Serving as i32);
    // The status task starts with the server: wait for its first SERVING.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while check(&mut health, "").await != serving {
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for service in [
        "flagd.evaluation.v1.Service",
        "flagd.evaluation.v2.Service",
        "flagd.sync.v1.FlagSyncService",
        "bunting.v1.Evaluation",
        "bunting.v1.Admin",
        "bunting.v1.Experiments",
        "bunting.v1.Topology",
        "bunting.v1.ClusterAdmin",
        "bunting.v1.Tokens",
    ] {
        assert_eq!(check(&mut health, service).await, serving, "{service}");
    }
    assert_eq!(
        check(&mut health, "no.such.Service").await,
        Err(Code::NotFound)
    );

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopped = tokio::spawn(node.stop());
    let last = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("no status after shutdown began")
        .unwrap()
        .expect("the watch ended without NOT_SERVING");
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    // The watch ends rather than holding up the drain.
    let end = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("the watch did not end");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    tokio::time::timeout(PATIENCE * 3, stopped)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_without_a_token() {
    let dir = scratch("reflection");
    let node = TestNode::start(config(&dir)).await;
    let mut client = ServerReflectionClient::new(anonymous(node.grpc).await);
    let ask = |request: MessageRequest| {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }])
    };
    let mut answers = client
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "bunting.v1.Admin",
        "bunting.v1.Evaluation",
        "bunting.v1.Experiments",
        "bunting.v1.Tokens",
        "flagd.evaluation.v1.Service",
        "flagd.evaluation.v2.Service",
        "flagd.sync.v1.FlagSyncService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }

    // A symbol resolves to its file's descriptor, as grpcurl's `describe` asks.
    let mut answers = client
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "flagd.evaluation.v1.Service".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
        panic!("no descriptor: {answer:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    node.stop().await;
}

/// `bunting.fractional` in what `GetMetadata` and `SyncFlags` send.
async fn sync_fractional(addr: SocketAddr) -> (String, String) {
    let mut client =
        sync::flag_sync_service_client::FlagSyncServiceClient::new(anonymous(addr).await);
    let text = |s: Option<&prost_types::Struct>| match s
        .and_then(|s| s.fields.get("bunting.fractional"))
        .and_then(|v| v.kind.clone())
    {
        Some(Kind::StringValue(mode)) => mode,
        other => panic!("no bunting.fractional: {other:?}"),
    };
    let metadata = client
        .get_metadata(sync::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner()
        .metadata;
    let mut stream = client
        .sync_flags(sync::SyncFlagsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.flag_configuration.contains("colour"));
    (text(metadata.as_ref()), text(first.sync_context.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_metadata_names_the_node_s_fractional_mode() {
    let dir = scratch("fractional-default");
    let node = TestNode::start(config(&dir)).await;
    assert_eq!(
        sync_fractional(node.grpc).await,
        ("string".to_owned(), "string".to_owned()),
        "the default agrees with the flagd server"
    );
    node.stop().await;

    let dir = scratch("fractional-cbor");
    let node = TestNode::start(Config {
        fractional: FractionalConfig::Cbor,
        ..config(&dir)
    })
    .await;
    assert_eq!(
        sync_fractional(node.grpc).await,
        ("cbor".to_owned(), "cbor".to_owned())
    );
    node.stop().await;
}
