//! The rollout controller: one per cluster (`bunting_stores::rollouts::Lease`, a PostgreSQL
//! advisory lock), ticking every few seconds
//! ([`controller::Controller::tick`]): it judges each active rollout's guardrails with
//! `bunting_rollouts::decide` and carries out the action as audited flag writes by the principal
//! `rollout:<id>` through the same `AdminStore` the Admin API writes with, and fires the scheduled
//! changes that are due. Rollbacks are logged, counted and posted to an optional webhook
//! ([`webhook`]).

pub mod controller;
pub mod counts;
pub mod webhook;

pub use controller::{ControlError, Controller, GuardrailCounts, Taken};

use std::time::Duration;

use bunting_stores::rollouts::Lease;

/// How often the controller ticks: guardrails are re-judged and due changes fired this often.
pub const TICK: Duration = Duration::from_secs(2);

/// The controller's loop: before each tick, (re)take or confirm the lease; tick only while it is
/// held. Ends when `shutdown` resolves.
pub async fn run(
    controller: Controller,
    mut lease: Box<dyn Lease>,
    tick: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {}
        }
        let leader = lease.hold().await;
        metrics::gauge!("bunting_rollout_controller_leader").set(if leader { 1.0 } else { 0.0 });
        if leader {
            controller.tick(chrono::Utc::now()).await;
        }
    }
}

#[cfg(test)]
mod tests;
