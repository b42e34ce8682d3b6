//! Bunting's cluster layer: membership over ractor_cluster and the consistent-hash shard map.
//!
//! A node runs one [`Cluster`]: ractor_cluster's `NodeServer` (cookie-authenticated sessions,
//! optionally inside mutual TLS: [`ClusterTls`]) behind Bunting's own accept loop (`listener`), a connector that dials seeds and known
//! members and redials with capped backoff (`connector`), and a membership actor (`membership`)
//! in a ractor process group that every peer sees as a remote actor. Membership actors cast
//! heartbeats to each other; a peer silent for `failure_timeout` is Down. The coordinator (the
//! live member with the smallest [`NodeId`]) places a [`ShardMap`] whenever the live,
//! non-draining membership changes, and every node adopts the map that supersedes its own
//! (`view` holds these rules). A node with seeds owns nothing until a peer has accepted it, so
//! one refused at join (a wrong cookie) never forms a cluster of one. Requests between nodes (`Cluster::call`) reach the target's
//! [`ForwardHandler`].
//!
//! Detection bound: a node that stops is Down on every peer within
//! `failure_timeout + heartbeat_interval` of its last heartbeat (1.25 s by default), and the
//! map without it follows in one more message.
//!
//! Everything a peer sends is decoded defensively (`wire`): size caps before parsing, checked
//! fields after, and errors logged instead of panics.

mod cluster;
mod config;
mod connector;
mod cookie;
mod error;
mod forward;
mod listener;
mod membership;
mod node_id;
mod notice;
mod peer_msg;
mod shard_map;
mod shared;
mod status;
mod tls;
mod view;
mod wire;

pub use cluster::Cluster;
pub use config::ClusterConfig;
pub use cookie::{Cookie, CookieError};
pub use error::{CallError, ClusterError};
pub use forward::ForwardHandler;
pub use node_id::{MAX_NODE_ID_LEN, NodeId, NodeIdError};
pub use notice::Notice;
pub use shard_map::{MapError, MemberAddr, ShardMap, ShardPoint, VNode};
pub use status::{ClusterStatus, MemberState, MemberStatus};
pub use tls::{ClusterTls, DEFAULT_TLS_NAME, TlsError};
pub use wire::{MAX_SHARDS, WireError};
