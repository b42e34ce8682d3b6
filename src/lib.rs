//! The `bunting` node: everything the binary wires together (stores, services, server), kept in a
//! library so integration tests drive the same code the binary runs.

pub mod store;
