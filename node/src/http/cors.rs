//! Cross-origin requests from browsers, for the origins in `[http] cors_allowed_origins`. A page
//! from another origin gets the CORS headers that let it read the answer; a preflight from an
//! origin not configured is refused (403) and others' answers carry no CORS headers, so the
//! browser withholds them. No cookies are involved (credentials are bearer tokens), so
//! `Access-Control-Allow-Credentials` is never sent.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Edge;

/// What a page may send: the credential headers, JSON, validators, flagd's selector, and the
/// event stream's resume header.
const ALLOW_HEADERS: &str = "authorization, x-api-key, content-type, if-none-match, \
                             flagd-selector, last-event-id, cache-control, \
                             connect-protocol-version, connect-timeout-ms, x-user-agent";

/// What a page may read besides the always-visible headers.
const EXPOSE_HEADERS: &str = "etag, retry-after, bunting-owner, bunting-epoch";

/// How long a browser may cache a preflight's answer (seconds).
const PREFLIGHT_MAX_AGE: &str = "600";

pub async fn cors(State(edge): State<Edge>, request: Request, next: Next) -> Response {
    let allowed = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|origin| allowed_origin(&edge.config().cors_allowed_origins, origin));
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(origin) = allowed else {
            return StatusCode::FORBIDDEN.into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        allow(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        return response;
    }
    let mut response = next.run(request).await;
    if let Some(origin) = allowed {
        let headers = response.headers_mut();
        allow(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    response
}

fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // The answer differs by origin: caches must keep them apart.
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed: `*` when any origin
/// is, else the origin itself (compared without regard to ASCII case, as hosts are).
fn allowed_origin(configured: &[String], origin: &HeaderValue) -> Option<HeaderValue> {
    if configured.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let origin_text = origin.to_str().ok()?;
    configured
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin_text))
        .then(|| origin.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_origins_are_allowed() {
        let some = vec!["https://app.example.com".to_owned()];
        let any = vec!["*".to_owned()];
        let cases: &[(&[String], &str, Option<&str>)] = &[
            (
                &some,
                "https://app.example.com",
                Some("https://app.example.com"),
            ),
            (
                &some,
                "https://APP.example.com",
                Some("https://APP.example.com"),
            ),
            (&some, "https://evil.example.com", None),
            (&some, "null", None),
            (&[], "https://app.example.com", None),
            (&any, "https://evil.example.com", Some("*")),
        ];
        for (configured, origin, expected) in cases {
            let got = allowed_origin(configured, &HeaderValue::from_static(origin));
            assert_eq!(
                got.as_ref().and_then(|v| v.to_str().ok()),
                *expected,
                "{origin} with {configured:?}"
            );
        }
    }
}
