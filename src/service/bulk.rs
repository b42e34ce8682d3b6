//! `bunting.v1.Evaluation/EvaluateBulk`: many flags for many subjects in one call, for back ends
//! that would otherwise make thousands of single-flag calls.
//!
//! The flag set is pinned once per call (one `Arc<FlagSet>` from the node's catalog), so every
//! result of a batch comes from one version, as the .proto promises; each subject then goes to the
//! shard that owns its targeting key, one mailbox round trip per subject, all subjects in flight
//! at once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bunting_actors::ResolvedFlag;
use bunting_engine::{ErrorCode as EngineErrorCode, EvaluationContext};
use bunting_proto::bunting::v1::evaluation_server::Evaluation;
use bunting_proto::bunting::v1::{
    ErrorCode, EvaluateBulkRequest, EvaluateBulkResponse, FlagResult, SubjectResults, flag_result,
};
use serde_json::Value;
use tonic::{Request, Response, Status};

use super::evaluator::{Evaluator, metadata_struct};
use super::request::node_status;
use super::wire_text::quoted;

/// The label this service's evaluations carry in `bunting_evaluations_total` and friends.
const SERVICE: &str = "bunting.v1";

/// `bunting.v1.Evaluation`.
#[derive(Debug, Clone)]
pub struct BulkEvaluation {
    evaluator: Evaluator,
    /// The most subjects × flags one call may ask for (the node's `max_bulk_evaluations`).
    max_evaluations: usize,
}

impl BulkEvaluation {
    pub fn new(evaluator: Evaluator, max_evaluations: usize) -> BulkEvaluation {
        BulkEvaluation {
            evaluator,
            max_evaluations,
        }
    }
}

#[tonic::async_trait]
impl Evaluation for BulkEvaluation {
    async fn evaluate_bulk(
        &self,
        request: Request<EvaluateBulkRequest>,
    ) -> Result<Response<EvaluateBulkResponse>, Status> {
        let this = self.clone();
        let request = request.into_inner();
        self.evaluator
            .gate
            .run("bunting.v1.Evaluation", async move {
                this.evaluate(request).await
            })
            .await
            .map(Response::new)
    }
}

impl BulkEvaluation {
    /// One admitted call (see `Gate::run`).
    async fn evaluate(&self, request: EvaluateBulkRequest) -> Result<EvaluateBulkResponse, Status> {
        let started = Instant::now();
        if request.subjects.is_empty() {
            return Err(Status::invalid_argument(
                "subjects is empty: name at least one subject to evaluate for",
            ));
        }
        let node = &self.evaluator.node;
        let set_id = if request.flag_set_id.is_empty() {
            node.config().default_set.as_str()
        } else {
            request.flag_set_id.as_str()
        };
        let flags =
            node.catalog().get(set_id).cloned().ok_or_else(|| {
                Status::not_found(format!("flag set {} not found", quoted(set_id)))
            })?;
        let keys: Vec<String> = if request.flag_keys.is_empty() {
            flags.entries().iter().map(|e| e.key().to_owned()).collect()
        } else {
            distinct_keys(request.flag_keys)?
        };
        // Checked before any context is decoded: an oversized batch costs nothing but this.
        let evaluations = request.subjects.len().saturating_mul(keys.len());
        if evaluations > self.max_evaluations {
            return Err(Status::invalid_argument(format!(
                "{} subjects x {} flags is {evaluations} evaluations, over this node's limit of {} \
                 per call; split the batch",
                request.subjects.len(),
                keys.len(),
                self.max_evaluations
            )));
        }
        let contexts = request
            .subjects
            .into_iter()
            .enumerate()
            .map(|(i, subject)| {
                self.evaluator
                    .gate
                    .context(subject.context)
                    .map_err(|e| Status::new(e.code(), format!("subjects[{i}]: {}", e.message())))
            })
            .collect::<Result<Vec<EvaluationContext>, Status>>()?;
        let targeting_keys: Vec<String> = contexts
            .iter()
            .map(|c| c.targeting_key().unwrap_or_default().to_owned())
            .collect();
        let keys: Arc<[String]> = keys.into();
        let answers = node
            .resolve_bulk(set_id.into(), flags.clone(), keys.clone(), contexts)
            .await
            .map_err(node_status)?;

        let mut tally = Tally::default();
        let mut subjects = Vec::with_capacity(answers.len());
        for (targeting_key, answer) in targeting_keys.into_iter().zip(answers) {
            let mut results = Vec::with_capacity(answer.len());
            for (key, resolved) in keys.iter().zip(answer) {
                tally.count(&resolved);
                results.push(flag_result(key, resolved)?);
            }
            subjects.push(SubjectResults {
                targeting_key,
                results,
            });
        }
        tally.record(started);
        Ok(EvaluateBulkResponse {
            subjects,
            flag_set_version: i64::try_from(flags.version()).unwrap_or(i64::MAX),
            flag_set_metadata: Some(metadata_struct(flags.metadata())?),
        })
    }
}

/// The requested keys without repeats, each at its first position; an empty key is a malformed
/// request.
fn distinct_keys(requested: Vec<String>) -> Result<Vec<String>, Status> {
    let mut seen = HashSet::with_capacity(requested.len());
    let mut keys = Vec::with_capacity(requested.len());
    for (i, key) in requested.into_iter().enumerate() {
        if key.is_empty() {
            return Err(Status::invalid_argument(format!("flag_keys[{i}] is empty")));
        }
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn flag_result(key: &str, resolved: ResolvedFlag) -> Result<FlagResult, Status> {
    let (error_code, error_message) = match resolved.error {
        Some(e) => (error_code(e.code), e.message),
        None => (ErrorCode::Unspecified, String::new()),
    };
    let value = match resolved.value {
        Some(value) if error_code == ErrorCode::Unspecified => wire_value(value)?,
        _ => None,
    };
    Ok(FlagResult {
        flag_key: key.to_owned(),
        // The variant names the value returned; no value, no variant.
        variant: match value {
            Some(_) => resolved.variant.unwrap_or_default(),
            None => String::new(),
        },
        value,
        reason: resolved.reason.as_str().to_owned(),
        error_code: error_code.into(),
        error_message,
        metadata: Some(metadata_struct(&resolved.metadata)?),
    })
}

fn error_code(code: EngineErrorCode) -> ErrorCode {
    match code {
        EngineErrorCode::FlagNotFound => ErrorCode::FlagNotFound,
        EngineErrorCode::TypeMismatch => ErrorCode::TypeMismatch,
        EngineErrorCode::ParseError => ErrorCode::ParseError,
        EngineErrorCode::General => ErrorCode::General,
    }
}

/// A variant's value on the wire. Whole numbers that fit go out as `int_value`, so an integer
/// flag stays an integer whatever JSON number form its definition used (`3` or `3.0`).
fn wire_value(value: Value) -> Result<Option<flag_result::Value>, Status> {
    Ok(match value {
        Value::Bool(b) => Some(flag_result::Value::BoolValue(b)),
        Value::String(s) => Some(flag_result::Value::StringValue(s)),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Some(flag_result::Value::IntValue(i)),
            (None, Some(f)) => Some(match whole_i64(f) {
                Some(i) => flag_result::Value::IntValue(i),
                None => flag_result::Value::DoubleValue(f),
            }),
            (None, None) => None,
        },
        Value::Object(map) => Some(flag_result::Value::ObjectValue(metadata_struct(&map)?)),
        // The engine's variant kinds have no null or array values.
        Value::Null | Value::Array(_) => None,
    })
}

/// `f` as an i64 if it is a whole number in i64's range.
fn whole_i64(f: f64) -> Option<i64> {
    // 2^63 is exact as a double; i64's range is [-2^63, 2^63).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    #[allow(clippy::cast_possible_truncation)]
    let whole = (f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64);
    whole
}

/// Counts per reason and error code, recorded once per call rather than once per result: a batch
/// of thousands would otherwise pay a registry lookup for each.
#[derive(Default)]
struct Tally {
    reasons: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn count(&mut self, resolved: &ResolvedFlag) {
        *self.reasons.entry(resolved.reason.as_str()).or_default() += 1;
        if let Some(error) = &resolved.error {
            *self.errors.entry(error.code.as_str()).or_default() += 1;
        }
    }

    fn record(self, started: Instant) {
        metrics::histogram!("bunting_evaluation_seconds", "service" => SERVICE)
            .record(started.elapsed().as_secs_f64());
        for (reason, n) in self.reasons {
            metrics::counter!("bunting_evaluations_total", "service" => SERVICE, "reason" => reason)
                .increment(n);
        }
        for (code, n) in self.errors {
            metrics::counter!("bunting_evaluation_errors_total", "service" => SERVICE, "code" => code)
                .increment(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_go_out_as_ints_when_whole() {
        let int = |v: Value| match wire_value(v).unwrap() {
            Some(flag_result::Value::IntValue(i)) => Some(i),
            _ => None,
        };
        assert_eq!(int(json!(3)), Some(3));
        assert_eq!(int(json!(3.0)), Some(3));
        assert_eq!(int(json!(-7)), Some(-7));
        assert_eq!(int(json!(2.5)), None);
        assert_eq!(int(json!(1e19)), None, "beyond i64");
        assert_eq!(int(json!(u64::MAX)), None, "beyond i64");
        assert!(matches!(
            wire_value(json!(2.5)).unwrap(),
            Some(flag_result::Value::DoubleValue(f)) if f == 2.5
        ));
        assert!(matches!(
            wire_value(json!({"a": 1})).unwrap(),
            Some(flag_result::Value::ObjectValue(_))
        ));
    }

    #[test]
    fn repeated_keys_are_kept_once_at_their_first_position() {
        let keys = distinct_keys(vec!["b".into(), "a".into(), "b".into(), "c".into()]).unwrap();
        assert_eq!(keys, ["b", "a", "c"]);
        let empty = distinct_keys(vec!["a".into(), String::new()]).unwrap_err();
        assert_eq!(empty.code(), tonic::Code::InvalidArgument);
        assert!(empty.message().contains("flag_keys[1]"));
    }

    #[test]
    fn a_failed_flag_is_a_result_with_its_code_and_no_value() {
        let failed = ResolvedFlag {
            value: None,
            variant: None,
            reason: bunting_engine::Reason::Error,
            error: Some(bunting_engine::ResolveError {
                code: EngineErrorCode::FlagNotFound,
                message: "flag \"nope\" not found".into(),
                exceeded: None,
            }),
            metadata: serde_json::Map::new(),
            flag_set_version: 1,
        };
        let result = flag_result("nope", failed).unwrap();
        assert_eq!(result.error_code, i32::from(ErrorCode::FlagNotFound));
        assert_eq!(result.reason, "ERROR");
        assert_eq!(result.value, None);
        assert!(result.error_message.contains("nope"));
    }
}
