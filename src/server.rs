//! One Bunting node: its flag source, actor tree, gRPC services and metrics endpoint, started by
//! [`bind`] and run by [`BoundServer::serve`] until a shutdown future completes. The binary and the
//! integration tests use exactly this.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bunting_actors::{Node, NodeConfig, NodeError};
use bunting_engine::{CompileOptions, Dialect, FractionalMode};
use bunting_proto::bunting::v1::admin_server::AdminServer;
use bunting_proto::bunting::v1::evaluation_server::EvaluationServer;
use bunting_proto::flagd::evaluation::{v1, v2};
use bunting_proto::flagd::sync::v1::flag_sync_service_server::FlagSyncServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::{Config, FlagSourceConfig, FractionalConfig};
use crate::feed::{self, Feed};
use crate::metrics_http;
use crate::service::{Admin, BulkEvaluation, Evaluator, FlagdSync, FlagdV1, FlagdV2, Gate};
use crate::store::file::{FileOptions, FileSource, FileSourceError};
use crate::store::postgres::{PostgresSettings, PostgresStore};
use crate::store::{AdminStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    FlagFile(#[from] FileSourceError),
    #[error("flag store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A node whose sockets are bound and whose actor tree is running, not yet serving.
#[derive(Debug)]
pub struct BoundServer {
    config: Config,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
    node: Arc<Node>,
    feed: Feed,
    /// The admin API's store: the one the feed follows, `None` for a file source.
    store: Option<Arc<dyn AdminStore>>,
}

pub fn compile_options(config: &Config) -> CompileOptions {
    CompileOptions {
        dialect: Dialect::Flagd,
        fractional: match config.fractional {
            FractionalConfig::Cbor => FractionalMode::Cbor,
            FractionalConfig::String => FractionalMode::String,
            FractionalConfig::Legacy => FractionalMode::LegacyFloat,
        },
    }
}

/// Loads the flags, starts the actor tree and binds both ports (port 0 picks a free one).
pub async fn bind(config: Config) -> Result<BoundServer, ServerError> {
    metrics_http::handle();
    let options = compile_options(&config);
    let (catalog, feed, admin_store) = match &config.flags {
        FlagSourceConfig::File {
            path,
            set,
            broken_flags,
        } => {
            let source = FileSource::open(
                path.clone(),
                FileOptions {
                    compile: options,
                    broken_flags: *broken_flags,
                },
            )?;
            let catalog = feed::file_catalog(&source, set);
            tracing::info!(path = %path.display(), flags = source.current().flag_set.len(), "serving flags from a file");
            (
                catalog,
                Feed::File {
                    set: set.as_str().into(),
                    watch: source.watch(),
                },
                None,
            )
        }
        FlagSourceConfig::Postgres { url, version_check } => {
            let settings = PostgresSettings {
                compile: options,
                ..PostgresSettings::default()
            };
            let store: Arc<dyn AdminStore> = Arc::new(PostgresStore::connect(url, settings).await?);
            let catalog = feed::store_catalog(store.as_ref(), &options).await?;
            tracing::info!(
                sets = catalog.sets().count(),
                "serving flags from PostgreSQL"
            );
            (
                catalog,
                Feed::Store {
                    store: store.clone(),
                    options,
                    version_check: *version_check,
                },
                Some(store),
            )
        }
    };
    let node = Arc::new(
        Node::start(
            NodeConfig {
                shards: config.shards,
                default_set: config.default_set.clone(),
                ..NodeConfig::default()
            },
            catalog,
        )
        .await?,
    );
    let listen = |addr: SocketAddr| async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok::<_, ServerError>((listener, local))
    };
    let (grpc, grpc_addr) = listen(config.grpc_addr).await?;
    let (metrics, metrics_addr) = listen(config.metrics_addr).await?;
    Ok(BoundServer {
        config,
        grpc,
        grpc_addr,
        metrics,
        metrics_addr,
        node,
        feed,
        store: admin_store,
    })
}

impl BoundServer {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Serves until `shutdown` completes, then ends the streams, drains in-flight requests and
    /// stops the actor tree.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let (closing_tx, closing) = watch::channel(false);
        let feed_task = tokio::spawn(feed::run(self.feed, self.node.clone(), closing.clone()));
        let metrics_task = tokio::spawn(metrics_http::serve(self.metrics, closing.clone()));
        let gate = Gate::new(
            self.config.max_concurrent_requests,
            self.config.max_context_bytes,
        );
        let evaluator = Evaluator::new(self.node.clone(), gate, closing);
        let bulk = BulkEvaluation::new(evaluator.clone(), self.config.max_bulk_evaluations);
        let admin = Admin::new(self.store.clone(), &self.config.flags);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.config.tls {
            let cert = std::fs::read(&tls.cert)
                .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.cert.display())))?;
            let key = std::fs::read(&tls.key)
                .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.key.display())))?;
            builder = builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .map_err(|e| ServerError::Tls(e.to_string()))?;
        }
        tracing::info!(grpc = %self.grpc_addr, metrics = %self.metrics_addr, "node serving");
        let served = builder
            .add_service(v1::service_server::ServiceServer::new(FlagdV1(
                evaluator.clone(),
            )))
            .add_service(v2::service_server::ServiceServer::new(FlagdV2(
                evaluator.clone(),
            )))
            .add_service(FlagSyncServiceServer::new(FlagdSync(evaluator)))
            .add_service(EvaluationServer::new(bulk))
            .add_service(AdminServer::new(admin))
            .serve_with_incoming_shutdown(incoming(self.grpc), async move {
                shutdown.await;
                tracing::info!("shutting down: closing streams, draining requests");
                let _ = closing_tx.send(true);
            })
            .await;
        let _ = feed_task.await;
        let _ = metrics_task.await;
        self.node.shutdown().await;
        served.map_err(ServerError::from)
    }
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames must leave at once, or a
/// request waits ~40 ms for the peer's delayed ACK.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Binds and serves: what `bunting serve` runs.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    bind(config).await?.serve(shutdown).await
}
