//! A loopback cluster of real `bunting serve` processes on one flag file: membership, the
//! Topology RPC, forwarding to the owner with the routing metadata, metrics, the `bunting cluster`
//! commands, the bad input the cluster port must survive (a wrong cookie, garbage and oversized
//! frames), and mutual TLS on the cluster port (`[cluster.tls]`) keeping outsiders out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bunting_proto::bunting::v1::ClusterStatusRequest;
use bunting_proto::bunting::v1::cluster_admin_client::ClusterAdminClient;
use bunting_proto::flagd::evaluation::v2;
use common::cluster::{ClusterNode, agreement, file_flags, owners, status_text, topology};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use serde_json::json;

fn flag_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("flags.json");
    std::fs::write(
        &path,
        json!({"flags": {"routed": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]}
        }, "limit": {"state": "ENABLED", "variants": {"low": 25}, "defaultVariant": "low"}}})
        .to_string(),
    )
    .unwrap();
    path
}

fn context(key: &str) -> prost_types::Struct {
    bunting_proto::json::json_to_struct(
        json!({"targetingKey": key, "plan": "pro"})
            .as_object()
            .unwrap(),
    )
    .unwrap()
}

async fn resolve(node: &ClusterNode, key: &str) -> tonic::Response<v2::ResolveBooleanResponse> {
    v2::service_client::ServiceClient::connect(node.url())
        .await
        .unwrap()
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "routed".into(),
            context: Some(context(key)),
        })
        .await
        .unwrap()
}

fn header(response: &tonic::Response<v2::ResolveBooleanResponse>, name: &str) -> Option<String> {
    response
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn bunting(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bunting"))
        .args(args)
        .env("BUNTING_TOKEN", common::TEST_TOKEN)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_routes_forwards_and_drains() {
    let dir = common::scratch_dir("cluster-routing");
    let flags = file_flags(&flag_file(&dir));
    let mut n1 = ClusterNode::new(&dir, "node-1", &flags, &[]);
    let mut n2 = ClusterNode::new(&dir, "node-2", &flags, &[n1.cluster]);
    let mut n3 = ClusterNode::new(&dir, "node-3", &flags, &[n1.cluster]);
    n1.start();
    n2.start();
    n3.start();
    let epoch = agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|| panic!("no agreement:\n{}", n1.log()));

    // Topology: every shard has one owner, and the shard of a key is the keyspace function.
    let map = topology(&n2).await.unwrap();
    assert_eq!(map.epoch, epoch);
    assert_eq!(map.shard_count, 256);
    assert_eq!(map.shard_owner.len(), 256);
    let owner_of = |key: &str| {
        let shard = bunting_keyspace::shard_of(key, map.shard_count);
        map.nodes[map.shard_owner[shard as usize] as usize]
            .id
            .clone()
    };

    // A request sent to a node that does not own the key is forwarded: the answer is the
    // owner's, and the metadata names the owner so a smart client can re-route.
    let nodes = [&n1, &n2, &n3];
    let mut forwarded = 0;
    for i in 0..30 {
        let key = format!("user-{i}");
        let owner = owner_of(&key);
        for node in nodes {
            let answer = resolve(node, &key).await;
            assert_eq!(
                answer.get_ref().value,
                Some(true),
                "targeting must apply on {}",
                node.id
            );
            assert_eq!(header(&answer, "bunting-epoch"), Some(epoch.to_string()));
            if node.id == owner {
                assert_eq!(
                    header(&answer, "bunting-owner"),
                    None,
                    "the owner answered itself"
                );
            } else {
                assert_eq!(header(&answer, "bunting-owner"), Some(owner.clone()));
                forwarded += 1;
            }
        }
    }
    assert_eq!(forwarded, 60, "each key has one owner and two non-owners");
    let forwards: u64 = nodes
        .iter()
        .map(|n| {
            metric(
                &n.metrics_text(),
                "bunting_forwards_total{outcome=\"forwarded\"}",
            )
        })
        .sum();
    let received: u64 = nodes
        .iter()
        .map(|n| metric(&n.metrics_text(), "bunting_forwards_received_total"))
        .sum();
    let forward_lines: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            n.metrics_text()
                .lines()
                .filter(|l| l.starts_with("bunting_forwards"))
                .map(|l| format!("{}: {l}", n.id))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        forwards, 60,
        "every non-owner request was forwarded, none fell back: {forward_lines:#?}"
    );
    assert_eq!(
        forwards, 60,
        "every non-owner request was forwarded, none fell back"
    );
    assert_eq!(received, 60, "every forward reached an owner");

    // `bunting cluster status` through any node lists every member and the epoch.
    let status = bunting(&["cluster", "status", "--node", &n3.grpc.to_string()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains(&format!("epoch {epoch}")), "{text}");
    for id in ["node-1", "node-2", "node-3"] {
        assert!(text.contains(id), "{id} missing from:\n{text}");
    }

    // `bunting resolve` answers through the shard-aware client, from the key's owner.
    let resolved = bunting(&[
        "resolve",
        "--node",
        &n2.grpc.to_string(),
        "--flag",
        "routed",
        "--context",
        r#"{"targetingKey": "user-3", "plan": "pro"}"#,
    ]);
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&resolved.stdout).unwrap();
    assert_eq!(answer["owner"], owner_of("user-3"));
    assert_eq!(answer["epoch"], epoch);
    assert_eq!(answer["flags"]["routed"]["value"], true);
    assert_eq!(answer["flags"]["routed"]["variant"], "on");
    // Issue 13's papercuts: an integer prints as one, no `"owner": null` without a targeting key,
    // and an unknown flag is an error with flagd's code. (flag, exit code, printed, error code)
    for (flag, code, printed, error) in [
        ("limit", Some(0), "\"value\": 25,", serde_json::Value::Null),
        ("nope", Some(1), "\"flags\": {}", json!("FLAG_NOT_FOUND")),
    ] {
        let out = bunting(&["resolve", "--node", &n2.grpc.to_string(), "--flag", flag]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), code, "{flag}: {text}");
        assert!(
            text.contains(printed) && !text.contains("owner"),
            "{flag}: {text}"
        );
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["error"]["errorCode"], error, "{flag}: {text}");
    }

    // The load generator through the shard-aware client: every request answered, none forwarded
    // (each goes to its owner).
    let forwards_before: u64 = [&n1, &n2, &n3]
        .iter()
        .map(|n| {
            metric(
                &n.metrics_text(),
                "bunting_forwards_total{outcome=\"forwarded\"}",
            )
        })
        .sum();
    let bench = bunting(&[
        "bench",
        "--target",
        &n1.grpc.to_string(),
        "--routed",
        "--flag",
        "routed",
        "--seconds",
        "1",
        "--concurrency",
        "2",
        "--users",
        "500",
    ]);
    let report = String::from_utf8_lossy(&bench.stdout);
    assert!(
        bench.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    assert!(report.contains("errors=0"), "{report}");
    let forwards_after: u64 = [&n1, &n2, &n3]
        .iter()
        .map(|n| {
            metric(
                &n.metrics_text(),
                "bunting_forwards_total{outcome=\"forwarded\"}",
            )
        })
        .sum();
    assert_eq!(
        forwards_after, forwards_before,
        "a routed load must not need forwarding"
    );

    // Garbage and an absurd length prefix on the cluster port drop that session only.
    for junk in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff; 64],
        [&u64::MAX.to_be_bytes()[..], &[0u8; 32]].concat(),
    ] {
        if let Ok(mut stream) = TcpStream::connect(n1.cluster) {
            let _ = stream.write_all(&junk);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        n1.is_running(),
        "node-1 died of a malformed frame:\n{}",
        n1.log()
    );
    assert_eq!(resolve(&n1, "user-0").await.get_ref().value, Some(true));

    // A node with the wrong cookie is refused and changes nothing; everyone keeps running.
    let mut stranger =
        ClusterNode::new(&dir, "stranger", &flags, &[n1.cluster]).with_cookie("not-the-cookie");
    stranger.start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(still, Some(epoch), "a wrong-cookie node changed the map");
    assert!(
        !status_text(&n1).await.contains("stranger"),
        "{}",
        status_text(&n1).await
    );
    assert!(n1.is_running() && stranger.is_running());
    // And it owns nothing: a node with seeds must be let in before it owns a shard, so one
    // refused at join never forms a cluster of one owning them all (it used to, at epoch 0).
    let alone = topology(&stranger).await.expect("the stranger answers");
    assert!(owners(&alone).is_empty(), "{alone:?}");
    assert_eq!(
        metric(&stranger.metrics_text(), "bunting_shards_owned"),
        0,
        "{}",
        stranger.metrics_text()
    );
    assert!(
        !stranger.log().contains("placed a new shard map"),
        "{}",
        stranger.log()
    );

    // `bunting cluster drain node-3`: its shards move to the others; it can then stop cleanly.
    let drain = bunting(&["cluster", "drain", "node-3", "--node", &n1.grpc.to_string()]);
    assert!(
        drain.status.success(),
        "{}{}",
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr)
    );
    let drained = agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2"],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        drained.is_some_and(|e| e > epoch),
        "node-3 still owns shards after draining"
    );

    // `bunting cluster undrain node-3` (asked of another node, so it travels the cluster port):
    // shards come back to it; undraining a node that is not draining is refused, naming why.
    let out = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let grpc = n1.grpc.to_string();
    let undrain = bunting(&["cluster", "undrain", "node-3", "--node", &grpc]);
    assert!(undrain.status.success(), "{}", out(&undrain));
    assert!(
        out(&undrain).contains("undrained node-3"),
        "{}",
        out(&undrain)
    );
    let back = agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        back.is_some_and(|e| Some(e) > drained),
        "node-3 owns no shards after its undrain"
    );
    let status = bunting(&["cluster", "status", "--json", "--node", &grpc]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let node_3 = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "node-3")
        .unwrap();
    assert_eq!(node_3["state"], "up", "{status}");
    assert!(node_3["shards"].as_u64().unwrap() > 0, "{status}");
    for (node_id, says) in [
        ("node-3", "is not draining"),
        ("node-1", "is not draining"),
        ("no-such-node", "not a known cluster member"),
    ] {
        let refused = bunting(&["cluster", "undrain", node_id, "--node", &grpc]);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{node_id}: {}",
            out(&refused)
        );
        assert!(out(&refused).contains(says), "{node_id}: {}", out(&refused));
    }
    let drain = bunting(&["cluster", "drain", "node-3", "--node", &grpc]);
    assert!(drain.status.success(), "{}", out(&drain));
    let drained = agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2"],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        drained.is_some(),
        "node-3 still owns shards after draining again"
    );
    assert!(n3.stop(), "node-3 did not stop gracefully:\n{}", n3.log());
    let after = agreement(&[&n1, &n2], &["node-1", "node-2"], Duration::from_secs(10)).await;
    assert!(after.is_some(), "the survivors disagree after node-3 left");
    let unknown = bunting(&[
        "cluster",
        "drain",
        "no-such-node",
        "--node",
        &n1.grpc.to_string(),
    ]);
    assert!(
        !unknown.status.success(),
        "draining an unknown node must fail"
    );
}

/// The value of one Prometheus sample line (`name{labels} value`), 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The name the TLS test's members carry, set in `[cluster.tls] name` (not the default, so the
/// setting is exercised).
const TLS_NAME: &str = "bunting-routing-test";

/// A certificate authority made for one test.
struct Ca {
    label: &'static str,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(label: &'static str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("{label} CA"));
        params.distinguished_name = name;
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { label, issuer }
    }

    /// Signs a certificate for `cert_name` for node `id`, writes it, its key and this CA to `dir`,
    /// and returns the `[cluster.tls]` section using them (checking peers against [`TLS_NAME`]).
    fn member_tls(&self, dir: &Path, id: &str, cert_name: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![cert_name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let write = |file: &str, pem: String| {
            let path = dir.join(format!("{id}-{file}"));
            std::fs::write(&path, pem).unwrap();
            common::toml_string(&path)
        };
        format!(
            "[cluster.tls]\ncert = {}\nkey = {}\nca = {}\nname = \"{TLS_NAME}\"\n",
            write("cert.pem", cert.pem()),
            write("key.pem", key.serialize_pem()),
            write(&format!("{}-ca.pem", self.label), self.issuer.pem()),
        )
    }
}

/// The ids of every member `node` knows (up or not), sorted.
async fn members(node: &ClusterNode) -> Vec<String> {
    let mut client = common::connect_with(ClusterAdminClient::new, node.url())
        .await
        .unwrap();
    let status = client.status(ClusterStatusRequest {}).await.unwrap();
    let mut ids: Vec<String> = status
        .into_inner()
        .members
        .into_iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_members_form_a_cluster_and_outsiders_stay_out() {
    let dir = common::scratch_dir("cluster-tls");
    let flags = file_flags(&flag_file(&dir));
    let cluster_ca = Ca::new("cluster");
    let rogue_ca = Ca::new("rogue");
    let mut n1 = ClusterNode::new(&dir, "node-1", &flags, &[])
        .extra_config(&cluster_ca.member_tls(&dir, "node-1", TLS_NAME));
    let mut n2 = ClusterNode::new(&dir, "node-2", &flags, &[n1.cluster])
        .extra_config(&cluster_ca.member_tls(&dir, "node-2", TLS_NAME));
    n1.start();
    n2.start();
    let epoch = agreement(&[&n1, &n2], &["node-1", "node-2"], Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the TLS members did not agree:\n{}\n{}", n1.log(), n2.log()));
    assert_eq!(members(&n1).await, ["node-1", "node-2"]);
    assert_eq!(members(&n2).await, ["node-1", "node-2"]);

    // Requests sent to the node that does not own the key are forwarded over the TLS sessions
    // and answered by the owner (counted as forwarded by the sender and received by the owner,
    // never as a local fallback).
    let map = topology(&n1).await.unwrap();
    let owner_of = |key: &str| {
        let shard = bunting_keyspace::shard_of(key, map.shard_count);
        map.nodes[map.shard_owner[shard as usize] as usize]
            .id
            .clone()
    };
    let mut sent = [0u64; 2];
    for i in 0..20 {
        let key = format!("user-{i}");
        let owner = owner_of(&key);
        let (via, index) = if owner == "node-1" {
            (&n2, 1)
        } else {
            (&n1, 0)
        };
        let answer = resolve(via, &key).await;
        assert_eq!(
            answer.get_ref().value,
            Some(true),
            "{key} through {}",
            via.id
        );
        assert_eq!(header(&answer, "bunting-owner"), Some(owner));
        assert_eq!(header(&answer, "bunting-epoch"), Some(epoch.to_string()));
        sent[index] += 1;
    }
    assert!(
        sent.iter().all(|&n| n > 0),
        "both directions carry forwards: {sent:?}"
    );
    for (node, other, count) in [(&n1, &n2, sent[0]), (&n2, &n1, sent[1])] {
        let text = node.metrics_text();
        assert_eq!(
            metric(&text, "bunting_forwards_total{outcome=\"forwarded\"}"),
            count,
            "{} forwarded every request for the other's keys",
            node.id
        );
        assert_eq!(
            metric(&text, "bunting_forwards_total{outcome=\"fallback\"}"),
            0,
            "{} fell back to evaluating locally",
            node.id
        );
        assert_eq!(
            metric(&other.metrics_text(), "bunting_forwards_received_total"),
            count,
            "{} received every forward",
            other.id
        );
    }

    // The right cookie is not enough: a node without TLS, one whose certificate another CA
    // signed, and one with the cluster CA's certificate for another name all seed to node-1 and
    // are refused. The members' map and membership do not change, and nobody crashes.
    let mut plain = ClusterNode::new(&dir, "plain", &flags, &[n1.cluster]);
    let mut rogue = ClusterNode::new(&dir, "rogue", &flags, &[n1.cluster])
        .extra_config(&rogue_ca.member_tls(&dir, "rogue", TLS_NAME));
    let mut misnamed = ClusterNode::new(&dir, "misnamed", &flags, &[n1.cluster])
        .extra_config(&cluster_ca.member_tls(&dir, "misnamed", "someone-else"));
    plain.start();
    rogue.start();
    misnamed.start();
    // Each outsider dials node-1 several times (redial backoff is capped at 1 s) in this while.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = agreement(&[&n1, &n2], &["node-1", "node-2"], Duration::from_secs(5)).await;
    assert_eq!(
        still,
        Some(epoch),
        "an outsider changed the map:\n{}\n{}",
        status_text(&n1).await,
        status_text(&n2).await
    );
    for node in [&n1, &n2] {
        assert_eq!(
            members(node).await,
            ["node-1", "node-2"],
            "an outsider was admitted:\n{}",
            node.log()
        );
    }
    for outsider in [&plain, &rogue, &misnamed] {
        assert_eq!(
            members(outsider).await,
            std::slice::from_ref(&outsider.id),
            "{} joined someone:\n{}",
            outsider.id,
            outsider.log()
        );
    }
    // Refused for the reasons expected, not because nobody listened.
    assert!(
        n1.log().contains("TLS handshake failed"),
        "node-1 refused no handshake:\n{}",
        n1.log()
    );
    assert!(
        rogue.log().contains("UnknownIssuer"),
        "the rogue node did not see node-1's certificate refused:\n{}",
        rogue.log()
    );
    assert!(
        misnamed.log().contains("BadCertificate"),
        "node-1 did not refuse the misnamed node's certificate:\n{}",
        misnamed.log()
    );
    for node in [&mut n1, &mut n2, &mut plain, &mut rogue, &mut misnamed] {
        assert!(node.is_running(), "{} exited:\n{}", node.id, node.log());
    }
    // The members still serve and forward to each other.
    let key = (0..)
        .map(|i| format!("late-{i}"))
        .find(|k| owner_of(k) == "node-2")
        .unwrap();
    let answer = resolve(&n1, &key).await;
    assert_eq!(answer.get_ref().value, Some(true));
    assert_eq!(header(&answer, "bunting-owner").as_deref(), Some("node-2"));
    assert_eq!(
        metric(
            &n1.metrics_text(),
            "bunting_forwards_total{outcome=\"forwarded\"}"
        ),
        sent[0] + 1
    );
}

/// Issue 11, "secrets never leave": a node on a password-protected Redis and a PostgreSQL URL
/// with a password, in a cluster with a cookie, is driven through the paths that name its
/// dependencies (PostgreSQL unreachable at start-up and on every retry, Redis followed and then
/// lost, malformed URLs refused at start-up). No secret may appear in its log, its `/metrics`,
/// an RPC answer or `bunting cluster status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_a_metric_or_an_answer() {
    use bunting_proto::bunting::v1::ListFlagSetsRequest;
    use bunting_proto::bunting::v1::admin_client::AdminClient;
    use common::cluster::postgres_flags;

    const REDIS_SECRET: &str = "s3cr3t-redis";
    const PG_SECRET: &str = "s3cr3t-pg";
    const COOKIE_SECRET: &str = "s3cr3t-cookie";
    const WRONG_SECRET: &str = "s3cr3t-wrong";
    let secrets = [REDIS_SECRET, PG_SECRET, COOKIE_SECRET, WRONG_SECRET];
    let leaks = |what: &str, text: &str| {
        for secret in secrets {
            assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
        }
    };
    let dir = common::scratch_dir("secrets");

    let redis_port = common::spare_port(0);
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--requirepass", REDIS_SECRET])
        .arg("--dir")
        .arg(&dir)
        .args(["--logfile", "redis.log"]);
    let mut redis = common::Guarded::spawn(command, "redis-server");
    common::wait_until(
        "redis accepts connections",
        Duration::from_secs(20),
        || async { TcpStream::connect(("127.0.0.1", redis_port)).is_ok() },
    )
    .await;

    // Nothing listens on the PostgreSQL port: the node starts on the shared tier and retries.
    let pg_port = common::spare_port(0);
    let pg_url = format!(
        "postgres://bunting_user:{PG_SECRET}@127.0.0.1:{pg_port}/test?sslpassword={PG_SECRET}"
    );
    let redis_url = format!("redis://:{REDIS_SECRET}@127.0.0.1:{redis_port}");
    let mut node = ClusterNode::new(&dir, "node-1", &postgres_flags(&pg_url), &[])
        .with_cookie(COOKIE_SECRET)
        .extra_config(&format!(
            "[shared_tier]\nkind = \"redis\"\nurl = \"{redis_url}\"\n\
             failure_threshold = 1\nopen_for_ms = 200\ntimeout_ms = 500\n"
        ));
    node.start();
    common::wait_until(
        "the node follows the shared tier",
        Duration::from_secs(20),
        || async {
            node.log()
                .contains("following shared tier change notifications")
        },
    )
    .await;

    let unavailable = common::connect_with(AdminClient::new, node.url())
        .await
        .unwrap()
        .list_flag_sets(ListFlagSetsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        unavailable.code(),
        tonic::Code::Unavailable,
        "{unavailable:?}"
    );
    leaks("an Admin UNAVAILABLE answer", &format!("{unavailable:?}"));

    // A node with the wrong Redis password: Redis refuses it (the authentication failure path).
    let mut refused = ClusterNode::new(&dir, "node-wrong", &postgres_flags(&pg_url), &[])
        .with_cookie(COOKIE_SECRET)
        .extra_config(&format!(
            "[shared_tier]\nkind = \"redis\"\nurl = \"redis://:{WRONG_SECRET}@127.0.0.1:{redis_port}\"\n\
             failure_threshold = 1\nopen_for_ms = 200\ntimeout_ms = 500\n"
        ));
    refused.start();
    common::wait_until(
        "the node with the wrong password opens its breaker",
        Duration::from_secs(20),
        || async { refused.log().contains("circuit breaker open") },
    )
    .await;
    leaks("/metrics with the wrong password", &refused.metrics_text());
    leaks("the log with the wrong password", &refused.log());
    drop(refused);

    // Redis goes away: the subscription is lost and reconnected, calls fail, the breaker opens.
    redis.kill_hard();
    common::wait_until(
        "the node notices Redis is gone",
        Duration::from_secs(20),
        || async {
            node.log()
                .contains("lost the shared tier change subscription")
        },
    )
    .await;
    let _ = common::connect_with(AdminClient::new, node.url())
        .await
        .unwrap()
        .list_flag_sets(ListFlagSetsRequest::default())
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let metrics = node.metrics_text();
    assert!(
        metrics.contains(&format!("endpoint=\"redis://***@127.0.0.1:{redis_port}\"")),
        "the shared tier's metrics name it, redacted:\n{metrics}"
    );
    leaks("/metrics", &metrics);
    leaks("Topology", &format!("{:?}", topology(&node).await));
    leaks("ClusterAdmin/Status", &status_text(&node).await);
    let status = bunting(&["cluster", "status", "--node", &node.grpc.to_string()]);
    leaks(
        "bunting cluster status",
        &format!(
            "{}{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        ),
    );
    leaks("the node's log", &node.log());

    // URLs that do not parse are refused at start-up without being printed.
    for (name, flags, tier) in [
        (
            "bad-postgres",
            postgres_flags(&format!(
                "postgres://bunting_user:{PG_SECRET}@127.0.0.1:notaport/test"
            )),
            String::new(),
        ),
        (
            "bad-redis",
            postgres_flags(&pg_url),
            format!(
                "[shared_tier]\nkind = \"redis\"\nurl = \"redis://:{REDIS_SECRET}@127.0.0.1:99999\"\n"
            ),
        ),
    ] {
        let (grpc, metrics) = common::free_ports();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "grpc_addr = \"127.0.0.1:{grpc}\"\nmetrics_addr = \"127.0.0.1:{metrics}\"\nhttp_addr = \"127.0.0.1:0\"\n\
                 [flags]\n{flags}\n{tier}"
            ),
        )
        .unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_bunting"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env("BUNTING_SHARED_TIER_KEY", common::redis::TIER_KEY)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut process = common::Guarded::spawn(command, name);
        let status = process.wait_for(Duration::from_secs(20));
        let output = common::read_log(&log_path);
        assert!(
            status.is_some_and(|s| !s.success()),
            "{name}: the node should refuse its config:\n{output}"
        );
        leaks(name, &output);
    }
}
