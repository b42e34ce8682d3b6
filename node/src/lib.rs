//! The `bunting` node: everything the binary wires together (stores, services, server), kept in a
//! library so integration tests drive the same code the binary runs.

mod actor_runtime;
pub mod auth;
pub mod breaker;
mod closing;
pub mod config;
pub mod dispatch;
pub mod edge;
pub mod experiment_feed;
pub mod feed;
pub mod http;
pub mod loadgen;
pub mod metrics_http;
pub mod routing;
pub mod secret_url;
pub mod server;
pub mod service;
pub mod shared_tier;
pub mod store;
