//! Everything a Bunting node keeps outside its own memory, behind traits the node holds as
//! `Arc<dyn …>`: the admin store of flag sets ([`AdminStore`]: PostgreSQL, or [`memory`] for
//! tests), the read-only flag file ([`file`]), the experiment store ([`experiments`]), rollouts and scheduled changes ([`rollouts`]), the
//! experiment event stores ([`scylladb`], [`guarded_events`]; the embedded one is in
//! `bunting-experiments`), per-user state on disk ([`user_state_file`]) and the shared tier
//! ([`shared_tier`]: Redis, or in memory), with the circuit breaker they share ([`breaker`]) and
//! the URL type that keeps credentials out of logs ([`secret_url`]).
//!
//! This is the only crate of the workspace that compiles a database or cache driver (sqlx, redis,
//! scylla): the actor tree and the experiment model do not, and the node's services see stores
//! only through these traits.

mod admin;
mod batch;
pub mod breaker;
mod document;
pub mod experiments;
mod fanout;
pub mod file;
pub mod guarded_events;
pub mod memory;
pub mod postgres;
pub mod rollouts;
pub mod scylladb;
pub mod secret_url;
pub mod shared_tier;
pub mod user_state_file;

pub use admin::*;
pub use file::{FileSource, FileSourceError, FileWatch, WatchedFlagSet};
pub use postgres::{PostgresSettings, PostgresStore};
