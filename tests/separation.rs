//! Issue 11, "Separation": the admin listener (`admin_addr`) serves administration only and the
//! gRPC port refuses it; client certificates on the gRPC port (`[tls] client_ca`) name the caller
//! through `[[auth.certificates]]`. Nodes in-process (`server::bind`); the tests that write flags
//! need PostgreSQL at `BUNTING_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bunting_node::config::{CertificateGrant, Config, FlagSourceConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::cluster_admin_client::ClusterAdminClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::bunting::v1::tokens_client::TokensClient;
use bunting_proto::flagd::evaluation::v1;
use bunting_stores::file::BrokenFlags;
use serde_json::json;
use tonic::{Code, Status};

use common::in_process::TestNode;
use common::postgres::TestDb;
use common::{Channel, TEST_TOKEN, scratch_dir};

fn flags_file(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("flags.json");
    std::fs::write(
        &file,
        json!({"flags": {"colour": {"state": "ENABLED", "variants": {"red": "red", "blue": "blue"},
                                    "defaultVariant": "red"}}})
        .to_string(),
    )
    .unwrap();
    file
}

fn file_config(file: &Path) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
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

fn postgres_config(db: &TestDb) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        flags: FlagSourceConfig::Postgres {
            url: db.url.clone().into(),
            version_check: Duration::from_secs(3600),
        },
        ..Config::default()
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    common::connect(format!("http://{addr}")).await.unwrap()
}

async fn resolve(ch: Channel, key: &str) -> Result<String, Status> {
    v1::service_client::ServiceClient::new(ch)
        .resolve_string(v1::ResolveStringRequest {
            flag_key: key.into(),
            context: None,
        })
        .await
        .map(|r| r.into_inner().value)
}

/// One call of each administration service, and Track, on `ch`: the status codes they got.
async fn admin_calls(ch: Channel) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut admin = AdminClient::new(ch.clone());
    let mut experiments = ExperimentsClient::new(ch.clone());
    let mut cluster = ClusterAdminClient::new(ch.clone());
    let mut tokens = TokensClient::new(ch);
    vec![
        (
            "Admin/ListFlagSets",
            code(
                admin
                    .list_flag_sets(pb::ListFlagSetsRequest {})
                    .await
                    .map(drop),
            ),
        ),
        (
            "Experiments/ListExperiments",
            code(
                experiments
                    .list_experiments(pb::ListExperimentsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "ClusterAdmin/Status",
            code(cluster.status(pb::ClusterStatusRequest {}).await.map(drop)),
        ),
        (
            "Tokens/ListTokens",
            code(tokens.list_tokens(pb::ListTokensRequest {}).await.map(drop)),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_serves_its_own_plane_and_refuses_the_other() {
    let dir = scratch_dir("separation-planes");
    let node = TestNode::start(file_config(&flags_file(&dir))).await;
    let admin = node.admin.expect("admin_addr was set");
    assert_ne!(admin, node.grpc);

    // The gRPC port: evaluation served, administration refused naming the admin listener.
    assert_eq!(
        resolve(node.channel().await, "colour").await.unwrap(),
        "red"
    );
    for (method, code) in admin_calls(node.channel().await).await {
        assert_eq!(code, Code::Unimplemented, "{method} on the gRPC port");
    }
    let refused = ClusterAdminClient::new(node.channel().await)
        .status(pb::ClusterStatusRequest {})
        .await
        .unwrap_err();
    assert!(
        refused.message().contains(&admin.to_string()),
        "{refused:?}"
    );
    // Track is client traffic: it reaches the Experiments service on the gRPC port (a file
    // node has no experiment store, so the service itself answers, not the plane check).
    let track = ExperimentsClient::new(node.channel().await)
        .track(pb::TrackRequest {
            targeting_key: "u1".into(),
            event: "purchase".into(),
            ..Default::default()
        })
        .await;
    assert_ne!(
        track.as_ref().err().map(Status::code),
        Some(Code::Unimplemented),
        "{track:?}"
    );

    // The admin listener: every administration service reaches its service (a file node has no
    // admin store, token store or cluster: FAILED_PRECONDITION from the service itself), and
    // evaluation is refused naming the gRPC port.
    for (method, code) in admin_calls(channel(admin).await).await {
        assert_eq!(
            code,
            Code::FailedPrecondition,
            "{method} on the admin listener"
        );
    }
    let refused = resolve(channel(admin).await, "colour").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert!(
        refused.message().contains(&node.grpc.to_string()),
        "{refused:?}"
    );
    // Tokens are still required there.
    let anonymous = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = ClusterAdminClient::new(anonymous)
        .status(pb::ClusterStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    node.stop().await;

    // Without admin_addr one port serves everything, as before.
    let mut config = file_config(&flags_file(&dir));
    config.admin_addr = None;
    let node = TestNode::start(config).await;
    assert!(node.admin.is_none());
    assert_eq!(
        resolve(node.channel().await, "colour").await.unwrap(),
        "red"
    );
    for (method, code) in admin_calls(node.channel().await).await {
        assert_eq!(code, Code::FailedPrecondition, "{method} on the only port");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_writes_go_through_the_admin_listener_and_the_grpc_port_changes_nothing() {
    let db = TestDb::create().await;
    let node = TestNode::start(postgres_config(&db)).await;
    let admin = node.admin.expect("admin_addr was set");
    let create = |id: &str| pb::CreateFlagSetRequest {
        id: id.into(),
        actor: "ada".into(),
        ..Default::default()
    };

    let refused = AdminClient::new(node.channel().await)
        .create_flag_set(create("public"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    let mut writer = AdminClient::new(channel(admin).await);
    writer.create_flag_set(create("shop")).await.unwrap();
    writer
        .create_flag(pb::CreateFlagRequest {
            flag_set_id: "shop".into(),
            key: "colour".into(),
            definition: json!({"state": "ENABLED", "variants": {"red": "red", "blue": "blue"},
                               "defaultVariant": "blue"})
            .to_string(),
            expected_flag_set_version: 0,
            actor: "ada".into(),
        })
        .await
        .unwrap();
    // Read back: only the set written through the admin listener exists.
    let sets: Vec<String> = writer
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .flag_sets
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(sets, ["shop"]);

    // The CLI reaches administration with --node <admin_addr>, and is refused on the gRPC port
    // with the admin listener named.
    let dir = scratch_dir("separation-cli");
    let file = dir.join("push.json");
    std::fs::write(
        &file,
        json!({"flags": {"size": {"state": "ENABLED", "variants": {"s": "s", "l": "l"},
                                  "defaultVariant": "l"}}})
        .to_string(),
    )
    .unwrap();
    let push = |node_addr: SocketAddr| {
        Command::new(env!("CARGO_BIN_EXE_bunting"))
            .args(["flags", "push"])
            .arg(&file)
            .args(["--set", "shop", "--node", &node_addr.to_string()])
            .env("BUNTING_TOKEN", TEST_TOKEN)
            .output()
            .unwrap()
    };
    let refused = push(node.grpc);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains(&admin.to_string()), "{stderr}");
    let pushed = push(admin);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let flags: Vec<String> = writer
        .list_flags(pb::ListFlagsRequest {
            flag_set_id: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flags
        .into_iter()
        .map(|f| f.key)
        .collect();
    assert!(flags.contains(&"size".to_owned()), "{flags:?}");

    // Evaluation of what was written is served on the gRPC port.
    let served = common::eventually("the new flag served", Duration::from_secs(10), || {
        let ch = node.channel();
        async move {
            let mut request = tonic::Request::new(v1::ResolveStringRequest {
                flag_key: "colour".into(),
                context: None,
            });
            request
                .metadata_mut()
                .insert("flagd-selector", "shop".parse().unwrap());
            v1::service_client::ServiceClient::new(ch.await)
                .resolve_string(request)
                .await
                .ok()
                .map(|r| r.into_inner().value)
        }
    })
    .await;
    assert_eq!(served, "blue");
    node.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Client certificates
// ---------------------------------------------------------------------------------------------

/// A node certificate for `localhost`, a clients' CA, and client certificates it signs.
struct Pki {
    dir: std::path::PathBuf,
    server_pem: String,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("node.crt"), server.cert.pem()).unwrap();
        std::fs::write(dir.join("node.key"), server.signing_key.serialize_pem()).unwrap();
        let (ca, ca_pem) = Pki::ca("bunting test clients CA");
        std::fs::write(dir.join("clients-ca.pem"), ca_pem).unwrap();
        Pki {
            dir: dir.to_owned(),
            server_pem: server.cert.pem(),
            ca,
        }
    }

    fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        (rcgen::Issuer::new(params, key), pem)
    }

    /// A client certificate with subject `CN=<cn>` signed by `issuer`: (cert PEM, key PEM).
    fn client(cn: &str, issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn tls(&self) -> bunting_node::config::TlsConfig {
        bunting_node::config::TlsConfig {
            cert: self.dir.join("node.crt"),
            key: self.dir.join("node.key"),
            client_ca: Some(self.dir.join("clients-ca.pem")),
        }
    }

    /// A TLS channel to `addr` presenting `identity` (cert PEM, key PEM), if any; `token` sent as
    /// a bearer token when given. `Err` when the connection (its handshake) is refused.
    async fn channel(
        &self,
        addr: SocketAddr,
        identity: Option<&(String, String)>,
        token: Option<&str>,
    ) -> Result<bunting_node::auth::client::AuthChannel, tonic::transport::Error> {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.server_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(bunting_node::auth::client::Bearer::new(token)
            .unwrap()
            .wrap(channel))
    }
}

fn grant(subject: &str, scopes: &[&str], sets: Option<&[&str]>) -> CertificateGrant {
    CertificateGrant {
        subject: subject.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        flag_sets: sets.map(|s| s.iter().map(|x| (*x).to_owned()).collect()),
    }
}

/// `Ok(value)`, the status a resolve got, or `Unavailable` when the connection was refused.
async fn resolve_over(
    channel: Result<bunting_node::auth::client::AuthChannel, tonic::transport::Error>,
) -> Result<String, Status> {
    match channel {
        Ok(ch) => resolve(ch, "colour").await,
        Err(e) => Err(Status::unavailable(format!("connection refused: {e}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_caller_and_only_mapped_subjects_get_rights() {
    let dir = scratch_dir("separation-certs");
    let pki = Pki::new(&dir);
    let mut config = file_config(&flags_file(&dir));
    config.tls = Some(pki.tls());
    // Closed, so that the certificate is what lets a caller evaluate.
    config.auth.open_evaluation = Some(false);
    config.auth.certificates = vec![
        grant("CN=reader", &["evaluate"], None),
        grant("CN=ops", &["cluster:read"], None),
    ];
    let node = TestNode::start(config).await;
    let admin = node.admin.unwrap();
    let reader = Pki::client("reader", &pki.ca);
    let ops = Pki::client("ops", &pki.ca);
    let stranger = Pki::client("stranger", &pki.ca);
    let (rogue_ca, _) = Pki::ca("another CA");
    let rogue = Pki::client("reader", &rogue_ca);

    // A mapped subject may do what its scopes allow, and nothing else.
    let got = resolve_over(pki.channel(node.grpc, Some(&reader), None).await).await;
    assert_eq!(got.unwrap(), "red");
    let refused = resolve_over(pki.channel(node.grpc, Some(&ops), None).await)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("CN=ops"), "{refused:?}");
    let status = |ch| async move {
        ClusterAdminClient::new(ch)
            .status(pb::ClusterStatusRequest {})
            .await
            .map(drop)
            .map_err(|s| s.code())
    };
    // TLS and client certificates on the admin listener too; cluster:read reaches the service
    // (a single node answers FAILED_PRECONDITION itself), evaluate does not.
    let ops_admin = pki.channel(admin, Some(&ops), None).await.unwrap();
    assert_eq!(status(ops_admin).await, Err(Code::FailedPrecondition));
    let reader_admin = pki.channel(admin, Some(&reader), None).await.unwrap();
    assert_eq!(status(reader_admin).await, Err(Code::PermissionDenied));

    // An unmapped subject has no rights of its own, and is told which subject it presented.
    let refused = resolve_over(pki.channel(node.grpc, Some(&stranger), None).await)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("CN=stranger"), "{refused:?}");
    // A token, when sent, is what is checked.
    let got = resolve_over(
        pki.channel(node.grpc, Some(&stranger), Some(TEST_TOKEN))
            .await,
    )
    .await;
    assert_eq!(got.unwrap(), "red");

    // No certificate, or one from another CA: the handshake is refused, so neither the token
    // nor anything else is ever looked at.
    for (who, identity) in [("no certificate", None), ("another CA", Some(&rogue))] {
        let refused = resolve_over(pki.channel(node.grpc, identity, Some(TEST_TOKEN)).await)
            .await
            .unwrap_err();
        assert!(
            !matches!(
                refused.code(),
                Code::PermissionDenied | Code::Unauthenticated | Code::Ok
            ),
            "{who}: {refused:?}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_writes_within_its_scopes_and_sets_and_the_audit_names_its_subject() {
    let db = TestDb::create().await;
    let dir = scratch_dir("separation-cert-audit");
    let pki = Pki::new(&dir);
    let mut config = postgres_config(&db);
    config.tls = Some(pki.tls());
    config.auth.certificates = vec![grant(
        "CN=deployer",
        &["flags:write", "flags:read"],
        Some(&["shop"]),
    )];
    let node = TestNode::start(config).await;
    let admin = node.admin.unwrap();
    let deployer = Pki::client("deployer", &pki.ca);
    let operator = Pki::client("operator", &pki.ca);
    let create = |id: &str| pb::CreateFlagSetRequest {
        id: id.into(),
        actor: "ada".into(),
        ..Default::default()
    };
    let mut as_deployer =
        AdminClient::new(pki.channel(admin, Some(&deployer), None).await.unwrap());
    // An operator: an unmapped certificate with the bootstrap token.
    let mut as_operator = AdminClient::new(
        pki.channel(admin, Some(&operator), Some(TEST_TOKEN))
            .await
            .unwrap(),
    );

    as_deployer.create_flag_set(create("shop")).await.unwrap();
    // Outside its sets, outside its scopes, and on the wrong listener: refused.
    let refused = as_deployer
        .create_flag_set(create("billing"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = TokensClient::new(pki.channel(admin, Some(&deployer), None).await.unwrap())
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = AdminClient::new(pki.channel(node.grpc, Some(&deployer), None).await.unwrap())
        .create_flag_set(create("public"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    // Without the token, the operator's certificate alone may do nothing.
    let refused = AdminClient::new(pki.channel(admin, Some(&operator), None).await.unwrap())
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Read back with the operator's token: only the deployer's set was written, and the audit
    // log names the certificate's subject as the writer (the caller's own note after it).
    let sets: Vec<String> = as_operator
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .flag_sets
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(sets, ["shop"]);
    let audit = as_operator
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let writers: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.flag_set_id.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(writers, [("shop", "cert:CN=deployer (ada)")]);
    node.stop().await;
}
