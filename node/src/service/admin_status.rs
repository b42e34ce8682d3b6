//! The Admin API's request checks and failures: what a malformed request, a refused write or an
//! unreachable store look like as gRPC statuses (see the conventions in bunting.proto).

use bunting_engine::{Diagnostic, DiagnosticSummary};
use serde_json::{Map, Value};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use super::wire_text::{bounded, quoted};
use bunting_stores::{MAX_REPORTED_PROBLEMS, StoreError};

/// A flag set id: 1 to this many characters of `[A-Za-z0-9._-]` (bunting.proto, FlagSet.id).
pub const MAX_FLAG_SET_ID_CHARS: usize = 64;

/// A flag key: 1 to this many characters, no control characters (bunting.proto, Flag.key).
pub const MAX_FLAG_KEY_CHARS: usize = 256;

/// INVALID_ARGUMENT for one request field, with the field named in a `google.rpc.BadRequest` as
/// well as in the message.
pub fn bad_field(field: &str, description: impl Into<String>) -> Status {
    // Descriptions often quote the field's value, which is the client's and may be huge.
    let description = bounded(description.into());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request(vec![FieldViolation::new(field, description)]),
    )
}

pub fn check_flag_set_id(field: &str, id: &str) -> Result<(), Status> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() {
        Err(bad_field(field, "is empty; name a flag set"))
    } else if id.chars().count() > MAX_FLAG_SET_ID_CHARS || !id.chars().all(allowed) {
        Err(bad_field(
            field,
            format!(
                "{} is not a flag set id: 1 to {MAX_FLAG_SET_ID_CHARS} characters of \
                 [A-Za-z0-9._-]",
                quoted(id)
            ),
        ))
    } else {
        Ok(())
    }
}

pub fn check_flag_key(field: &str, key: &str) -> Result<(), Status> {
    if key.is_empty() {
        Err(bad_field(field, "is empty; name a flag"))
    } else if key.chars().count() > MAX_FLAG_KEY_CHARS || key.chars().any(char::is_control) {
        Err(bad_field(
            field,
            format!(
                "{} is not a flag key: 1 to {MAX_FLAG_KEY_CHARS} characters, no control \
                 characters",
                quoted(key)
            ),
        ))
    } else {
        Ok(())
    }
}

/// Who is making a change: required on every write, for the audit log.
pub fn check_actor(actor: &str) -> Result<(), Status> {
    if actor.trim().is_empty() {
        Err(bad_field(
            "actor",
            "is required: who is making the change (a user or service name)",
        ))
    } else {
        Ok(())
    }
}

/// A version read from the server: 1 or more. Zero is an unset field, not a stale version.
pub fn check_expected_version(field: &str, version: i64) -> Result<(), Status> {
    if version < 1 {
        Err(bad_field(
            field,
            format!("is {version}; pass the version last read (versions start at 1)"),
        ))
    } else {
        Ok(())
    }
}

/// A flag definition: a JSON object in flagd's flag format, without a `key` member.
pub fn parse_definition(definition: &str) -> Result<Value, Status> {
    parse_definition_at("definition", definition)
}

/// [`parse_definition`] of a field elsewhere in the request (`changes[3].definition`).
pub fn parse_definition_at(field: &str, definition: &str) -> Result<Value, Status> {
    // The engine's parser: a repeated key is refused (serde_json would keep the last one).
    let value: Value = bunting_engine::parse_document(definition)
        .map_err(|e| bad_field(field, format!("is not a valid flag definition: {e}")))?;
    match value.as_object() {
        None => Err(bad_field(
            field,
            "is not a JSON object; a flag is an object in flagd's flag format",
        )),
        Some(flag) if flag.contains_key("key") => Err(bad_field(
            field,
            "carries a \"key\" member; the flag's key is the request's key field",
        )),
        Some(_) => Ok(value),
    }
}

/// An optional Struct field as a JSON object (unset means empty).
pub fn struct_field(
    field: &str,
    value: Option<prost_types::Struct>,
) -> Result<Map<String, Value>, Status> {
    match value {
        None => Ok(Map::new()),
        Some(s) => {
            bunting_proto::json::struct_into_json(s).map_err(|e| bad_field(field, e.to_string()))
        }
    }
}

/// A store failure as the status bunting.proto gives it, counted in
/// `bunting_store_errors_total{op, kind}`.
pub fn store_status(op: &'static str, error: StoreError) -> Status {
    let kind = match &error {
        StoreError::NotFound { .. } => "not_found",
        StoreError::AlreadyExists { .. } => "already_exists",
        StoreError::VersionConflict { .. } => "version_conflict",
        StoreError::Invalid { .. } => "invalid",
        StoreError::Unavailable { .. } => "unavailable",
        StoreError::Internal { .. } => "internal",
    };
    metrics::counter!("bunting_store_errors_total", "op" => op, "kind" => kind).increment(1);
    let message = bounded(error.to_string());
    match error {
        StoreError::NotFound { .. } => Status::not_found(message),
        StoreError::AlreadyExists { .. } => Status::already_exists(message),
        StoreError::VersionConflict { .. } => {
            Status::failed_precondition(format!("{message}; re-read, re-apply and retry"))
        }
        StoreError::Invalid { problems } => Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(violations(&problems)),
        ),
        StoreError::Unavailable { .. } => {
            tracing::warn!(op, error = %message, "flag store unavailable");
            Status::unavailable(message)
        }
        StoreError::Internal { .. } => {
            tracing::error!(op, error = %message, "flag store failed");
            Status::internal(message)
        }
    }
}

/// One field violation per engine problem: `field` is its JSON path in the flag set's document.
/// At most [`MAX_REPORTED_PROBLEMS`], then one violation counting the rest: a set of 20,000 broken
/// flags must not make an error larger than the set.
fn violations(problems: &[Diagnostic]) -> Vec<FieldViolation> {
    let summary = DiagnosticSummary::new(problems, MAX_REPORTED_PROBLEMS);
    let mut out: Vec<FieldViolation> = summary
        .shown
        .iter()
        .map(|p| FieldViolation::new(p.path.clone(), format!("{}: {}", p.severity, p.message)))
        .collect();
    if summary.omitted > 0 {
        out.push(FieldViolation::new(
            "",
            format!("... and {} more problems", summary.omitted),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bunting_engine::Severity;

    fn violated_fields(status: &Status) -> Vec<String> {
        status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn flag_set_ids_and_keys_follow_the_proto() {
        assert!(check_flag_set_id("id", "shop.web_v2-beta").is_ok());
        assert!(check_flag_set_id("id", &"a".repeat(64)).is_ok());
        for bad in ["", "has space", "slash/y", "ümlaut", &"a".repeat(65)] {
            let status = check_flag_set_id("id", bad).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
            assert_eq!(violated_fields(&status), ["id"]);
        }
        assert!(check_flag_key("key", "new checkout ✓").is_ok());
        assert!(check_flag_key("key", &"é".repeat(256)).is_ok());
        for bad in ["", "tab\there", &"k".repeat(257)] {
            assert!(check_flag_key("key", bad).is_err(), "{bad:?}");
        }
        assert!(check_actor("  ").is_err());
        assert!(check_expected_version("expected_version", 0).is_err());
    }

    #[test]
    fn definitions_are_json_objects_without_a_key() {
        assert!(parse_definition(r#"{"state": "ENABLED"}"#).is_ok());
        for bad in ["", "[1]", "{", r#"{"key": "x", "state": "ENABLED"}"#] {
            let status = parse_definition(bad).unwrap_err();
            assert_eq!(violated_fields(&status), ["definition"], "{bad:?}");
        }
    }

    #[test]
    fn store_errors_map_to_the_proto_status_codes() {
        let code = |e: StoreError| store_status("test", e).code();
        assert_eq!(
            code(StoreError::NotFound { what: "x".into() }),
            Code::NotFound
        );
        assert_eq!(
            code(StoreError::AlreadyExists { what: "x".into() }),
            Code::AlreadyExists
        );
        assert_eq!(
            code(StoreError::VersionConflict {
                what: "x".into(),
                expected: 1,
                actual: 2
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(StoreError::Unavailable {
                source: "connection refused".into()
            }),
            Code::Unavailable
        );
        assert_eq!(
            code(StoreError::Internal {
                source: "bad row".into()
            }),
            Code::Internal
        );
    }

    #[test]
    fn every_problem_is_in_the_message_and_the_details() {
        let problem = |path: &str, message: &str| Diagnostic {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        };
        let status = store_status(
            "test",
            StoreError::Invalid {
                problems: vec![
                    problem("flags.a.defaultVariant", "no variant \"x\""),
                    problem("$evaluators.beta", "unknown operator \"nope\""),
                ],
            },
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("flags.a.defaultVariant"));
        assert!(status.message().contains("$evaluators.beta"));
        assert_eq!(
            violated_fields(&status),
            ["flags.a.defaultVariant", "$evaluators.beta"]
        );
        let details = status.get_error_details();
        let descriptions: Vec<&str> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.description.as_str())
            .collect();
        assert_eq!(
            descriptions,
            [
                "error: no variant \"x\"",
                "error: unknown operator \"nope\""
            ]
        );
    }

    #[test]
    fn an_unavailable_store_names_the_cause() {
        let status = store_status(
            "test",
            StoreError::Unavailable {
                source: "connection refused (os error 111)".into(),
            },
        );
        assert!(status.message().contains("connection refused"));
    }
}
