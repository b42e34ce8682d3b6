//! `bunting.v1.Evaluation/EvaluateBulk`: many flags for many subjects in one call, for back ends
//! that would otherwise make thousands of single-flag calls. The work (one pinned flag-set
//! version, each subject on the owner of its shard) is [`Dispatch::bulk`]'s; this is the wire.
//!
//! Routing metadata: `bunting-epoch` always (on a clustered node), `bunting-owner` only when
//! every subject of the batch is owned by the same other node, as a single evaluation for any of
//! them would answer. A batch spread over several owners carries the epoch alone: the response has
//! no per-subject owner field, and a shard-aware client refreshes on a newer epoch.

use bunting_actors::ResolvedFlag;
use bunting_engine::ErrorCode as EngineErrorCode;
use bunting_proto::bunting::v1::evaluation_server::Evaluation;
use bunting_proto::bunting::v1::{
    ErrorCode, EvaluateBulkRequest, EvaluateBulkResponse, FlagResult, SubjectResults, flag_result,
};
use serde_json::Value;
use tonic::{Request, Response, Status};

use super::evaluator::metadata_struct;
use crate::dispatch::{BulkQuery, Dispatch};

/// The label this service's evaluations carry in `bunting_evaluations_total` and friends, and its
/// refusals in `bunting_requests_shed_total`.
const SERVICE: &str = "bunting.v1";

/// `bunting.v1.Evaluation`.
#[derive(Debug, Clone)]
pub struct BulkEvaluation {
    dispatch: Dispatch,
}

impl BulkEvaluation {
    pub fn new(dispatch: Dispatch) -> BulkEvaluation {
        BulkEvaluation { dispatch }
    }
}

#[tonic::async_trait]
impl Evaluation for BulkEvaluation {
    async fn evaluate_bulk(
        &self,
        request: Request<EvaluateBulkRequest>,
    ) -> Result<Response<EvaluateBulkResponse>, Status> {
        // The set as the dispatch will read it: empty is the node's default set.
        let set = match request.get_ref().flag_set_id.as_str() {
            "" => self.dispatch.node().config().default_set.as_str(),
            named => named,
        };
        super::request::check_flag_set(super::request::caller(request.extensions())?, set)?;
        let request = request.into_inner();
        let query = BulkQuery {
            set: Some(request.flag_set_id),
            keys: request.flag_keys,
            subjects: request.subjects.into_iter().map(|s| s.context).collect(),
        };
        let routed = self.dispatch.bulk(SERVICE, query).await?;
        let answer = routed.answer;
        let mut subjects = Vec::with_capacity(answer.subjects.len());
        for subject in answer.subjects {
            let results = answer
                .keys
                .iter()
                .zip(subject.flags)
                .map(|(key, resolved)| flag_result(key, resolved))
                .collect::<Result<Vec<_>, Status>>()?;
            subjects.push(SubjectResults {
                targeting_key: subject.targeting_key,
                results,
            });
        }
        let mut response = Response::new(EvaluateBulkResponse {
            subjects,
            flag_set_version: i64::try_from(answer.version).unwrap_or(i64::MAX),
            flag_set_metadata: Some(metadata_struct(&answer.metadata)?),
        });
        routed.stamp.apply(response.metadata_mut());
        Ok(response)
    }
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
