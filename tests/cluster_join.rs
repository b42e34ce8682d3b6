//! Refusals at join on real `bunting serve` processes sharing one PostgreSQL database: a second
//! process started with a member's node id is refused and exits naming the id, and a healthy
//! start of three nodes logs no warning (simultaneous dials between members are expected and
//! logged at debug), so the warnings that remain mean something.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::cluster::{ClusterNode, agreement, postgres_flags};
use common::postgres::TestDb;

/// The lines of a log at WARN or ERROR.
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_start_logs_no_warning_and_a_second_process_with_a_members_id_is_refused() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("cluster-join");
    let flags = postgres_flags(&db.url);
    // Every node seeded with the other two, as in cluster-config/three-node/, and started one
    // right after the other: each dials peers that are not up yet, and pairs dial each other
    // at the same moment.
    let n1 = ClusterNode::new(&dir, "node-1", &flags, &[]);
    let n2 = ClusterNode::new(&dir, "node-2", &flags, &[]);
    let n3 = ClusterNode::new(&dir, "node-3", &flags, &[]);
    let (c1, c2, c3) = (n1.cluster, n2.cluster, n3.cluster);
    let mut n1 = n1.with_seeds(&[c2, c3]);
    let mut n2 = n2.with_seeds(&[c1, c3]);
    let mut n3 = n3.with_seeds(&[c1, c2]);
    n1.start();
    n2.start();
    n3.start();
    let epoch = agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        epoch.is_some(),
        "no agreement:\n{}\n{}\n{}",
        n1.log(),
        n2.log(),
        n3.log()
    );
    // A refused handshake whose peer never connects is warned about 5 s after it closed (the
    // connector's grace): wait past that, so a warning still to come is in the logs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for node in [&n1, &n2, &n3] {
        let log = node.log();
        assert!(
            warnings(&log).is_empty(),
            "{} warned during a healthy start:\n{}",
            node.id,
            warnings(&log).join("\n")
        );
    }

    // A second process with node-2's id, on the same database, seeded like node-3: refused
    // before it binds a port, naming the id, with a non-zero exit.
    // (Its own directory: a node's config and log are named after its id.)
    let twin_dir = common::scratch_dir("cluster-join-twin");
    let mut twin = ClusterNode::new(&twin_dir, "node-2", &flags, &[n1.cluster]);
    let status = twin.run_expecting_exit(Duration::from_secs(20));
    let log = twin.log();
    let status = status.unwrap_or_else(|| panic!("the twin kept running:\n{log}"));
    assert!(!status.success(), "the twin exited successfully:\n{log}");
    assert!(
        log.contains("node id \"node-2\" is already in use") && log.contains("bunting node node-2"),
        "the refusal does not name the id and its holder:\n{log}"
    );
    // The cluster did not notice: same members, same map, no warnings.
    assert_eq!(
        agreement(
            &[&n1, &n2, &n3],
            &["node-1", "node-2", "node-3"],
            Duration::from_secs(5)
        )
        .await,
        epoch
    );
    for node in [&n1, &n2, &n3] {
        assert!(warnings(&node.log()).is_empty(), "{}", node.log());
    }

    // The id is free once its holder is gone: node-2 stops, and a new process takes the id.
    assert!(n2.stop(), "node-2 did not stop cleanly:\n{}", n2.log());
    n2.start();
    assert!(
        agreement(
            &[&n1, &n2, &n3],
            &["node-1", "node-2", "node-3"],
            Duration::from_secs(20)
        )
        .await
        .is_some(),
        "node-2 did not get back in:\n{}",
        n2.log()
    );
}
