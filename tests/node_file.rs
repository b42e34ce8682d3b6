//! A file-backed node in-process (`server::bind` on port 0): live edits reach flagd event and sync
//! streams, a broken edit is refused while the last good flags keep serving, metrics are exposed,
//! TLS works when configured, and malformed requests are refused with a clear status.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bunting_node::config::{Config, FlagSourceConfig, TlsConfig};
use bunting_proto::flagd::evaluation::v1;
use bunting_proto::flagd::sync::v1 as sync;
use bunting_stores::file::BrokenFlags;
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
        http_addr: "127.0.0.1:0".parse().unwrap(),
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
        client_ca: None,
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

/// The reduce that doubles a string per element: 2^34 bytes for a 34-item array. From the
/// context, only the evaluation budget stops it; with the list written in the rule, compiling
/// refuses it.
fn doubling(items: serde_json::Value) -> serde_json::Value {
    json!({"if": [
        {"reduce": [items, {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}, "ab"]},
        "on", "off"
    ]})
}

fn budget_flags(targeting: serde_json::Value) -> String {
    json!({"flags": {
        "bomb": {"state": "ENABLED", "variants": {"on": true, "off": false},
                 "defaultVariant": "off", "targeting": targeting},
        "pro": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]}}
    }})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_past_its_budget_fails_alone_and_is_counted() {
    let dir = scratch("budget");
    let file = dir.join("flags.json");
    std::fs::write(&file, budget_flags(doubling(json!({"var": "items"})))).unwrap();
    let node = TestNode::start(config(&file)).await;
    let mut client = v1::service_client::ServiceClient::new(channel(node.grpc).await);
    let items: Vec<serde_json::Value> = (0..34).map(serde_json::Value::from).collect();
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("targetingKey".to_owned(), json!("attacker"));
    fields.insert("items".to_owned(), json!(items));
    let attack = bunting_proto::json::json_to_struct(&fields.into_iter().collect()).unwrap();
    let status = client
        .resolve_boolean(v1::ResolveBooleanRequest {
            flag_key: "bomb".into(),
            context: Some(attack),
        })
        .await
        .unwrap_err();
    // flagd's GENERAL error (gRPC UNKNOWN), naming the budget; the process is still here.
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    assert!(status.message().contains("budget"), "{status:?}");
    let pro = client
        .resolve_boolean(v1::ResolveBooleanRequest {
            flag_key: "pro".into(),
            context: Some(context(&[("plan", "pro")])),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pro.value, "other flags still resolve");
    let body = node.scrape().await;
    let counted = "bunting_evaluation_budget_exceeded_total{flag_set=\"default\",flag=\"bomb\",budget=\"built_bytes\"} 1";
    assert!(body.contains(counted), "{counted} missing from /metrics");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_over_the_limits_are_refused_by_name_and_the_last_good_flags_serve() {
    let dir = scratch("limits");
    let file = dir.join("flags.json");
    std::fs::write(&file, flags("red")).unwrap();
    let mut config = config(&file);
    config.definitions.max_document_bytes = std::num::NonZeroUsize::new(4096).unwrap();
    let node = TestNode::start(config).await;
    let mut client = v1::service_client::ServiceClient::new(channel(node.grpc).await);
    assert_eq!(colour(&mut client).await, "red");

    // Each is refused; what refuses it is named in the log (checked in unit tests); here the
    // node keeps serving red, and a good edit afterwards is served.
    let literal: Vec<serde_json::Value> = (0..40).map(serde_json::Value::from).collect();
    let refused = [
        // The doubling rule over a list written in the rule: refused when compiled.
        budget_flags(doubling(json!(literal))),
        // A repeated variant: serde_json alone would keep the last one.
        flags("blue").replacen(r#""blue":"blue""#, r#""blue":"blue","blue":"green""#, 1),
        // Over max_document_bytes, refused from its length without being read.
        format!("{}{}", flags("blue"), " ".repeat(8192)),
    ];
    for text in &refused {
        assert_ne!(text, &flags("blue"), "each edit differs from the good one");
        save(&file, text);
        // Two poll ticks and then some: long enough for a refusal to be final.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(colour(&mut client).await, "red", "refused: {:.80}", text);
    }
    save(&file, &flags("blue"));
    let started = std::time::Instant::now();
    while colour(&mut client).await != "blue" {
        assert!(
            started.elapsed() < PATIENCE,
            "the good edit was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
}
