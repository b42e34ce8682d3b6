//! Which listener serves which method when the node has an admin listener (`admin_addr`).
//!
//! Administration (flag writes and reads of rules, experiment administration, tokens, cluster
//! operations) and client traffic (evaluation, sync, bulk, topology, Track) are told apart by the
//! method's path alone, so one table decides it ([`plane_of`]) and one layer enforces it in front
//! of every service ([`PlaneLayer`]). `Experiments` is split per method: `Track` is what
//! applications send with their evaluations, everything else in it is run by operators and
//! dashboards. The layer sits outside the auth layer, so a call to the wrong listener is refused
//! before its token is looked at, and never counts against a token's rate.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tower_service::Service;

/// The two kinds of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Evaluation, sync, bulk evaluation, topology and Track: what applications call.
    Client,
    /// Admin, Rollouts, Tokens, ClusterAdmin and Experiments but for Track: what operators call.
    Admin,
}

/// Services that are administration as a whole.
const ADMIN_SERVICES: [&str; 4] = [
    "/bunting.v1.Admin/",
    "/bunting.v1.Rollouts/",
    "/bunting.v1.Tokens/",
    "/bunting.v1.ClusterAdmin/",
];

/// The service split per method, and its one client method.
const EXPERIMENTS: &str = "/bunting.v1.Experiments/";
const TRACK: &str = "/bunting.v1.Experiments/Track";

/// The plane `path` (`/package.Service/Method`) belongs to. A path no table names is `Client`:
/// the auth layer refuses it on the gRPC port, and this layer on the admin listener.
pub fn plane_of(path: &str) -> Plane {
    if ADMIN_SERVICES.iter().any(|prefix| path.starts_with(prefix))
        || (path.starts_with(EXPERIMENTS) && path != TRACK)
    {
        Plane::Admin
    } else {
        Plane::Client
    }
}

/// What one listener serves: every method (no admin listener), or one plane with the addresses
/// a refusal points the caller to.
#[derive(Debug, Clone, Copy)]
pub enum Serves {
    Everything,
    /// The gRPC port of a node with an admin listener at `admin`.
    ClientOnly {
        admin: SocketAddr,
    },
    /// The admin listener of a node whose gRPC port is `grpc`.
    AdminOnly {
        grpc: SocketAddr,
    },
}

impl Serves {
    /// `None` if the listener serves `path`; else the refusal, naming where it is served.
    /// UNIMPLEMENTED, as a server that does not have the method would answer, so clients do not
    /// retry it here; the message says where to go.
    pub fn refusal(self, path: &str) -> Option<Status> {
        let plane = plane_of(path);
        let path = || crate::service::wire_text::bounded(path.to_owned());
        match (self, plane) {
            (Serves::Everything, _)
            | (Serves::ClientOnly { .. }, Plane::Client)
            | (Serves::AdminOnly { .. }, Plane::Admin) => None,
            (Serves::ClientOnly { admin }, Plane::Admin) => Some(Status::unimplemented(format!(
                "{} is administration: this node serves it on its admin listener ({admin}), not on \
                 this port",
                path()
            ))),
            (Serves::AdminOnly { grpc }, Plane::Client) => Some(Status::unimplemented(format!(
                "{} is not served on the admin listener: call this node's gRPC port ({grpc})",
                path()
            ))),
        }
    }
}

/// The layer for `tonic::transport::Server::layer`.
#[derive(Debug, Clone, Copy)]
pub struct PlaneLayer(pub Serves);

impl<S> tower_layer::Layer<S> for PlaneLayer {
    type Service = OnlyPlane<S>;

    fn layer(&self, inner: S) -> OnlyPlane<S> {
        OnlyPlane {
            inner,
            serves: self.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OnlyPlane<S> {
    inner: S,
    serves: Serves,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for OnlyPlane<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.serves.refusal(request.uri().path()) {
            None => Box::pin(self.inner.call(request)),
            // Dropped unread, as the auth layer does with a refused request.
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::METHODS;
    use tonic::Code;

    #[test]
    fn every_method_of_the_scope_table_has_its_plane() {
        let admin: Vec<&str> = METHODS
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| plane_of(m) == Plane::Admin)
            .collect();
        let expected = [
            "/bunting.v1.Admin/CreateFlagSet",
            "/bunting.v1.Admin/UpdateFlagSet",
            "/bunting.v1.Admin/DeleteFlagSet",
            "/bunting.v1.Admin/ListFlagSets",
            "/bunting.v1.Admin/GetFlagSet",
            "/bunting.v1.Admin/CreateFlag",
            "/bunting.v1.Admin/UpdateFlag",
            "/bunting.v1.Admin/DeleteFlag",
            "/bunting.v1.Admin/ListFlags",
            "/bunting.v1.Admin/ListAudit",
            "/bunting.v1.Admin/ApplyFlagChanges",
            "/bunting.v1.Experiments/CreateExperiment",
            "/bunting.v1.Experiments/StartExperiment",
            "/bunting.v1.Experiments/StopExperiment",
            "/bunting.v1.Experiments/GetExperiment",
            "/bunting.v1.Experiments/ListExperiments",
            "/bunting.v1.Experiments/GetExperimentResults",
            "/bunting.v1.Rollouts/CreateRollout",
            "/bunting.v1.Rollouts/GetRolloutStatus",
            "/bunting.v1.Rollouts/ListRollouts",
            "/bunting.v1.Rollouts/PauseRollout",
            "/bunting.v1.Rollouts/ResumeRollout",
            "/bunting.v1.Rollouts/AbortRollout",
            "/bunting.v1.Rollouts/ScheduleChange",
            "/bunting.v1.Rollouts/ListScheduled",
            "/bunting.v1.Rollouts/CancelScheduled",
            "/bunting.v1.ClusterAdmin/Status",
            "/bunting.v1.ClusterAdmin/Drain",
            "/bunting.v1.ClusterAdmin/Undrain",
            "/bunting.v1.Tokens/CreateToken",
            "/bunting.v1.Tokens/ListTokens",
            "/bunting.v1.Tokens/RevokeToken",
        ];
        // A new administration method lands here by its service; a new client method of an
        // administration service (as Track is) must be added to `plane_of` and to this list.
        assert_eq!(admin, expected);
        for client in [
            "/flagd.evaluation.v1.Service/ResolveBoolean",
            "/flagd.sync.v1.FlagSyncService/SyncFlags",
            "/bunting.v1.Evaluation/EvaluateBulk",
            "/bunting.v1.Topology/GetTopology",
            "/bunting.v1.Experiments/Track",
            "/bunting.v1.AdminX/CreateFlag",
            "",
        ] {
            assert_eq!(plane_of(client), Plane::Client, "{client}");
        }
    }

    #[test]
    fn each_listener_refuses_the_other_plane_naming_where_it_is_served() {
        let admin: SocketAddr = "10.0.0.1:9013".parse().unwrap();
        let grpc: SocketAddr = "10.0.0.1:8013".parse().unwrap();
        let write = "/bunting.v1.Admin/CreateFlag";
        let resolve = "/flagd.evaluation.v1.Service/ResolveBoolean";
        let track = "/bunting.v1.Experiments/Track";
        let public = Serves::ClientOnly { admin };
        let private = Serves::AdminOnly { grpc };
        for path in [write, resolve, track] {
            assert!(Serves::Everything.refusal(path).is_none(), "{path}");
        }
        assert!(public.refusal(resolve).is_none() && public.refusal(track).is_none());
        assert!(private.refusal(write).is_none());
        let refused = public.refusal(write).unwrap();
        assert_eq!(refused.code(), Code::Unimplemented);
        assert!(refused.message().contains("10.0.0.1:9013"), "{refused:?}");
        for path in [resolve, track] {
            let refused = private.refusal(path).unwrap();
            assert_eq!(refused.code(), Code::Unimplemented);
            assert!(refused.message().contains("10.0.0.1:8013"), "{refused:?}");
        }
    }
}
