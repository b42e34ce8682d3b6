//! The actor tree's own tokio runtime.
//!
//! Evaluation is CPU work done inside shard actors. On the runtime that also runs the gRPC edge,
//! a few slow evaluations occupied every worker thread, so the handlers of newly arrived requests
//! did not run (and could not be admitted *or refused*) until an evaluation finished and gave its
//! slot back: with fewer workers than `max_concurrent_requests`, the Gate never saw more than a
//! worker's worth of requests, shed nothing, and the backlog waited unseen in the runtime's queue.
//! On a runtime of their own the actors compete with the edge for the CPU through the operating
//! system's scheduler, and the edge keeps admitting and refusing at once.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};

/// A multi-threaded runtime for the actor tree, shut down without blocking when dropped (it is
/// dropped inside the server's own runtime, where a blocking shutdown is not allowed).
#[derive(Debug)]
pub struct ActorRuntime(Option<Runtime>);

impl ActorRuntime {
    pub fn start() -> std::io::Result<ActorRuntime> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("bunting-actors")
            .enable_all()
            .build()
            .map(|runtime| ActorRuntime(Some(runtime)))
    }

    /// Runs `start` (which spawns actors) on this runtime, so the actors it spawns, and those
    /// they spawn in turn, live here.
    pub async fn run<F>(&self, start: F) -> Result<F::Output, tokio::task::JoinError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(runtime) => runtime.spawn(start).await,
            // Only `Drop` takes the runtime out.
            None => tokio::spawn(start).await,
        }
    }
}

impl Drop for ActorRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
