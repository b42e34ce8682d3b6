//! Admission at the edge. ractor's mailboxes are unbounded, so the only bound on the work a node
//! takes on is here: **every request that reaches an actor passes admission first**, and holds
//! its admission until the actor is done with it.
//!
//! Two independent caps: requests in flight (`max_concurrent_requests`: evaluations, bulk
//! evaluations, Track, peer-forwarded requests) and open streams (`max_streams`: flagd's
//! `EventStream` v1/v2 and `SyncFlags`), because a stream lives for hours and would otherwise eat
//! the request cap, or (as before) escape any cap at all. A refusal is RESOURCE_EXHAUSTED at once,
//! counted in `bunting_requests_shed_total{service}`: shedding load beats queueing it where
//! nobody can see it.
//!
//! Inside the request cap, evaluations of rules that loop (`map`, `filter`, `reduce`, `all`,
//! `none`, `some`: each may cost up to the engine's whole budget, about a millisecond, where a
//! rule without loops costs well under a microsecond) take turns in a lane of their own
//! (`max_looping_evaluations` at once). A request waiting for its turn holds its request slot and
//! uses no CPU, so however many clients ask for such flags, the cheap evaluations keep the rest
//! of the actor runtime's threads.

use std::future::Future;
use std::sync::Arc;

use bunting_engine::EvaluationContext;
use prost::Message;
use prost_types::Struct;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::wire_text::bounded;

/// The admission state shared by every service of a node.
#[derive(Debug, Clone)]
pub struct Gate {
    requests: Cap,
    streams: Cap,
    max_context_bytes: usize,
    /// Turns for evaluations of looping rules (see the module documentation).
    looping: Arc<Semaphore>,
}

/// The limits a [`Gate`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_concurrent_requests: usize,
    pub max_streams: usize,
    pub max_context_bytes: usize,
    /// Evaluations of looping rules running at once; more wait for a turn.
    pub max_looping_evaluations: usize,
}

/// One admitted request. Dropping it gives the slot back, so it must live as long as the work:
/// see [`Gate::run`].
#[derive(Debug)]
#[must_use = "the admission is given back when this is dropped"]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

/// One admitted stream; the stream's task holds it until the stream ends. Keeps
/// `bunting_streams_open{stream}` current.
#[derive(Debug)]
#[must_use = "the stream's slot is given back when this is dropped"]
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    stream: &'static str,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        metrics::gauge!("bunting_streams_open", "stream" => self.stream).decrement(1.0);
    }
}

#[derive(Debug, Clone)]
struct Cap {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Cap {
    fn new(limit: usize) -> Cap {
        Cap {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    fn take(
        &self,
        service: &'static str,
        what: &'static str,
    ) -> Result<OwnedSemaphorePermit, Refused> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("bunting_requests_shed_total", "service" => service).increment(1);
            Refused::Full {
                limit: self.limit,
                what,
            }
        })
    }
}

/// Why a request was not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The node is at its cap (shedding load beats queueing it).
    #[error("node is at its limit of {limit} {what}; retry with backoff")]
    Full { limit: usize, what: &'static str },
    /// The request's own task failed (it panicked or the runtime is shutting down).
    #[error("the request's task failed: {0}")]
    TaskFailed(String),
}

impl From<Refused> for Status {
    fn from(refused: Refused) -> Status {
        match refused {
            Refused::Full { .. } => Status::resource_exhausted(refused.to_string()),
            Refused::TaskFailed(_) => Status::internal(refused.to_string()),
        }
    }
}

/// Why a request's evaluation context was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextRefused {
    #[error("evaluation context is {size} bytes, over this node's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// Not a JSON-compatible Struct (too deep, a non-finite number); the text is bounded.
    #[error("evaluation context: {0}")]
    Malformed(String),
}

impl From<ContextRefused> for Status {
    fn from(refused: ContextRefused) -> Status {
        Status::invalid_argument(refused.to_string())
    }
}

impl Gate {
    pub fn new(limits: Limits) -> Gate {
        Gate {
            requests: Cap::new(limits.max_concurrent_requests),
            streams: Cap::new(limits.max_streams),
            max_context_bytes: limits.max_context_bytes,
            looping: Arc::new(Semaphore::new(limits.max_looping_evaluations.max(1))),
        }
    }

    /// A turn in the lane for evaluations of looping rules, waited for (the caller already holds
    /// a request slot, which bounds the queue); dropped when the evaluation is done. `None` only
    /// if the lane were closed, which it never is: the evaluation then simply runs.
    pub async fn looping_turn(&self) -> Option<OwnedSemaphorePermit> {
        let waited = std::time::Instant::now();
        let turn = self.looping.clone().acquire_owned().await.ok();
        metrics::histogram!("bunting_looping_lane_wait_seconds")
            .record(waited.elapsed().as_secs_f64());
        turn
    }

    /// A slot for one request to `service` (the label of `bunting_requests_shed_total`), or
    /// RESOURCE_EXHAUSTED at once when the node is full.
    pub fn admit(&self, service: &'static str) -> Result<Admitted, Status> {
        self.take(service).map_err(Status::from)
    }

    /// A slot for one stream of kind `stream`, or RESOURCE_EXHAUSTED at once.
    pub fn open_stream(&self, stream: &'static str) -> Result<StreamSlot, Status> {
        let permit = self
            .streams
            .take(stream, "open streams")
            .map_err(Status::from)?;
        metrics::gauge!("bunting_streams_open", "stream" => stream).increment(1.0);
        Ok(StreamSlot {
            _permit: permit,
            stream,
        })
    }

    /// Admits a request to `service` and runs `work` on a task of its own that holds the
    /// admission until `work` is done. The caller may stop waiting (a client that cancels, a
    /// deadline): the work it put in a shard's mailbox is still there, so its slot stays taken
    /// until the work completes instead of being handed to the next request at once, which is
    /// how an unbounded mailbox filled up behind a full-looking gate.
    pub async fn run<F, T, E>(&self, service: &'static str, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Refused> + Send + 'static,
    {
        let admitted = self.take(service)?;
        Gate::hold(admitted, work).await
    }

    /// A request slot for work that runs on the request's own task (the fast path: nothing is
    /// put in a mailbox, so a caller that stops waiting leaves nothing behind and the slot may
    /// come back with its future). Work that reaches a shard goes through [`Gate::hold`].
    pub fn take(&self, service: &'static str) -> Result<Admitted, Refused> {
        self.requests
            .take(service, "requests in flight")
            .map(|permit| Admitted { _permit: permit })
    }

    /// Runs `work` on a task of its own holding `admitted` until `work` is done (see
    /// [`Gate::run`]). The work is boxed before the spawn: a request's future is a few
    /// kilobytes, and `tokio::spawn` moves it by value through several frames (memcpy was 8-9 %
    /// of a node's CPU in BENCHMARKS.md's profile); a box moves as one pointer.
    pub async fn hold<F, T, E>(admitted: Admitted, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Refused> + Send + 'static,
    {
        let work = Box::pin(work);
        tokio::spawn(async move {
            let done = work.await;
            drop(admitted);
            done
        })
        .await
        .map_err(|e| Refused::TaskFailed(e.to_string()))?
    }

    /// Decodes a request's context, refusing it whole if it is over the size limit.
    pub fn context(&self, context: Option<Struct>) -> Result<EvaluationContext, ContextRefused> {
        let Some(context) = context else {
            return Ok(EvaluationContext::new());
        };
        let size = context.encoded_len();
        if size > self.max_context_bytes {
            return Err(ContextRefused::TooLarge {
                size,
                limit: self.max_context_bytes,
            });
        }
        bunting_proto::json::struct_into_json(context)
            .map(EvaluationContext::from_fields)
            .map_err(|e| ContextRefused::Malformed(bounded(e.to_string())))
    }

    pub fn max_context_bytes(&self) -> usize {
        self.max_context_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn gate(requests: usize, streams: usize) -> Gate {
        Gate::new(Limits {
            max_concurrent_requests: requests,
            max_streams: streams,
            max_context_bytes: 16,
            max_looping_evaluations: 1,
        })
    }

    /// Looping evaluations take turns: with one turn, the second waits (without refusal) until
    /// the first is done, and a request slot is not a turn.
    #[tokio::test]
    async fn looping_evaluations_take_turns_in_their_own_lane() {
        let gate = gate(4, 1);
        let first = gate.looping_turn().await.expect("a turn");
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.looping_turn().await.is_some() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the second looping evaluation waits"
        );
        // Ordinary requests are admitted meanwhile: the lane is not the request cap.
        let ordinary = gate.admit("test").expect("a request slot");
        drop(first);
        assert!(
            waiting.await.unwrap(),
            "its turn comes when the first is done"
        );
        drop(ordinary);
    }

    #[test]
    fn oversized_contexts_are_refused() {
        let mut big = Struct::default();
        big.fields.insert(
            "k".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".repeat(100))),
            },
        );
        let err = Status::from(gate(1, 1).context(Some(big)).unwrap_err());
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("over this node's limit of 16 bytes"));
    }

    /// What each step does to a gate of 2 requests and 1 stream, and the code it answers.
    #[test]
    fn requests_and_streams_are_capped_separately() {
        #[derive(Debug)]
        enum Step {
            Request,
            Stream,
            EndRequest,
            EndStream,
        }
        use Step::*;
        let table: &[(Step, Option<Code>)] = &[
            (Request, None),
            (Stream, None),
            (Request, None),
            (Request, Some(Code::ResourceExhausted)),
            (Stream, Some(Code::ResourceExhausted)),
            (EndRequest, None),
            (Request, None),
            (EndStream, None),
            (Stream, None),
        ];
        let gate = gate(2, 1);
        let (mut requests, mut streams) = (Vec::new(), Vec::new());
        for (i, (step, expected)) in table.iter().enumerate() {
            let got = match step {
                Request => gate.admit("test").map(|a| requests.push(a)).err(),
                Stream => gate.open_stream("test").map(|s| streams.push(s)).err(),
                EndRequest => requests.pop().map(drop).and(None),
                EndStream => streams.pop().map(drop).and(None),
            };
            assert_eq!(got.map(|s| s.code()), *expected, "step {i}: {step:?}");
        }
    }

    /// A caller that stops waiting does not give its slot back: the work still runs.
    #[tokio::test]
    async fn the_slot_is_held_until_the_work_is_done_even_if_the_caller_gives_up() {
        let gate = gate(1, 1);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let running = gate.run("test", async move {
            let _ = released.await;
            Ok::<(), Status>(())
        });
        // The caller gives up after the work started (a cancelled RPC).
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(20), running).await;
        assert!(gave_up.is_err());
        assert_eq!(
            gate.admit("test").unwrap_err().code(),
            Code::ResourceExhausted,
            "the abandoned work still holds its slot"
        );
        release.send(()).unwrap();
        let mut admitted = None;
        for _ in 0..200 {
            if let Ok(a) = gate.admit("test") {
                admitted = Some(a);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            admitted.is_some(),
            "the slot comes back once the work is done"
        );
    }
}
