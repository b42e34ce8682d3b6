//! The node's HTTP edge, beside the gRPC port: what browsers, mobile apps, CDNs, edge workers and
//! load balancers can use without gRPC.
//!
//! - [`ofrep`]: the OpenFeature Remote Evaluation Protocol (`POST /ofrep/v1/evaluate/flags[/{key}]`,
//!   `GET /ofrep/v1/configuration`), through the node's one [`Dispatch`] like every gRPC
//!   evaluation: admitted, routed to the subject's owner in a cluster, exposures recorded.
//! - [`etag`]: the bulk answer's validator, computed before evaluating when the answer can only
//!   change with the set (see there), so a revalidation answered 304 costs no evaluation.
//! - [`events`]: change notifications for clients that cannot hold a gRPC stream: OFREP's
//!   server-sent events (`refetchEvaluation`), and the same notices over a WebSocket.
//! - [`definitions`]: a flag set's definition (flagd's sync JSON) for CDNs and edge workers that
//!   evaluate in process, with a strong ETag and a public max-age.
//! - [`health`]: `/healthz` (the process answers) and `/readyz` (flags are loaded, not shutting
//!   down).
//! - [`connect`]: flagd's evaluation protocol over Connect (`ResolveAll`, `EventStream`), as
//!   `@openfeature/flagd-web-provider` speaks it from browsers.
//! - [`cors`]: the browser's cross-origin rules, for the origins the operator configured.
//! - [`caller`]: the same tokens and scopes as the gRPC port (`crate::auth::Policy`).
//! - [`console`]: the web console at `/ui` (server-rendered pages over the Admin service, with
//!   sign-in sessions and CSRF tokens).
//! - [`listener`]: the accept loop (the edge's connection cap, header and idle timeouts) and
//!   hyper's per-connection limits.

mod answer;
mod caller;
mod connect;
pub mod console;
mod cors;
mod definitions;
mod etag;
mod events;
mod health;
mod listener;
mod ofrep;
mod problem;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::{Semaphore, watch};

use crate::auth::Policy;
use crate::config::HttpConfig;
use crate::dispatch::Dispatch;

pub use listener::serve;

/// What every route shares.
#[derive(Debug, Clone)]
pub struct Edge {
    inner: Arc<State>,
}

#[derive(Debug)]
struct State {
    dispatch: Dispatch,
    policy: Policy,
    config: HttpConfig,
    /// How this node buckets `fractional` (`cbor`, `string`, `legacy`): part of every validator,
    /// since two nodes with the same definitions but different modes answer differently.
    fractional: &'static str,
    closing: watch::Receiver<bool>,
    /// `true` once the node serves its flag source's flags (the feed's; what gRPC health
    /// reports as SERVING too).
    loaded: watch::Receiver<bool>,
    /// The newest version of each set this node has put in a bulk answer (see
    /// [`Edge::may_skip_evaluation`]).
    served: Mutex<HashMap<Arc<str>, u64>>,
    /// Event streams open on this listener.
    event_streams: Arc<Semaphore>,
    /// The latest serialized definition of each set asked for (see [`definitions`]).
    definitions: definitions::Cache,
    /// The console's Admin service and sessions.
    console: console::Console,
}

impl Edge {
    pub fn new(
        dispatch: Dispatch,
        policy: Policy,
        config: HttpConfig,
        fractional: &'static str,
        closing: watch::Receiver<bool>,
        loaded: watch::Receiver<bool>,
        console: console::Console,
    ) -> Edge {
        let event_streams = Arc::new(Semaphore::new(config.max_event_streams));
        Edge {
            inner: Arc::new(State {
                dispatch,
                policy,
                config,
                fractional,
                closing,
                loaded,
                served: Mutex::new(HashMap::new()),
                event_streams,
                definitions: definitions::Cache::default(),
                console,
            }),
        }
    }

    fn dispatch(&self) -> &Dispatch {
        &self.inner.dispatch
    }

    fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    fn default_set(&self) -> &str {
        self.dispatch().node().config().default_set.as_str()
    }

    /// Records that a bulk answer carried `version` of `set`.
    fn served(&self, set: &Arc<str>, version: u64) {
        let mut served = self
            .inner
            .served
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The set is known after its first answer: no key is cloned on the common path.
        match served.get_mut(set) {
            Some(newest) => *newest = (*newest).max(version),
            None => {
                served.insert(set.clone(), version);
            }
        }
    }

    /// Whether a validator computed from this node's own copy of `set` at `version` may answer
    /// without evaluating: only when this node never answered with a newer version (in a cluster
    /// an owner ahead of this node may have), so no node answers 304 for a set older than one it
    /// has served.
    fn may_skip_evaluation(&self, set: &str, version: u64) -> bool {
        let served = self
            .inner
            .served
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        served.get(set).is_none_or(|&newest| newest <= version)
    }
}

/// Every route of the edge. CORS wraps them all, so a refusal (401, 429) still carries the
/// headers a browser needs to read it.
pub fn router(edge: Edge) -> Router {
    Router::new()
        .merge(console::routes(&edge))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep::evaluate_flag))
        .route("/ofrep/v1/evaluate/flags", post(ofrep::evaluate_all))
        .route("/ofrep/v1/configuration", get(ofrep::configuration))
        .route("/ofrep/v1/events", get(events::sse))
        .route("/ofrep/v1/ws", get(events::websocket))
        .route("/v1/flag-sets/{set}", get(definitions::definition))
        .route(
            "/flagd.evaluation.v1.Service/ResolveAll",
            post(connect::resolve_all),
        )
        .route(
            "/flagd.evaluation.v1.Service/EventStream",
            post(connect::event_stream),
        )
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            cors::cors,
        ))
        .with_state(edge)
}
