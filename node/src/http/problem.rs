//! Every refusal the edge sends, in OFREP's error shape (`errorCode`, `errorDetails`, and the
//! flag's `key` where there is one) with the HTTP status the specification gives it. Messages
//! name the offending input, bounded, and never a credential.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::service::wire_text::bounded;

/// OFREP's error codes (OpenFeature's), as the edge uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    FlagNotFound,
    ParseError,
    TargetingKeyMissing,
    InvalidContext,
    General,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::FlagNotFound => "FLAG_NOT_FOUND",
            Code::ParseError => "PARSE_ERROR",
            Code::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            Code::InvalidContext => "INVALID_CONTEXT",
            Code::General => "GENERAL",
        }
    }
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The request cannot be evaluated as sent (400, or 404 for an unknown flag): OFREP's
    /// `evaluationFailure` / `flagNotFound` / `bulkEvaluationFailure`.
    #[error("{}: {details}", code.as_str())]
    Evaluation {
        status: StatusCode,
        key: Option<String>,
        code: Code,
        details: String,
    },
    /// No usable credential (401) or one without the right (403).
    #[error("{details}")]
    Auth { status: StatusCode, details: String },
    /// The node is at its limit, or the caller's rate is (429, `Retry-After` in seconds).
    #[error("{details}")]
    TooBusy {
        details: String,
        retry_after_secs: u32,
    },
    /// The body is larger than the edge accepts (413).
    #[error("request body is over this node's limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Not JSON (415).
    #[error("content-type must be {wanted}, found {found}")]
    UnsupportedMediaType { wanted: String, found: String },
    /// No such route (404) or not this method (405).
    #[error("{details}")]
    Route { status: StatusCode, details: String },
    /// The node failed (500): OFREP's `generalErrorResponse`.
    #[error("{0}")]
    Internal(String),
    /// Shutting down, or flags not loaded yet (503).
    #[error("{0}")]
    Unavailable(String),
}

impl Problem {
    pub fn evaluation(key: Option<&str>, code: Code, details: impl Into<String>) -> Problem {
        let status = match code {
            Code::FlagNotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        Problem::Evaluation {
            status,
            key: key.map(|k| bounded(k.to_owned())),
            code,
            details: details.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Problem::Evaluation { status, .. }
            | Problem::Auth { status, .. }
            | Problem::Route { status, .. } => *status,
            Problem::TooBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            Problem::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Problem::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(&self) -> Value {
        let details = bounded(self.to_string());
        match self {
            Problem::Evaluation {
                key, code, details, ..
            } => {
                let mut body =
                    json!({"errorCode": code.as_str(), "errorDetails": bounded(details.clone())});
                if let (Some(key), Some(map)) = (key, body.as_object_mut()) {
                    map.insert("key".to_owned(), Value::String(key.clone()));
                }
                body
            }
            Problem::TooLarge { .. } | Problem::UnsupportedMediaType { .. } => {
                json!({"errorCode": Code::ParseError.as_str(), "errorDetails": details})
            }
            _ => json!({"errorDetails": details}),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Problem::TooBusy {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Problem::Auth { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"bunting\""),
                );
            }
            _ => {}
        }
        response
    }
}

/// Any path the edge does not serve.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::Route {
        status: StatusCode::NOT_FOUND,
        details: format!(
            "{} is not a path this node serves",
            bounded(uri.path().to_owned())
        ),
    }
}

/// A served path asked with another method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::Route {
        status: StatusCode::METHOD_NOT_ALLOWED,
        details: format!("{} does not take {method}", bounded(uri.path().to_owned())),
    }
}
