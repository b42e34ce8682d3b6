//! The peer protocol: what one node asks another over the cluster (`wire`: the typed messages of
//! cluster.proto and their defensive decoding) and the owner's side of it (`handler`).

mod handler;
pub mod wire;

pub use handler::PeerHandler;
pub use wire::{MAX_PEER_MESSAGE_BYTES, PEER_PROTOCOL_VERSION, PeerError};
