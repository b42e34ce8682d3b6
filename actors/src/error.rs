//! Failures of the actor tree itself (never of flag resolution, which answers with error codes).

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("could not start the actor tree: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error("shard {shard} did not answer: {reason}")]
    ShardUnavailable { shard: u32, reason: String },
    #[error("the node supervisor is not running")]
    SupervisorGone,
}
