//! `Track`: a conversion event counted by the owner of the user's shard, and only there. Unlike
//! an evaluation it is never done elsewhere when the owner cannot take it: a non-owner's shard
//! has no record of the user to update, so the caller is told to retry.

use bunting_actors::{TrackRefused, TrackRequest};
use bunting_experiments::ExperimentId;

use super::Dispatch;
use crate::routing::peer::wire::{Track, Tracked};
use crate::service::Refused;
use crate::service::wire_text::quoted;

/// Why an event was not counted.
#[derive(Debug, thiserror::Error)]
pub enum TrackFailed {
    /// The event itself is bad (empty name, a value that is not a finite non-negative number):
    /// the caller's error, whichever node found it.
    #[error("{0}")]
    BadEvent(String),
    /// The owner could not take it now (unreachable, not the owner any more, its store failing).
    #[error("{0}")]
    Unavailable(String),
    /// Not admitted, or the request's task failed.
    #[error(transparent)]
    Refused(#[from] Refused),
}

impl Dispatch {
    /// Counts `request`'s event for its user, on the owner of the user's shard, admitted (see
    /// [`crate::service::Gate::run`]). Answers the experiments it counted toward.
    pub async fn track(
        &self,
        service: &'static str,
        request: TrackRequest,
    ) -> Result<Vec<ExperimentId>, TrackFailed> {
        let this = self.clone();
        self.gate
            .run(service, async move { this.track_admitted(request).await })
            .await
    }

    async fn track_admitted(
        &self,
        request: TrackRequest,
    ) -> Result<Vec<ExperimentId>, TrackFailed> {
        if let Some((routing, owner)) = self
            .routing
            .as_ref()
            .and_then(|r| r.remote_owner(&request.user).map(|o| (r, o)))
        {
            let user = quoted(&request.user).to_string();
            let track = Track {
                user: request.user,
                event: request.event,
                value: request.value,
                flag_set: request.flag_set,
            };
            return match routing.track(&owner, track).await {
                Ok(Tracked::Counted(ids)) => Ok(ids),
                Ok(Tracked::BadEvent(why)) => Err(TrackFailed::BadEvent(why)),
                Err(e) => Err(TrackFailed::Unavailable(format!(
                    "the owner of {user}'s shard ({owner}) did not take the event: {e}; retry"
                ))),
            };
        }
        let answer = self
            .node
            .track(request)
            .await
            .map_err(|e| TrackFailed::Unavailable(e.to_string()))?;
        match answer {
            Ok(ids) => Ok(ids),
            Err(TrackRefused::BadEvent(e)) => Err(TrackFailed::BadEvent(e.to_string())),
            Err(e @ (TrackRefused::NotOwner(_) | TrackRefused::Store(_))) => {
                Err(TrackFailed::Unavailable(format!("{e}; retry")))
            }
        }
    }
}
