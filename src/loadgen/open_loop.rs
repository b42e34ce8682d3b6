//! The open-loop generator (`--rate`): one pacer sends requests at a fixed rate, each on a task
//! of its own, and every latency is measured from the request's *intended* send time, so a
//! stalled node (or a stalled generator) shows up in the figures instead of thinning the load
//! (no coordinated omission).
//!
//! The pacer busy-waits on `Instant` rather than sleeping: tokio's timer wheel has a 1 ms
//! resolution, so a timer-paced generator sent its requests up to a millisecond late and counted
//! that delay as the node's latency. Spinning keeps the schedule to within one turn of the
//! runtime's loop (microseconds), at the price of a whole CPU: run it pinned to a core of its
//! own (`taskset -c 1 bunting bench ...` with the node on another) so the spin does not steal
//! the node's CPU. Each turn of the spin yields to the runtime, which then runs the requests'
//! tasks and polls the sockets.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bunting_node::auth::client::AuthChannel as Channel;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use tokio::sync::Semaphore;

use super::{Sender, TrackPlan, WorkerResult, Workload, call, track};

/// What the pacer needs besides the connections.
pub(super) struct Schedule {
    /// Requests per second, across all connections.
    pub rate: f64,
    /// Measured requests are those scheduled in `[start, end)`; earlier ones are the warm-up.
    pub start: Instant,
    pub end: Instant,
    /// Requests in flight at most; a request whose slot is not free yet waits, and its wait
    /// counts in its latency.
    pub max_in_flight: usize,
    pub users: u32,
}

/// One connection's clients.
pub(super) struct Lane {
    pub sender: Sender,
    pub tracker: ExperimentsClient<Channel>,
}

/// Runs the schedule over `lanes` (round robin) and returns every measured request's outcome.
pub(super) async fn run(
    schedule: Schedule,
    lanes: Vec<Lane>,
    workload: Workload,
    flag: Arc<str>,
    event: Arc<str>,
    plan: TrackPlan,
) -> WorkerResult {
    let result = Arc::new(Mutex::new(WorkerResult::default()));
    let slots = Arc::new(Semaphore::new(schedule.max_in_flight.max(1)));
    let gap = Duration::from_secs_f64(1.0 / schedule.rate.max(1.0));
    let users = schedule.users.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = Instant::now();
    let mut sent: u64 = 0;
    while next < schedule.end {
        // The spin: give the runtime a turn (requests, sockets) until the send time comes.
        while Instant::now() < next {
            tokio::task::yield_now().await;
        }
        let scheduled = next;
        next += gap;
        let lane = &lanes[(sent % lanes.len() as u64) as usize];
        let (mut sender, mut tracker) = (lane.sender.clone(), lane.tracker.clone());
        let user = (sent as u32).wrapping_mul(7919) % users;
        let tracks = plan.tracks(sent);
        sent = sent.wrapping_add(1);
        let (slots, result, flag, event) =
            (slots.clone(), result.clone(), flag.clone(), event.clone());
        let measured = scheduled >= schedule.start;
        tasks.spawn(async move {
            // A closed semaphore cannot happen (it is never closed); the request then runs
            // without a slot rather than being lost.
            let _slot = slots.acquire_owned().await.ok();
            let outcome = call(&mut sender, workload, &flag, user).await;
            let done = Instant::now();
            let evaluated = outcome.is_ok();
            let tracked = if tracks && evaluated {
                let began = Instant::now();
                let outcome = track(&mut tracker, &event, user).await;
                Some((outcome, began.elapsed()))
            } else {
                None
            };
            if !measured {
                return;
            }
            let mut r = result.lock().unwrap_or_else(PoisonError::into_inner);
            r.requests += 1;
            match outcome {
                Ok(flags) => r.flags += flags,
                Err(_) => r.errors += 1,
            }
            let us = done.duration_since(scheduled).as_micros();
            r.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            if let Some((outcome, took)) = tracked {
                let t = &mut r.tracks;
                t.tracks += 1;
                match outcome {
                    Ok(true) => {}
                    Ok(false) => t.uncounted += 1,
                    Err(_) => t.errors += 1,
                }
                t.latencies_us
                    .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
            }
        });
        // Reap finished tasks as we go, so a long run does not keep every handle.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut result = result.lock().unwrap_or_else(PoisonError::into_inner);
    std::mem::take(&mut *result)
}
