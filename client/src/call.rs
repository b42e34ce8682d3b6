//! One call with routing and retries: send to the owner, read the answer's routing metadata,
//! and on a node failure quarantine the node, refresh the map and try the next one, until an
//! answer, a final error, `max_attempts` or the request timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::error::{self, ClientError, Failure, Operation};
use crate::router::{Router, Routing};
use crate::stats::Counters;

/// The serving node's shard map epoch, on every answer from a clustered node.
pub const EPOCH_HEADER: &str = "bunting-epoch";
/// The owner's node id, when the serving node does not own the key's shard.
pub const OWNER_HEADER: &str = "bunting-owner";

impl Router {
    /// Runs `attempt(channel, timeout)` against the node `key` routes to, retrying as described
    /// above. Returns the answer and the id of the node that gave it.
    pub(crate) async fn call<R, F, Fut>(
        self: &Arc<Self>,
        key: Option<&str>,
        operation: Operation<'_>,
        mut attempt: F,
    ) -> Result<(R, String), ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        Counters::bump(&self.counters.requests);
        let result = self.attempts(key, operation, &mut attempt).await;
        if result.is_err() {
            Counters::bump(&self.counters.failures);
        }
        result
    }

    async fn attempts<R, F, Fut>(
        self: &Arc<Self>,
        key: Option<&str>,
        operation: Operation<'_>,
        attempt: &mut F,
    ) -> Result<(R, String), ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let timeout = self.config.request_timeout;
        let deadline = Instant::now() + timeout;
        let max_attempts = self.config.max_attempts.max(1);
        let mut tried: Vec<String> = Vec::new();
        let mut last_failure = String::new();
        for number in 1..=max_attempts {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let observed = self.generation();
            let routing = self.current();
            let Some(node) = self.pick(&routing, key, &tried) else {
                break;
            };
            tried.push(node.id.clone());
            // Later attempts keep a share of the budget, so one hung node cannot use it all.
            let budget = remaining / (max_attempts - number + 1);
            let failure =
                match tokio::time::timeout(budget, attempt(node.channel.clone(), budget)).await {
                    Ok(Ok(answer)) => {
                        self.release(&node);
                        self.observe(answer.metadata(), &routing, key, observed);
                        return Ok((answer.into_inner(), node.id.clone()));
                    }
                    Ok(Err(status)) => {
                        self.observe(status.metadata(), &routing, key, observed);
                        let kind = error::classify(&status);
                        if kind == Failure::Final {
                            return Err(error::from_status(&status, operation, &node.id));
                        }
                        last_failure = format!(
                            "node `{}` ({}): {:?}: {}",
                            node.id,
                            node.addr,
                            status.code(),
                            status.message()
                        );
                        kind
                    }
                    Err(_) => {
                        last_failure = format!(
                            "node `{}` ({}): no answer within {budget:?}",
                            node.id, node.addr
                        );
                        Failure::NodeDown
                    }
                };
            tracing::debug!(attempt = number, %last_failure, "attempt failed");
            if number == max_attempts {
                break;
            }
            let refresh = if failure == Failure::NodeDown {
                self.quarantine(&node);
                self.spawn_refresh(observed)
            } else {
                None
            };
            Counters::bump(&self.counters.retries);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let pause = self
                .config
                .retry_backoff
                .saturating_mul(1 << (number - 1).min(16))
                .min(remaining);
            // The backoff and the refresh run together: the retry then goes to the new owner if
            // the map changed, or to another node of the same map if it did not.
            let wait_refresh = async {
                if let Some(task) = refresh {
                    let _ = tokio::time::timeout(remaining / 2, task).await;
                }
            };
            tokio::join!(tokio::time::sleep(pause), wait_refresh);
        }
        if last_failure.is_empty() || Instant::now() >= deadline {
            return Err(ClientError::Timeout {
                operation: operation.to_string(),
                timeout,
                attempts: u32::try_from(tried.len()).unwrap_or(u32::MAX),
                nodes: tried,
            });
        }
        Err(ClientError::Unavailable {
            operation: operation.to_string(),
            attempts: u32::try_from(tried.len()).unwrap_or(u32::MAX),
            nodes: tried,
            last: last_failure,
        })
    }

    /// Reads an answer's routing metadata: a `bunting-owner` other than the map's owner of the
    /// key, or an epoch newer than the map's, means the map is stale. The answer itself is good
    /// (the node forwarded or evaluated it), so the refresh runs in the background.
    fn observe(
        self: &Arc<Self>,
        metadata: &MetadataMap,
        routing: &Routing,
        key: Option<&str>,
        observed: u64,
    ) {
        let expected_owner = key
            .and_then(|k| routing.topology.owner_of(k))
            .map(|n| n.id.as_str());
        let wrong_owner = metadata
            .get(OWNER_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|owner| Some(owner) != expected_owner);
        let newer_epoch = metadata
            .get(EPOCH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|epoch| epoch > routing.topology.epoch);
        if wrong_owner {
            Counters::bump(&self.counters.wrong_owner);
        }
        if wrong_owner || newer_epoch {
            // Detached: this request is answered, the next ones use the new map.
            drop(self.spawn_refresh(observed));
        }
    }
}
