//! Real members on loopback, each its own process: forming a cluster, failure detection,
//! restarts, gossip, calls, notices, draining, TLS, and hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::{COOKIE, Node, PATIENCE, agreed_map, counts, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Not a test: the entry point of the member processes the tests start (`support::child`).
/// Returns at once in a normal run.
#[test]
fn member_process() {
    support::child::run_if_child();
}

/// `failure_timeout + heartbeat_interval` at the defaults the nodes run with.
const DETECTION_BOUND: Duration = Duration::from_millis(1250);
/// What a loaded, shared machine and the 50 ms polling may add on top of the bound.
const SCHEDULING_SLACK: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_then_a_killed_node_is_replaced_and_rejoins() {
    let mut a = Node::start("a", &[]).await;
    let mut b = Node::start("b", &[a.addr]).await;
    let mut c = Node::start("c", &[a.addr]).await;
    let before = agreed_map(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"]).await;
    assert_eq!(before.coordinator, "a", "the smallest id coordinates");
    assert_eq!(before.owners.len(), 256);
    let status = a.status().await;
    assert!(
        status.members.values().all(|m| m.state == "Up"),
        "{status:?}"
    );
    assert_eq!(status.members.values().map(|m| m.shards).sum::<u32>(), 256);
    let old_c = status.members["c"].incarnation;

    let killed = Instant::now();
    c.kill().await;
    let after = agreed_map(&mut [&mut a, &mut b], &["a", "b"]).await;
    let detected = killed.elapsed();
    println!("kill -9 to a map without the node on both survivors: {detected:?}");
    assert!(
        detected <= DETECTION_BOUND + SCHEDULING_SLACK,
        "took {detected:?}; the bound is {DETECTION_BOUND:?}"
    );
    assert!(after.epoch > before.epoch);
    for (shard, owner) in before.owners.iter().enumerate() {
        if owner != "c" {
            assert_eq!(
                &after.owners[shard], owner,
                "shard {shard} moved off a survivor"
            );
        }
    }
    assert_eq!(a.status().await.members["c"].state, "Down");

    let mut c = Node::start("c", &[b.addr]).await;
    let rejoined = agreed_map(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"]).await;
    assert!(rejoined.epoch > after.epoch);
    assert_eq!(
        rejoined.owners, before.owners,
        "same members, same placement"
    );
    let c_seen_by_a = &a.status().await.members["c"];
    assert!(
        c_seen_by_a.incarnation > old_c && c_seen_by_a.state == "Up",
        "{c_seen_by_a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_seeded_with_one_node_joins_all_and_takes_a_quarter() {
    let mut a = Node::start("a", &[]).await;
    let mut b = Node::start("b", &[a.addr]).await;
    let mut c = Node::start("c", &[b.addr]).await;
    let three = agreed_map(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"]).await;

    let mut d = Node::start("d", &[c.addr]).await;
    let four = agreed_map(&mut [&mut a, &mut b, &mut c, &mut d], &["a", "b", "c", "d"]).await;
    // d hears a's and b's heartbeats, which travel only over direct sessions: it dialled the
    // nodes it learned of through gossip.
    let seen_by_d = d.status().await;
    for peer in ["a", "b", "c"] {
        assert_eq!(seen_by_d.members[peer].state, "Up", "{seen_by_d:?}");
    }
    let moved: Vec<usize> = (0..256)
        .filter(|&s| three.owners[s] != four.owners[s])
        .collect();
    let fraction = moved.len() as f64 / 256.0;
    println!(
        "3 -> 4 nodes on a live cluster: {} of 256 shards moved ({fraction:.3}), {:?}",
        moved.len(),
        counts(&four)
    );
    assert!((0.15..0.35).contains(&fraction), "{fraction}");
    assert!(
        moved.iter().all(|&s| four.owners[s] == "d"),
        "every moved shard moved to d"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_detected_by_heartbeats_alone_and_recovers() {
    let mut a = Node::start("a", &[]).await;
    let mut b = Node::start("b", &[a.addr]).await;
    let mut c = Node::start("c", &[a.addr]).await;
    agreed_map(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"]).await;

    // SIGSTOP keeps c's sockets open: nothing but the missing heartbeats gives it away.
    let stopped = Instant::now();
    c.signal("-STOP");
    agreed_map(&mut [&mut a, &mut b], &["a", "b"]).await;
    let detected = stopped.elapsed();
    println!("SIGSTOP to a map without the node on both survivors: {detected:?}");
    assert!(
        detected <= DETECTION_BOUND + SCHEDULING_SLACK,
        "took {detected:?}"
    );
    assert_eq!(b.status().await.members["c"].state, "Down");

    c.signal("-CONT");
    agreed_map(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_round_trip_and_fail_fast_with_typed_errors() {
    let small = ["--max-payload", "1000"];
    let mut a = Node::start_with("a", &[], COOKIE, &small).await;
    let mut b = Node::start_with("b", &[a.addr], COOKIE, &small).await;
    agreed_map(&mut [&mut a, &mut b], &["a", "b"]).await;

    assert_eq!(
        a.cmd("call b 5000 hello there").await,
        "ok b got hello there from a"
    );
    assert_eq!(b.cmd("call a 5000 back").await, "ok a got back from b");
    assert_eq!(a.cmd("call a 5000 self").await, "ok a got self from a");
    assert!(a.cmd("call zz 5000 x").await.starts_with("err UnknownNode"));
    assert!(
        a.cmd("call b 300 sleep:3000")
            .await
            .starts_with("err Timeout")
    );
    let too_big = format!("call b 5000 {}", "x".repeat(1001));
    assert!(a.cmd(&too_big).await.starts_with("err TooLarge"));
    let answer = a.cmd("call b 5000 big:1001").await;
    assert!(
        answer.starts_with("err Remote") && answer.contains("payload limit"),
        "{answer}"
    );
    assert_eq!(
        a.cmd("call b 5000 still fine").await,
        "ok b got still fine from a"
    );

    b.kill().await;
    let asked = Instant::now();
    let answer = a.cmd("call b 10000 anyone").await;
    let took = asked.elapsed();
    println!("call to a killed node: {answer:?} after {took:?}");
    assert!(
        ["err NotConnected", "err Disconnected", "err NodeDown"]
            .iter()
            .any(|k| answer.starts_with(k)),
        "{answer}"
    );
    assert!(
        took < Duration::from_secs(5),
        "a dead node must not cost the 10 s timeout: {took:?}"
    );
    let answer = eventually("b known down", PATIENCE, async || {
        let answer = a.cmd("call b 10000 anyone").await;
        if answer.starts_with("err NodeDown") {
            Ok(answer)
        } else {
            Err(answer)
        }
    })
    .await;
    assert!(answer.contains("node b is down"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_every_live_peer() {
    let mut a = Node::start("a", &[]).await;
    let mut b = Node::start("b", &[a.addr]).await;
    let mut c = Node::start("c", &[a.addr]).await;
    agreed_map(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"]).await;

    assert_eq!(c.cmd("publish checkout 7").await, "ok");
    for node in [&mut a, &mut b] {
        let id = node.id.clone();
        let mut seen = String::new();
        eventually(&format!("{id} hears the notice"), PATIENCE, async || {
            seen.push_str(&node.cmd("notices").await);
            if seen.contains("c/checkout/7") {
                Ok(())
            } else {
                Err(seen.clone())
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_shards_away_and_a_clean_leave_is_not_a_timeout() {
    let mut a = Node::start("a", &[]).await;
    let mut b = Node::start("b", &[a.addr]).await;
    let mut c = Node::start("c", &[a.addr]).await;
    let before = agreed_map(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"]).await;

    // Asked on b, carried out by c, placed by a.
    let answer = b.cmd("drain c 10000").await;
    let epoch: u64 = answer
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("{answer}"))
        .parse()
        .unwrap();
    assert!(epoch > before.epoch);
    let drained = agreed_map(&mut [&mut a, &mut b, &mut c], &["a", "b"]).await;
    assert!(drained.epoch >= epoch);
    let seen_by_a = a.status().await;
    assert_eq!(seen_by_a.members["c"].state, "Draining");
    assert_eq!(seen_by_a.members["c"].shards, 0);
    assert_eq!(c.status().await.members["c"].state, "Draining");

    // A clean leave removes c at once; a timeout would first show it Down.
    c.shutdown().await;
    eventually("c gone from a's members", PATIENCE, async || {
        let status = a.status().await;
        match status.members.get("c") {
            None => Ok(()),
            Some(m) if m.state == "Down" => panic!("c timed out instead of leaving: {status:?}"),
            Some(_) => Err(status),
        }
    })
    .await;

    // Draining oneself, and draining someone unknown.
    let answer = b.cmd("drain b 10000").await;
    assert!(answer.starts_with("ok "), "{answer}");
    agreed_map(&mut [&mut a, &mut b], &["a"]).await;
    let answer = a.cmd("drain zz 1000").await;
    assert!(
        answer.contains("zz is not a known cluster member"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_is_refused_and_logged_and_the_cluster_carries_on() {
    let mut a = Node::start("a", &[]).await;
    let mut m = Node::start_with("m", &[a.addr], "some-other-cookie", &[]).await;
    eventually("a logs the refused connection", PATIENCE, async || {
        let log = a.stderr();
        if log.contains("closed before authenticating") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    // Each side warns once its refused handshake has gone unanswered for the connector's grace
    // (5 s), so not necessarily together.
    eventually("m logs the refused connection", PATIENCE, async || {
        let log = m.stderr();
        if log.contains("closed before authenticating") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;

    let mut b = Node::start("b", &[a.addr]).await;
    agreed_map(&mut [&mut a, &mut b], &["a", "b"]).await;
    assert!(!a.status().await.members.contains_key("m"));
    let alone = m.status().await;
    assert_eq!(alone.members.keys().collect::<Vec<_>>(), ["m"], "{alone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_protocol_version_is_refused_at_join_and_logged() {
    let mut a = Node::start("a", &[]).await;
    let mut m = Node::start_with("m", &[a.addr], COOKIE, &["--peer-protocol", "9"]).await;
    eventually("both sides log the other's version", PATIENCE, async || {
        let (theirs, ours) = (a.stderr(), m.stderr());
        if theirs.contains("speaks peer protocol version 9")
            && ours.contains("speaks peer protocol version 0")
        {
            Ok(())
        } else {
            Err(format!("a:\n{theirs}\nm:\n{ours}"))
        }
    })
    .await;
    let mut b = Node::start("b", &[a.addr]).await;
    agreed_map(&mut [&mut a, &mut b], &["a", "b"]).await;
    assert!(!a.status().await.members.contains_key("m"));
    let alone = m.status().await;
    assert_eq!(alone.members.keys().collect::<Vec<_>>(), ["m"], "{alone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_members_id_is_named_in_the_log() {
    let mut a = Node::start("a", &[]).await;
    let twin = Node::start("a", &[a.addr]).await;
    eventually("the twin logs the duplicate id", PATIENCE, async || {
        let log = twin.stderr();
        if log.contains("DUPLICATE NODE ID") && log.contains(&a.addr.to_string()) {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    // The first process carries on, alone.
    let alone = a.status().await;
    assert_eq!(alone.members.keys().collect::<Vec<_>>(), ["a"], "{alone:?}");
}

/// Opens a raw TCP connection to the cluster port, writes `bytes`, and waits for the node to
/// close it.
async fn closed_after_writing(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the node kept a connection open after {} bytes",
        bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_silent_connections_are_dropped_and_the_node_carries_on() {
    let mut a = Node::start_with("a", &[], COOKIE, &["--handshake-ms", "1000"]).await;

    let mut garbage = 5u64.to_be_bytes().to_vec();
    garbage.extend([0xff; 5]);
    closed_after_writing(a.addr, &garbage).await;
    // A length prefix of a terabyte must be refused before anything is allocated for it.
    let mut oversized = (1u64 << 40).to_be_bytes().to_vec();
    oversized.extend([0u8; 64]);
    closed_after_writing(a.addr, &oversized).await;
    closed_after_writing(a.addr, &u64::MAX.to_be_bytes()).await;
    // Says nothing at all: closed by the handshake timeout.
    closed_after_writing(a.addr, &[]).await;

    let mut b = Node::start("b", &[a.addr]).await;
    agreed_map(&mut [&mut a, &mut b], &["a", "b"]).await;
    assert_eq!(a.cmd("call b 5000 ok?").await, "ok b got ok? from a");
    assert!(
        a.stderr().contains("did not authenticate within"),
        "{}",
        a.stderr()
    );
}

mod tls {
    //! Mutual TLS on the cluster port, with certificates made here.

    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    };

    use super::*;

    /// A CA named `label` and one member certificate for `bunting-cluster` signed by it, as PEM
    /// files: [cert, key, ca].
    fn pki(dir: &Path, label: &str) -> [String; 3] {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("{label} CA"));
        ca_params.distinguished_name = name;
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["bunting-cluster".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let write = |name: &str, pem: String| {
            let path: PathBuf = dir.join(format!("{label}-{name}.pem"));
            std::fs::write(&path, pem).unwrap();
            path.display().to_string()
        };
        [
            write("cert", cert.pem()),
            write("key", key.serialize_pem()),
            write("ca", ca_cert.pem()),
        ]
    }

    fn flags(files: &[String; 3]) -> Vec<&str> {
        vec![
            "--tls-cert",
            &files[0],
            "--tls-key",
            &files[1],
            "--tls-ca",
            &files[2],
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_with_the_cluster_ca_form_a_cluster_and_others_are_refused() {
        let dir = std::env::temp_dir().join(format!("bunting-cluster-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster_pki = pki(&dir, "cluster");
        let rogue_pki = pki(&dir, "rogue");

        let mut a = Node::start_with("a", &[], COOKIE, &flags(&cluster_pki)).await;
        let mut b = Node::start_with("b", &[a.addr], COOKIE, &flags(&cluster_pki)).await;
        agreed_map(&mut [&mut a, &mut b], &["a", "b"]).await;
        assert_eq!(a.cmd("call b 5000 sealed").await, "ok b got sealed from a");

        // The right cookie is not enough: no TLS, or a certificate from another CA, is refused.
        let mut plain = Node::start("p", &[a.addr]).await;
        let mut rogue = Node::start_with("r", &[a.addr], COOKIE, &flags(&rogue_pki)).await;
        closed_after_writing(a.addr, b"not a TLS client hello").await;
        // Each outsider saw its own attempt fail before checking who is a member of what.
        for (outsider, evidence) in [
            (&plain, "closed before authenticating"),
            (&rogue, "UnknownIssuer"),
        ] {
            eventually(&format!("{} refused", outsider.id), PATIENCE, async || {
                let log = outsider.stderr();
                if log.contains(evidence) {
                    Ok(())
                } else {
                    Err(log)
                }
            })
            .await;
        }
        assert!(
            a.stderr().contains("TLS handshake failed"),
            "{}",
            a.stderr()
        );
        for outsider in [&mut plain, &mut rogue] {
            let alone = outsider.status().await;
            assert_eq!(alone.members.len(), 1, "{alone:?}");
        }
        let members = a.status().await.members;
        assert_eq!(
            members.keys().collect::<Vec<_>>(),
            ["a", "b"],
            "{members:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

mod hostile_peer {
    //! A peer that knows the cookie but sends Bunting garbage: a ractor_cluster node in this
    //! test process (the only test here that uses ractor in-process).

    use ractor::message::{BoxedDowncastErr, SerializedMessage};
    use ractor::rpc::CallResult;
    use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort, pg};
    use ractor_cluster::NodeServer;
    use ractor_cluster::node::NodeConnectionMode;

    use super::*;

    struct RawCall(Vec<u8>, RpcReplyPort<Vec<u8>>);

    impl ractor::Message for RawCall {
        fn serializable() -> bool {
            true
        }
        fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
            Ok(SerializedMessage::Call {
                variant: String::new(),
                args: self.0,
                reply: self.1,
                metadata: None,
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undecodable_frames_and_requests_are_logged_and_ignored() {
        let mut a = Node::start("a", &[]).await;
        let server = NodeServer::new(
            0,
            COOKIE.to_string(),
            "intruder".to_string(),
            "127.0.0.1".to_string(),
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
        let (server, _) = Actor::spawn(None, server, ()).await.unwrap();
        ractor_cluster::client_connect(&server, a.addr)
            .await
            .unwrap();
        let scope = "bunting.cluster".to_string();
        let cell: ActorCell = eventually("a's membership actor", PATIENCE, async || {
            pg::which_scoped_groups(&scope)
                .into_iter()
                .filter(|g| g.starts_with("member/a/"))
                .find_map(|g| pg::get_scoped_members(&scope, &g).into_iter().next())
                .ok_or(())
        })
        .await;

        let frames: ActorRef<Vec<u8>> = cell.clone().into();
        // Not protobuf; empty; a "heartbeat" (field 1) whose node id (field 1) is "a@b".
        for bytes in [
            vec![0xff; 32],
            vec![],
            vec![0x0a, 0x05, 0x0a, 0x03, b'a', b'@', b'b'],
        ] {
            frames.cast(bytes).unwrap();
        }
        let requests: ActorRef<RawCall> = cell.into();
        let answer = requests
            .call(
                |reply| RawCall(vec![0xff; 16], reply),
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        let CallResult::Success(answer) = answer else {
            panic!("no answer to a garbage request");
        };
        // An encoded `Response::Error`: field 3, length-delimited.
        assert_eq!(answer.first(), Some(&0x1a), "{answer:?}");
        assert!(String::from_utf8_lossy(&answer).contains("undecodable request"));

        eventually("a logs the garbage", PATIENCE, async || {
            let log = a.stderr();
            let frames = log.matches("dropping an undecodable cluster frame").count();
            if frames >= 3 && log.contains("refusing an undecodable cluster request") {
                Ok(())
            } else {
                Err(log)
            }
        })
        .await;
        let mut b = Node::start("b", &[a.addr]).await;
        agreed_map(&mut [&mut a, &mut b], &["a", "b"]).await;
        assert!(!a.status().await.members.contains_key("intruder"));
        server.stop(None);
    }
}
