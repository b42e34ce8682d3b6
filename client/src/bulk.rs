//! Bulk evaluation (`bunting.v1.Evaluation/EvaluateBulk`) for many subjects: one call per owner
//! node, all in parallel, answers put back in the caller's order.

use std::collections::BTreeMap;

use bunting_proto::bunting::v1::evaluation_client::EvaluationClient;
use bunting_proto::bunting::v1::flag_result::Value as WireValue;
use bunting_proto::bunting::v1::{
    ErrorCode as WireErrorCode, EvaluateBulkRequest, FlagResult as WireResult, Subject,
};
use futures_util::future::join_all;
use serde_json::{Map, Value};

use crate::client::Client;
use crate::context::EvaluationContext;
use crate::error::{ClientError, Operation};
use crate::resolve::{FlagValue, malformed, metadata_json};

/// The results for one subject, at the subject's position in the request.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectResults {
    /// The subject's targeting key, as the node echoed it.
    pub targeting_key: Option<String>,
    /// The flag set version these results were computed from. Subjects served by different nodes
    /// may differ here for the moment a change takes to reach every node.
    pub flag_set_version: i64,
    /// One result per flag, in the order of the request's flag keys (or key order for all).
    pub results: Vec<FlagResult>,
}

/// One flag for one subject. A flag that could not be resolved is a result with `error`, not a
/// failed call: one bad flag does not fail the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagResult {
    pub flag_key: String,
    pub value: Option<FlagValue>,
    pub variant: Option<String>,
    pub reason: String,
    pub error: Option<FlagError>,
    pub metadata: Map<String, Value>,
}

/// Why one flag of a bulk evaluation could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError {
    pub code: FlagErrorCode,
    pub message: String,
}

/// OpenFeature's error codes, as `EvaluateBulk` reports them per flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagErrorCode {
    FlagNotFound,
    ParseError,
    TypeMismatch,
    TargetingKeyMissing,
    InvalidContext,
    General,
}

impl Client {
    /// Evaluates `flag_keys` (every flag when empty) of `flag_set_id` (the node's default when
    /// empty) for each subject. Subjects are grouped by the node owning their targeting key (those
    /// without one form a group of their own, sent to any node); each group is one call with its
    /// own retries, and the calls run in parallel. The first group that fails fails the whole
    /// evaluation.
    pub async fn evaluate_bulk(
        &self,
        flag_set_id: &str,
        flag_keys: &[String],
        subjects: &[EvaluationContext],
    ) -> Result<Vec<SubjectResults>, ClientError> {
        let mut wire_subjects = Vec::with_capacity(subjects.len());
        for (index, subject) in subjects.iter().enumerate() {
            let context = subject
                .to_struct()
                .map_err(|e| ClientError::InvalidContext {
                    message: format!("subject {index}: {e}"),
                })?;
            wire_subjects.push(Subject {
                context: Some(context),
            });
        }
        let routing = self.router.current();
        let mut groups: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
        for (index, subject) in subjects.iter().enumerate() {
            let owner = subject
                .targeting_key()
                .and_then(|key| routing.topology.owner_index(key));
            groups.entry(owner).or_default().push(index);
        }
        let operation = Operation::Bulk { flag_set_id };
        let calls = groups.into_values().map(|members| {
            let group: Vec<Subject> = members
                .iter()
                .filter_map(|&i| wire_subjects.get(i).cloned())
                .collect();
            // Every member has the same owner, so the first one's key routes the whole group.
            let key = members
                .first()
                .and_then(|&i| subjects.get(i))
                .and_then(EvaluationContext::targeting_key);
            async move {
                let (answer, node) = self
                    .router
                    .call(key, operation, |channel, timeout| {
                        let mut request = tonic::Request::new(EvaluateBulkRequest {
                            flag_set_id: flag_set_id.to_owned(),
                            flag_keys: flag_keys.to_vec(),
                            subjects: group.clone(),
                        });
                        request.set_timeout(timeout);
                        self.router.config.authorize(&mut request);
                        async move { EvaluationClient::new(channel).evaluate_bulk(request).await }
                    })
                    .await?;
                if answer.subjects.len() != members.len() {
                    return Err(malformed(
                        &node,
                        format!(
                            "{} subject results for {} subjects",
                            answer.subjects.len(),
                            members.len()
                        ),
                    ));
                }
                let mut placed = Vec::with_capacity(members.len());
                for (&index, subject) in members.iter().zip(answer.subjects) {
                    let results = subject
                        .results
                        .into_iter()
                        .map(|r| flag_result(r, &node))
                        .collect::<Result<Vec<_>, _>>()?;
                    let targeting_key =
                        (!subject.targeting_key.is_empty()).then_some(subject.targeting_key);
                    placed.push((
                        index,
                        SubjectResults {
                            targeting_key,
                            flag_set_version: answer.flag_set_version,
                            results,
                        },
                    ));
                }
                Ok(placed)
            }
        });
        let mut slots: Vec<Option<SubjectResults>> = vec![None; subjects.len()];
        for group in join_all(calls).await {
            for (index, results) in group? {
                if let Some(slot) = slots.get_mut(index) {
                    *slot = Some(results);
                }
            }
        }
        // Every index was in exactly one group and every group answered in full.
        Ok(slots.into_iter().flatten().collect())
    }
}

fn flag_result(wire: WireResult, node: &str) -> Result<FlagResult, ClientError> {
    let value = match wire.value {
        None => None,
        Some(WireValue::BoolValue(b)) => Some(FlagValue::Bool(b)),
        Some(WireValue::StringValue(s)) => Some(FlagValue::String(s)),
        Some(WireValue::IntValue(i)) => Some(FlagValue::Int(i)),
        Some(WireValue::DoubleValue(f)) => Some(FlagValue::Float(f)),
        Some(WireValue::ObjectValue(s)) => Some(FlagValue::Object(
            bunting_proto::json::struct_into_json(s)
                .map_err(|e| malformed(node, format!("flag `{}`: {e}", wire.flag_key)))?,
        )),
    };
    let code = match WireErrorCode::try_from(wire.error_code) {
        Ok(WireErrorCode::Unspecified) => None,
        Ok(WireErrorCode::FlagNotFound) => Some(FlagErrorCode::FlagNotFound),
        Ok(WireErrorCode::ParseError) => Some(FlagErrorCode::ParseError),
        Ok(WireErrorCode::TypeMismatch) => Some(FlagErrorCode::TypeMismatch),
        Ok(WireErrorCode::TargetingKeyMissing) => Some(FlagErrorCode::TargetingKeyMissing),
        Ok(WireErrorCode::InvalidContext) => Some(FlagErrorCode::InvalidContext),
        // A code newer than this client: still an error, of a kind it cannot name.
        Ok(WireErrorCode::General) | Err(_) => Some(FlagErrorCode::General),
    };
    Ok(FlagResult {
        value,
        variant: (!wire.variant.is_empty()).then_some(wire.variant),
        reason: wire.reason,
        error: code.map(|code| FlagError {
            code,
            message: wire.error_message,
        }),
        metadata: metadata_json(wire.metadata, node)?,
        flag_key: wire.flag_key,
    })
}
