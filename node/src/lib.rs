//! The Bunting node: the services, the one dispatch path, routing between nodes, the flag and
//! experiment feeds, the gRPC and HTTP edges, and the server that wires them to the stores of
//! `bunting-stores`. The `bunting` binary runs it; integration tests drive the same code.

mod actor_runtime;
pub mod auth;
mod closing;
pub mod config;
pub mod dispatch;
pub mod edge;
pub mod experiment_feed;
pub mod feed;
pub mod http;
pub mod metrics_http;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod service;
