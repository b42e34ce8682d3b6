//! Where the actor tree runs: on the server's own tokio runtime (the default), or on a runtime of
//! its own (`actor_threads`).
//!
//! A runtime of its own was first made to let the edge shed load while shards evaluate: slow
//! evaluations on the shared runtime occupied every worker thread, so newly arrived requests
//! could not even be refused. The looping lane (`service::admission`) removed that cause (only
//! rules that loop can be slow, and at most `max_looping_evaluations` of them run at once), and a
//! second runtime costs every request a hop between runtimes: on 2 CPUs single resolves fell from
//! 29,300 to 20,900 req/s with it (BENCHMARKS.md). So the tree shares the server's runtime unless
//! an operator asks for threads of its own.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};

/// The actor tree's runtime: `None` shares the server's; `Some` is a multi-threaded runtime of its
/// own, shut down without blocking when dropped (it is dropped inside the server's own runtime,
/// where a blocking shutdown is not allowed).
#[derive(Debug)]
pub struct ActorRuntime(Option<Runtime>);

impl ActorRuntime {
    /// `threads` = 0: the actors share the runtime the server runs on; more: a runtime of their
    /// own with that many worker threads.
    pub fn start(threads: usize) -> std::io::Result<ActorRuntime> {
        if threads == 0 {
            return Ok(ActorRuntime(None));
        }
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
            // Shared with the server (or, after `Drop`, gone).
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
