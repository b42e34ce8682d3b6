//! The accept loop when the process is out of file descriptors: `accept` fails with EMFILE, the
//! loop backs off instead of retrying at once (which is what tonic does with an error from its
//! incoming stream: a busy loop, as the listening socket stays readable), and it accepts the
//! waiting connections as soon as descriptors are free again.
//!
//! Its own test binary: it fills this process's descriptor table, which would break any test
//! running beside it.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bunting_node::edge::{self, ListenerLimits};
use tokio_stream::StreamExt;

fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_then_accepts() {
    const EXHAUSTED_FOR: Duration = Duration::from_millis(1_500);
    let metrics = bunting_node::metrics_http::handle().expect("the test's recorder");
    // A small table, so filling it is quick.
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(256);
    setrlimit(Resource::Nofile, limit).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Waiting in the backlog before the loop starts.
    let clients: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut filler = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        filler.push(file);
    }
    let mut incoming = edge::incoming(
        listener,
        ListenerLimits {
            name: "emfile-test",
            max_connections: 100,
            header_read_timeout: Duration::from_secs(10),
            first_bytes: 1,
            idle_timeout: None,
            tcp_keepalive: None,
        },
    );
    let nothing = tokio::time::timeout(EXHAUSTED_FOR, incoming.next()).await;
    assert!(
        nothing.is_err(),
        "nothing can be accepted without a descriptor"
    );
    drop(filler);
    for _ in &clients {
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(
            matches!(accepted, Ok(Some(Ok(_)))),
            "accepted once descriptors are free"
        );
    }
    let failed = sample(
        &metrics.render(),
        "bunting_accept_errors_total",
        &["listener=\"emfile-test\"", "kind=\"fd_exhausted\""],
    );
    // Backing off (5 ms doubling to 500 ms) fails about ten times in 1.5 s; retrying at once
    // fails hundreds of thousands of times.
    assert!(
        (1.0..=20.0).contains(&failed),
        "{failed} failed accepts in {EXHAUSTED_FOR:?}"
    );
    eprintln!(
        "out of descriptors for {EXHAUSTED_FOR:?}: {failed} failed accepts, then the 3 waiting connections accepted"
    );
}
