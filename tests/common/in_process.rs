//! A node in the test's own process: `bunting_node::server::bind` on free ports, served on the test's
//! runtime until `stop`, which runs the real shutdown path and waits for it to finish cleanly.

use std::net::SocketAddr;
use std::time::Duration;

use bunting_node::config::Config;
use bunting_node::server::{BoundServer, ServerError, Stores};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Channel;

/// `config` as tests run it: [`super::TEST_TOKEN`] as its bootstrap token unless it has one, and
/// a free HTTP port unless the test chose one (tests run side by side: the fixed default port
/// would collide).
fn test_config(mut config: Config) -> Config {
    if config.auth.bootstrap_token.is_none() {
        config.auth.bootstrap_token = Some(super::test_token());
    }
    if config.http_addr == Config::default().http_addr {
        config.http_addr.set_port(0);
    }
    config
}

/// How long a node may take to shut down; it bounds a broken shutdown, it is not a speed check.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(20);

pub struct TestNode {
    pub grpc: SocketAddr,
    /// The admin listener, when the config sets `admin_addr`.
    pub admin: Option<SocketAddr>,
    pub metrics: SocketAddr,
    /// The HTTP edge (a free port unless the test chose one; `None` when it is disabled).
    pub http: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    served: JoinHandle<Result<(), ServerError>>,
}

impl TestNode {
    /// Starts `config` (see [`test_config`]).
    pub async fn start(config: Config) -> TestNode {
        let bound = bunting_node::server::bind(test_config(config))
            .await
            .unwrap();
        TestNode::serve(bound)
    }

    /// Starts `config` on `stores` (in memory, usually) instead of the stores it names.
    pub async fn start_with(config: Config, stores: Stores) -> TestNode {
        let bound = bunting_node::server::bind_with(test_config(config), stores)
            .await
            .unwrap();
        TestNode::serve(bound)
    }

    fn serve(bound: BoundServer) -> TestNode {
        let (grpc, admin, metrics, http) = (
            bound.grpc_addr(),
            bound.admin_addr(),
            bound.metrics_addr(),
            bound.http_addr(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        TestNode {
            grpc,
            admin,
            metrics,
            http,
            stop,
            served,
        }
    }

    /// A channel sending [`super::TEST_TOKEN`].
    pub async fn channel(&self) -> Channel {
        super::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// Stops the node with its shutdown future and waits for it to finish cleanly.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(SHUTDOWN_PATIENCE, self.served)
            .await
            .expect("the node did not shut down")
            .unwrap()
            .unwrap();
    }

    /// The Prometheus text from the node's metrics endpoint.
    pub async fn scrape(&self) -> String {
        let mut socket = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        socket.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }
}
