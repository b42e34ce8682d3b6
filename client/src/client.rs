//! The client handle: connecting, and what it can tell about itself.

use std::sync::Arc;

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::router::Router;
use crate::stats::ClientStats;
use crate::topology::Topology;

/// A shard-aware connection to a Bunting cluster. Cheap to clone; clones share connections,
/// the shard map and the counters.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) router: Arc<Router>,
}

impl Client {
    /// Fetches the topology from the first seed that answers, then sets up one lazily connected
    /// channel per node. Fails naming every seed if none answers.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let router = Router::connect(config).await?;
        Ok(Client {
            router: Arc::new(router),
        })
    }

    /// The client's counters so far.
    pub fn stats(&self) -> ClientStats {
        self.router.counters.snapshot()
    }

    /// The shard map the client routes with now (its epoch, nodes and owners).
    pub fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.router.current().topology)
    }
}
