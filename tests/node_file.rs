//! A file-backed node in-process (`server::bind` on port 0): live edits reach flagd event and sync
//! streams, a broken edit is refused while the last good flags keep serving, metrics are exposed,
//! TLS works when configured, and malformed requests are refused with a clear status.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bunting::config::{Config, FlagSourceConfig, TlsConfig};
use bunting::store::file::BrokenFlags;
use bunting_proto::flagd::evaluation::v1;
use bunting_proto::flagd::sync::v1 as sync;
use prost_types::{Struct, Value, value::Kind};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use common::in_process::TestNode;

/// Generous bound for anything asynchronous to arrive; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(10);

fn scratch(label: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("node-file-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn flags(colour: &str) -> String {
    json!({"flags": {
        "colour": {"state": "ENABLED", "variants": {"red": "red", "blue": "blue"},
                   "defaultVariant": colour},
        "pro": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]}}
    }})
    .to_string()
}

fn config(file: &Path) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        flags: FlagSourceConfig::File {
            path: file.to_owned(),
            set: "default".to_owned(),
            broken_flags: BrokenFlags::Refuse,
        },
        ..Config::default()
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn context(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    Value {
                        kind: Some(Kind::StringValue((*v).to_owned())),
                    },
                )
            })
            .collect(),
    }
}

async fn colour(client: &mut v1::service_client::ServiceClient<Channel>) -> String {
    client
        .resolve_string(v1::ResolveStringRequest {
            flag_key: "colour".into(),
            context: Some(context(&[("targetingKey", "u1")])),
        })
        .await
        .unwrap()
        .into_inner()
        .value
}

/// Rewrites the file the way editors do (write a temporary file, rename it over).
fn save(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reach_evaluations_event_streams_and_sync_streams() {
    let dir = scratch("edits");
    let file = dir.join("flags.json");
    std::fs::write(&file, flags("red")).unwrap();
    let node = TestNode::start(config(&file)).await;
    let ch = channel(node.grpc).await;
    let mut client = v1::service_client::ServiceClient::new(ch.clone());
    assert_eq!(colour(&mut client).await, "red");

    let mut events = client
        .event_stream(v1::EventStreamRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, "provider_ready");
    let mut syncs = sync::flag_sync_service_client::FlagSyncServiceClient::new(ch)
        .sync_flags(sync::SyncFlagsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let initial = syncs.message().await.unwrap().unwrap();
    assert!(initial.flag_configuration.contains("\"red\""));

    save(&file, &flags("blue"));
    let change = tokio::time::timeout(PATIENCE, events.message())
        .await
        .expect("configuration_change arrives")
        .unwrap()
        .unwrap();
    assert_eq!(change.r#type, "configuration_change");
    let changed: Vec<String> = change.data.unwrap().fields["flags"]
        .kind
        .as_ref()
        .and_then(|k| match k {
            Kind::StructValue(s) => Some(s.fields.keys().cloned().collect()),
            _ => None,
        })
        .unwrap();
    assert_eq!(changed, ["colour"], "only the edited flag is named");
    let synced = tokio::time::timeout(PATIENCE, syncs.message())
        .await
        .expect("the new definition is synced")
        .unwrap()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&synced.flag_configuration).unwrap();
    assert_eq!(doc["flags"]["colour"]["defaultVariant"], json!("blue"));
    assert_eq!(colour(&mut client).await, "blue");

    // A broken edit is refused; the last good flags keep serving.
    save(
        &file,
        r#"{"flags": {"colour": {"state": "ENABLED", "variants": {}}}}"#,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(colour(&mut client).await, "blue");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_invalid_argument() {
    let dir = scratch("bad-requests");
    let file = dir.join("flags.json");
    std::fs::write(&file, flags("red")).unwrap();
    let mut cfg = config(&file);
    cfg.max_context_bytes = 256;
    let node = TestNode::start(cfg).await;
    let mut client = v1::service_client::ServiceClient::new(channel(node.grpc).await);
    let empty_key = client
        .resolve_boolean(v1::ResolveBooleanRequest {
            flag_key: String::new(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(empty_key.code(), tonic::Code::InvalidArgument);
    let big = "x".repeat(1000);
    let too_big = client
        .resolve_boolean(v1::ResolveBooleanRequest {
            flag_key: "pro".into(),
            context: Some(context(&[("blob", &big)])),
        })
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
    assert!(
        too_big.message().contains("limit of 256 bytes"),
        "{}",
        too_big.message()
    );
    let wrong_set = client
        .resolve_boolean({
            let mut r = tonic::Request::new(v1::ResolveBooleanRequest {
                flag_key: "pro".into(),
                context: None,
            });
            r.metadata_mut()
                .insert("flagd-selector", "nope".parse().unwrap());
            r
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_set.code(), tonic::Code::NotFound);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exposed_for_prometheus() {
    let dir = scratch("metrics");
    let file = dir.join("flags.json");
    std::fs::write(&file, flags("red")).unwrap();
    let node = TestNode::start(config(&file)).await;
    let mut client = v1::service_client::ServiceClient::new(channel(node.grpc).await);
    for _ in 0..3 {
        colour(&mut client).await;
    }
    let _ = client
        .resolve_boolean(v1::ResolveBooleanRequest {
            flag_key: "missing".into(),
            context: None,
        })
        .await;
    // Mailbox depths are sampled once a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let body = node.scrape().await;
    for name in [
        "bunting_evaluations_total{service=\"flagd.evaluation.v1\",reason=\"STATIC\"}",
        "bunting_evaluation_errors_total{service=\"flagd.evaluation.v1\",code=\"FLAG_NOT_FOUND\"}",
        "bunting_evaluation_seconds_bucket",
        "bunting_shard_mailbox_depth{shard=\"0\"}",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_configured() {
    let dir = scratch("tls");
    let file = dir.join("flags.json");
    std::fs::write(&file, flags("red")).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    std::fs::write(dir.join("node.crt"), &cert_pem).unwrap();
    std::fs::write(dir.join("node.key"), &key_pem).unwrap();
    let mut cfg = config(&file);
    cfg.tls = Some(TlsConfig {
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
    });
    let node = TestNode::start(cfg).await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let secure = Endpoint::from_shared(format!("https://{}", node.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1::service_client::ServiceClient::new(secure);
    assert_eq!(colour(&mut client).await, "red");

    // Plain HTTP/2 is not served on a TLS port.
    let mut plain = v1::service_client::ServiceClient::new(channel_lazy(node.grpc));
    let refused = plain
        .resolve_string(v1::ResolveStringRequest {
            flag_key: "colour".into(),
            context: None,
        })
        .await;
    assert!(refused.is_err());
    node.stop().await;
}

fn channel_lazy(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(2))
        .connect_lazy()
}
