//! A flag set's definition over plain HTTP (`GET /v1/flag-sets/{set}`): the JSON flagd's sync
//! protocol carries (`{"flags": {...}, "metadata": ..., "$evaluators": ...}`), for CDNs and edge
//! workers that evaluate in process. A strong validator (the set's version and fingerprint) and
//! a short public max-age let a CDN serve it and revalidate with 304s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bunting_engine::FlagSet;
use bytes::Bytes;

use super::problem::{Code, Problem};
use super::{Edge, caller, etag};
use crate::auth::Scope;
use crate::service::wire_text::quoted;

/// The latest serialized definition of each set asked for, so a thousand CDN misses serialize a
/// large set once. One entry per set (a new version replaces the old), so it holds at most the
/// catalog's sets.
#[derive(Debug, Default)]
pub struct Cache {
    latest: Mutex<HashMap<Arc<str>, (u64, u64, Bytes)>>,
}

impl Cache {
    fn get(&self, set: &str, flags: &FlagSet) -> Result<Bytes, Problem> {
        let key = (flags.version(), flags.fingerprint());
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((version, fingerprint, bytes)) = latest.get(set)
            && (*version, *fingerprint) == key
        {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(
            serde_json::to_vec(flags.document()).map_err(|e| Problem::Internal(e.to_string()))?,
        );
        latest.insert(Arc::from(set), (key.0, key.1, bytes.clone()));
        Ok(bytes)
    }
}

/// `GET /v1/flag-sets/{set}` (and `HEAD`): needs scope sync, like flagd's sync protocol.
pub async fn definition(
    State(edge): State<Edge>,
    Path(set): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller::admit(
        &edge.inner.policy,
        Scope::Sync,
        &headers,
        "GET /v1/flag-sets/{set}",
    )?;
    caller::check_set(&caller, &set)?;
    let catalog = edge.dispatch().node().catalog();
    let Some(flags) = catalog.get(&set) else {
        return Err(Problem::evaluation(
            None,
            Code::FlagNotFound,
            format!("flag set {} not found", quoted(&set)),
        ));
    };
    let etag = etag::for_definition(flags);
    let not_modified = etag::matches(headers.get(header::IF_NONE_MATCH), &etag);
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = edge.inner.definitions.get(&set, flags)?;
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    let control = format!("public, max-age={}", edge.config().definition_max_age_secs);
    if let Ok(value) = HeaderValue::from_str(&control) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    headers.insert(
        header::VARY,
        HeaderValue::from_static("authorization, x-api-key"),
    );
    Ok(response)
}
