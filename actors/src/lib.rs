//! Bunting's actor tree (ractor): the node supervisor and the shard actors that own users and
//! hold the compiled flag snapshot. Empty until the node issue lands; see ARCHITECTURE.md.
