//! Bunting's Rust client with shard-aware routing. Empty until the cluster issue lands; see
//! ARCHITECTURE.md.
