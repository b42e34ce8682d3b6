//! gRPC health checking (`grpc.health.v1`) and server reflection for the node's one gRPC port.
//!
//! Health answers for `""` (the whole node) and for every service the node registers. Every name
//! is NOT_SERVING until the node's flags are loaded (a file node loads them before it binds; a
//! PostgreSQL node that started during an outage serves the shared tier's snapshots, possibly
//! none, and is SERVING only once the feed has read PostgreSQL), and NOT_SERVING again from the
//! moment shutdown begins. Kubernetes' gRPC probes and load balancers therefore send traffic only
//! to a node that serves its authority's flags, and stop before it drains.
//!
//! Both are open to callers without a token (`auth::scope::OPEN_METHODS`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bunting_proto::bunting::v1 as bunting;
use bunting_proto::flagd::evaluation::{v1, v2};
use bunting_proto::flagd::sync::v1 as sync;
use futures_core::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The names health answers for: the whole node, then each registered service (the same list
/// `server.rs` adds, checked against the scope table by the unit test below).
pub const SERVICE_NAMES: &[&str] = &[
    "",
    v1::service_server::SERVICE_NAME,
    v2::service_server::SERVICE_NAME,
    sync::flag_sync_service_server::SERVICE_NAME,
    bunting::evaluation_server::SERVICE_NAME,
    bunting::admin_server::SERVICE_NAME,
    bunting::experiments_server::SERVICE_NAME,
    bunting::topology_server::SERVICE_NAME,
    bunting::cluster_admin_server::SERVICE_NAME,
    bunting::tokens_server::SERVICE_NAME,
];

/// The node's health: the reporter that sets the statuses, and the service that serves them.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    reporter: HealthReporter,
}

impl NodeHealth {
    /// Every name NOT_SERVING (`HealthReporter::new` starts `""` at SERVING: too early here).
    pub async fn new() -> NodeHealth {
        let health = NodeHealth {
            reporter: HealthReporter::new(),
        };
        health.set(false).await;
        health
    }

    /// Every name SERVING or NOT_SERVING.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in SERVICE_NAMES {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// The `grpc.health.v1.Health` service. Its `Watch` streams end once `closing` turns, after
    /// a last NOT_SERVING, so they never hold up the drain.
    pub fn service(&self, closing: watch::Receiver<bool>) -> HealthServer<ClosingHealth> {
        HealthServer::new(ClosingHealth {
            inner: HealthService::from_health_reporter(self.reporter.clone()),
            closing,
        })
    }

    /// Keeps the statuses in step with `loaded` (the node serves its authority's flags) until
    /// `closing` turns; then NOT_SERVING for good.
    pub async fn follow(
        self,
        mut loaded: watch::Receiver<bool>,
        mut closing: watch::Receiver<bool>,
    ) {
        let mut last = None;
        loop {
            let serving = *loaded.borrow_and_update() && !*closing.borrow_and_update();
            if last != Some(serving) {
                self.set(serving).await;
                if serving {
                    tracing::info!("health: SERVING");
                }
                last = Some(serving);
            }
            if *closing.borrow() {
                break;
            }
            tokio::select! {
                changed = loaded.changed() => {
                    if changed.is_err() {
                        // The feed is gone; what it said last stands until shutdown.
                        crate::closing::closed(&mut closing).await;
                    }
                }
                () = crate::closing::closed(&mut closing) => {}
            }
        }
        self.set(false).await;
    }
}

/// tonic-health's service, with `Watch` streams that end at shutdown.
#[derive(Debug)]
pub struct ClosingHealth {
    inner: HealthService,
    closing: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Health for ClosingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = UntilClosing;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        let mut closing = self.closing.clone();
        Ok(Response::new(UntilClosing {
            inner: Box::pin(inner),
            closed: Box::pin(async move { crate::closing::closed(&mut closing).await }),
            last_not_serving: false,
            done: false,
        }))
    }
}

type Statuses = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// A `Watch` stream that ends when the node starts shutting down. A node that is closing is
/// NOT_SERVING by definition, so a watcher that has not yet seen NOT_SERVING is sent it last,
/// whatever order the status update and the closing signal arrive in.
pub struct UntilClosing {
    inner: Statuses,
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    last_not_serving: bool,
    done: bool,
}

impl std::fmt::Debug for UntilClosing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UntilClosing")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for UntilClosing {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // Closing first: once it turned, a SERVING still queued in the watch is stale.
        if self.closed.as_mut().poll(cx).is_ready() {
            self.done = true;
            if self.last_not_serving {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Ok(HealthCheckResponse {
                status: WireStatus::NotServing as i32,
            })));
        }
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(response))) = &next {
            self.last_not_serving = response.status == WireStatus::NotServing as i32;
        }
        next
    }
}

/// gRPC reflection, v1 and v1alpha (older grpcurl and grpcui ask v1alpha only), describing every
/// service the node serves: Bunting's and flagd's descriptors and health's.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(bunting_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::{METHODS, OPEN_METHODS};
    use tokio_stream::StreamExt;

    #[test]
    fn health_names_every_service_with_a_method_in_the_scope_table() {
        for name in SERVICE_NAMES.iter().filter(|n| !n.is_empty()) {
            let prefix = format!("/{name}/");
            assert!(
                METHODS.iter().any(|(m, _)| m.starts_with(&prefix)),
                "{name} has no method in the scope table"
            );
        }
        for name in [
            <HealthServer<ClosingHealth> as tonic::server::NamedService>::NAME,
            tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
            tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
        ] {
            let prefix = format!("/{name}/");
            assert!(
                OPEN_METHODS.iter().any(|m| m.starts_with(&prefix)),
                "{name} is not open"
            );
        }
    }

    #[tokio::test]
    async fn serving_follows_loaded_until_closing() {
        let health = NodeHealth::new().await;
        let service = HealthService::from_health_reporter(health.reporter.clone());
        let status = |name: &'static str| {
            let request = Request::new(HealthCheckRequest {
                service: name.to_owned(),
            });
            let service = &service;
            async move { service.check(request).await.unwrap().into_inner().status }
        };
        let (loaded_tx, loaded) = watch::channel(false);
        let (closing_tx, closing) = watch::channel(false);
        let task = tokio::spawn(health.clone().follow(loaded, closing));
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(50));
        settle().await;
        // A PostgreSQL-pending start: nothing loaded from the store yet.
        for name in SERVICE_NAMES {
            assert_eq!(
                status(name).await,
                WireStatus::NotServing as i32,
                "{name:?}"
            );
        }
        loaded_tx.send(true).unwrap();
        settle().await;
        for name in SERVICE_NAMES {
            assert_eq!(status(name).await, WireStatus::Serving as i32, "{name:?}");
        }
        closing_tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(status("").await, WireStatus::NotServing as i32);
    }

    #[tokio::test]
    async fn a_watch_ends_with_not_serving_when_the_node_closes() {
        let health = NodeHealth::new().await;
        health.set(true).await;
        let (closing_tx, closing) = watch::channel(false);
        let service = ClosingHealth {
            inner: HealthService::from_health_reporter(health.reporter.clone()),
            closing,
        };
        let mut stream = service
            .watch(Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.status, WireStatus::Serving as i32);
        // Closing before the status changed: the stream still ends on NOT_SERVING.
        closing_tx.send(true).unwrap();
        let last = stream.next().await.unwrap().unwrap();
        assert_eq!(last.status, WireStatus::NotServing as i32);
        assert!(stream.next().await.is_none());
    }
}
