//! The bytes of the peer protocol (`bunting.v1.PeerRequest` / `PeerResponse`, cluster.proto) to
//! and from checked Rust types. Everything decoded here came from a peer, so it is decoded
//! defensively: a payload that is too large, not protobuf, of another protocol version, or with a
//! field out of range is a [`PeerError`] naming what was wrong, never a panic.

use std::sync::Arc;

use bunting_actors::{ResolvedFlag, ResolvedSet};
use bunting_engine::{ErrorCode, FlagType, Metadata, Reason, ResolveError};
use bunting_experiments::{ArmTotals, ExperimentId, ExperimentTotals, MetricName, MetricTotals};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::{
    peer_bulk_answer, peer_request, peer_resolve, peer_resolved, peer_response, peer_tracked,
};
use bunting_proto::json::{json_to_struct, json_to_value, struct_into_json, value_into_json};
use prost::Message;
use prost_types::Struct;

/// The peer protocol this build speaks. Bump it with any change a node of the previous version
/// would misread; peers of another version are refused (see cluster.proto). 3: a one-flag
/// resolve may name no type (OFREP).
pub const PEER_PROTOCOL_VERSION: u32 = 3;

/// Larger peer messages are refused, and the cluster transport is configured with the same limit:
/// a context passed the sender's `max_context_bytes` already, and a whole flag set's answers
/// (about 200 bytes a flag) stay far below this.
pub const MAX_PEER_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("peer message of {0} bytes is over the {MAX_PEER_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("peer message is not a bunting.v1 peer message: {0}")]
    Undecodable(String),
    #[error(
        "peer speaks peer protocol version {theirs}, this node speaks {ours}: upgrade the older \
         node (version 0 is a node from before versioning)"
    )]
    Version { theirs: u32, ours: u32 },
    #[error("peer message has no request or answer in it")]
    Empty,
    #[error("peer message field {field}: {problem}")]
    Malformed {
        field: &'static str,
        problem: String,
    },
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("the peer answered a {asked} request with a {answered} answer")]
    Unexpected {
        asked: &'static str,
        answered: &'static str,
    },
}

fn malformed(field: &'static str, problem: impl std::fmt::Display) -> PeerError {
    PeerError::Malformed {
        field,
        problem: problem.to_string(),
    }
}

/// What a node asks a peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Resolve(Resolve),
    Bulk(Bulk),
    Track(Track),
    Totals(ExperimentId),
}

/// One subject's flag, or every flag of a set, as the owner of its shard should resolve it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolve {
    /// `None`: the receiver's default set.
    pub set: Option<Arc<str>>,
    /// Decoded (and size-checked) by the receiver's admission, like a client's.
    pub context: Struct,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Flag {
        key: String,
        wanted: Option<FlagType>,
    },
    All,
}

/// Subjects of one bulk evaluation that the receiver owns, against one pinned set version.
#[derive(Debug, Clone, PartialEq)]
pub struct Bulk {
    pub set: Arc<str>,
    pub version: u64,
    pub keys: Vec<String>,
    pub contexts: Vec<Struct>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub user: String,
    pub event: String,
    pub value: f64,
    pub flag_set: Option<String>,
}

/// What a peer answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Refused(String),
    Flag(ResolvedFlag),
    All(Result<ResolvedSet, ResolveError>),
    Bulk(BulkAnswer),
    Tracked(Tracked),
    Totals(ExperimentTotals),
}

#[derive(Debug, Clone, PartialEq)]
pub enum BulkAnswer {
    /// One entry per request context, each one flag per requested key in request order.
    Subjects(Vec<Vec<ResolvedFlag>>),
    /// The receiver does not serve the pinned version (`serving`: what it serves, if the set
    /// exists there).
    VersionMismatch { serving: Option<u64> },
}

/// What the owner answered to a forwarded Track: the experiments it counted toward, or why the
/// event itself is bad (the caller's error, not the cluster's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    Counted(Vec<ExperimentId>),
    BadEvent(String),
}

impl Answer {
    fn name(&self) -> &'static str {
        match self {
            Answer::Refused(_) => "refused",
            Answer::Flag(_) => "one-flag",
            Answer::All(_) => "all-flags",
            Answer::Bulk(_) => "bulk",
            Answer::Tracked(_) => "track",
            Answer::Totals(_) => "totals",
        }
    }

    /// The answer, or why it is not one to a request of kind `asked`.
    pub fn unexpected(self, asked: &'static str) -> PeerError {
        match self {
            Answer::Refused(why) => PeerError::Refused(why),
            other => PeerError::Unexpected {
                asked,
                answered: other.name(),
            },
        }
    }
}

fn check_size(bytes: &[u8]) -> Result<(), PeerError> {
    if bytes.len() > MAX_PEER_MESSAGE_BYTES {
        return Err(PeerError::TooLarge(bytes.len()));
    }
    Ok(())
}

fn check_version(theirs: u32) -> Result<(), PeerError> {
    if theirs == PEER_PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(PeerError::Version {
            theirs,
            ours: PEER_PROTOCOL_VERSION,
        })
    }
}

// ---- requests ----

pub fn encode_request(request: Request) -> Vec<u8> {
    let kind = match request {
        Request::Resolve(r) => peer_request::Kind::Resolve(pb::PeerResolve {
            flag_set: r.set.map(|s| s.to_string()),
            context: Some(r.context),
            target: Some(match r.target {
                Target::Flag { key, wanted } => peer_resolve::Target::Flag(pb::PeerOneFlag {
                    key,
                    flag_type: wanted.map(|t| wire_type(t).into()),
                }),
                Target::All => peer_resolve::Target::All(pb::PeerAllFlags {}),
            }),
        }),
        Request::Bulk(b) => peer_request::Kind::Bulk(pb::PeerBulk {
            flag_set: b.set.to_string(),
            flag_set_version: b.version,
            flag_keys: b.keys,
            contexts: b.contexts,
        }),
        Request::Track(t) => peer_request::Kind::Track(pb::PeerTrack {
            targeting_key: t.user,
            event: t.event,
            value: t.value,
            flag_set: t.flag_set,
        }),
        Request::Totals(id) => peer_request::Kind::Totals(pb::PeerTotals {
            experiment_id: id.to_string(),
        }),
    };
    pb::PeerRequest {
        protocol_version: PEER_PROTOCOL_VERSION,
        kind: Some(kind),
    }
    .encode_to_vec()
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, PeerError> {
    check_size(bytes)?;
    let message =
        pb::PeerRequest::decode(bytes).map_err(|e| PeerError::Undecodable(e.to_string()))?;
    check_version(message.protocol_version)?;
    Ok(match message.kind.ok_or(PeerError::Empty)? {
        peer_request::Kind::Resolve(r) => Request::Resolve(Resolve {
            set: r.flag_set.map(Arc::from),
            context: r.context.unwrap_or_default(),
            target: match r
                .target
                .ok_or_else(|| malformed("resolve.target", "absent"))?
            {
                peer_resolve::Target::Flag(one) => {
                    if one.key.is_empty() {
                        return Err(malformed("resolve.flag.key", "empty"));
                    }
                    Target::Flag {
                        wanted: one.flag_type.map(flag_type).transpose()?,
                        key: one.key,
                    }
                }
                peer_resolve::Target::All(pb::PeerAllFlags {}) => Target::All,
            },
        }),
        peer_request::Kind::Bulk(b) => {
            if b.flag_keys.is_empty() {
                return Err(malformed("bulk.flag_keys", "empty"));
            }
            Request::Bulk(Bulk {
                set: Arc::from(b.flag_set),
                version: b.flag_set_version,
                keys: b.flag_keys,
                contexts: b.contexts,
            })
        }
        peer_request::Kind::Track(t) => Request::Track(Track {
            user: t.targeting_key,
            event: t.event,
            value: t.value,
            flag_set: t.flag_set,
        }),
        peer_request::Kind::Totals(t) => Request::Totals(
            ExperimentId::new(t.experiment_id).map_err(|e| malformed("totals.experiment_id", e))?,
        ),
    })
}

fn wire_type(t: FlagType) -> pb::PeerFlagType {
    match t {
        FlagType::Boolean => pb::PeerFlagType::Boolean,
        FlagType::String => pb::PeerFlagType::String,
        FlagType::Integer => pb::PeerFlagType::Integer,
        FlagType::Float => pb::PeerFlagType::Float,
        FlagType::Object => pb::PeerFlagType::Object,
    }
}

fn flag_type(raw: i32) -> Result<FlagType, PeerError> {
    match pb::PeerFlagType::try_from(raw) {
        Ok(pb::PeerFlagType::Boolean) => Ok(FlagType::Boolean),
        Ok(pb::PeerFlagType::String) => Ok(FlagType::String),
        Ok(pb::PeerFlagType::Integer) => Ok(FlagType::Integer),
        Ok(pb::PeerFlagType::Float) => Ok(FlagType::Float),
        Ok(pb::PeerFlagType::Object) => Ok(FlagType::Object),
        Ok(pb::PeerFlagType::Unspecified) | Err(_) => Err(malformed(
            "resolve.flag.flag_type",
            format!("{raw} is not a flag type"),
        )),
    }
}

// ---- answers ----

/// The answer's bytes. An answer that cannot be encoded (a value deeper than the Struct
/// conversion allows, which the engine's values never are) goes out as a refusal saying so.
pub fn encode_answer(answer: Answer) -> Vec<u8> {
    let kind = answer_kind(answer)
        .unwrap_or_else(|e| peer_response::Kind::Refused(format!("encoding the answer: {e}")));
    pb::PeerResponse {
        protocol_version: PEER_PROTOCOL_VERSION,
        kind: Some(kind),
    }
    .encode_to_vec()
}

fn answer_kind(answer: Answer) -> Result<peer_response::Kind, PeerError> {
    Ok(match answer {
        Answer::Refused(why) => peer_response::Kind::Refused(why),
        Answer::Flag(flag) => peer_response::Kind::Resolved(pb::PeerResolved {
            result: Some(peer_resolved::Result::Flag(wire_flag(String::new(), flag)?)),
        }),
        Answer::All(Ok(set)) => peer_response::Kind::Resolved(pb::PeerResolved {
            result: Some(peer_resolved::Result::All(pb::PeerFlagSet {
                flags: set
                    .flags
                    .into_iter()
                    .map(|(key, flag)| wire_flag(key, flag))
                    .collect::<Result<_, _>>()?,
                metadata: Some(wire_struct("metadata", &set.metadata)?),
                version: set.version,
            })),
        }),
        Answer::All(Err(e)) => peer_response::Kind::Resolved(pb::PeerResolved {
            result: Some(peer_resolved::Result::Failed(wire_error(e))),
        }),
        Answer::Bulk(BulkAnswer::Subjects(subjects)) => {
            peer_response::Kind::Bulk(pb::PeerBulkAnswer {
                result: Some(peer_bulk_answer::Result::Subjects(pb::PeerBulkSubjects {
                    subjects: subjects
                        .into_iter()
                        .map(|flags| {
                            Ok(pb::PeerSubjectFlags {
                                flags: flags
                                    .into_iter()
                                    .map(|f| wire_flag(String::new(), f))
                                    .collect::<Result<_, PeerError>>()?,
                            })
                        })
                        .collect::<Result<_, PeerError>>()?,
                })),
            })
        }
        Answer::Bulk(BulkAnswer::VersionMismatch { serving }) => {
            peer_response::Kind::Bulk(pb::PeerBulkAnswer {
                result: Some(peer_bulk_answer::Result::VersionMismatch(
                    pb::PeerVersionMismatch { serving },
                )),
            })
        }
        Answer::Tracked(Tracked::Counted(ids)) => peer_response::Kind::Tracked(pb::PeerTracked {
            result: Some(peer_tracked::Result::Counted(pb::PeerCounted {
                experiment_ids: ids.into_iter().map(String::from).collect(),
            })),
        }),
        Answer::Tracked(Tracked::BadEvent(why)) => peer_response::Kind::Tracked(pb::PeerTracked {
            result: Some(peer_tracked::Result::BadEvent(why)),
        }),
        Answer::Totals(totals) => peer_response::Kind::Totals(wire_totals(totals)),
    })
}

/// The peer's answer. A refusal is `Ok(Answer::Refused)`: the caller decides what it means.
pub fn decode_answer(bytes: &[u8]) -> Result<Answer, PeerError> {
    check_size(bytes)?;
    let message =
        pb::PeerResponse::decode(bytes).map_err(|e| PeerError::Undecodable(e.to_string()))?;
    let kind = message.kind.ok_or(PeerError::Empty)?;
    // A refusal is read whatever the version: it is how a peer says it speaks another one.
    if let peer_response::Kind::Refused(why) = kind {
        return Ok(Answer::Refused(why));
    }
    check_version(message.protocol_version)?;
    Ok(match kind {
        peer_response::Kind::Refused(why) => Answer::Refused(why),
        peer_response::Kind::Resolved(r) => {
            match r
                .result
                .ok_or_else(|| malformed("resolved.result", "absent"))?
            {
                peer_resolved::Result::Flag(f) => Answer::Flag(flag(f)?.1),
                peer_resolved::Result::All(set) => Answer::All(Ok(ResolvedSet {
                    flags: set.flags.into_iter().map(flag).collect::<Result<_, _>>()?,
                    metadata: struct_field("resolved.all.metadata", set.metadata)?,
                    version: set.version,
                })),
                peer_resolved::Result::Failed(e) => Answer::All(Err(resolve_error(e)?)),
            }
        }
        peer_response::Kind::Bulk(b) => {
            match b.result.ok_or_else(|| malformed("bulk.result", "absent"))? {
                peer_bulk_answer::Result::Subjects(s) => Answer::Bulk(BulkAnswer::Subjects(
                    s.subjects
                        .into_iter()
                        .map(|subject| {
                            subject
                                .flags
                                .into_iter()
                                .map(|f| flag(f).map(|(_, r)| r))
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .collect::<Result<_, _>>()?,
                )),
                peer_bulk_answer::Result::VersionMismatch(m) => {
                    Answer::Bulk(BulkAnswer::VersionMismatch { serving: m.serving })
                }
            }
        }
        peer_response::Kind::Tracked(t) => {
            match t
                .result
                .ok_or_else(|| malformed("tracked.result", "absent"))?
            {
                peer_tracked::Result::Counted(c) => Answer::Tracked(Tracked::Counted(
                    c.experiment_ids
                        .into_iter()
                        .map(|id| {
                            ExperimentId::new(id).map_err(|e| malformed("tracked.counted", e))
                        })
                        .collect::<Result<_, _>>()?,
                )),
                peer_tracked::Result::BadEvent(why) => Answer::Tracked(Tracked::BadEvent(why)),
            }
        }
        peer_response::Kind::Totals(t) => Answer::Totals(totals(t)?),
    })
}

fn wire_struct(field: &'static str, map: &Metadata) -> Result<Struct, PeerError> {
    json_to_struct(map).map_err(|e| malformed(field, e))
}

fn struct_field(field: &'static str, s: Option<Struct>) -> Result<Metadata, PeerError> {
    struct_into_json(s.unwrap_or_default()).map_err(|e| malformed(field, e))
}

fn wire_flag(key: String, r: ResolvedFlag) -> Result<pb::PeerFlag, PeerError> {
    Ok(pb::PeerFlag {
        key,
        value: r
            .value
            .as_ref()
            .map(json_to_value)
            .transpose()
            .map_err(|e| malformed("flag.value", e))?,
        variant: r.variant,
        reason: r.reason.as_str().to_owned(),
        error: r.error.map(wire_error),
        metadata: Some(wire_struct("flag.metadata", &r.metadata)?),
        flag_set_version: r.flag_set_version,
    })
}

fn flag(f: pb::PeerFlag) -> Result<(String, ResolvedFlag), PeerError> {
    let reason = Reason::from_wire(&f.reason)
        .ok_or_else(|| malformed("flag.reason", format!("unknown reason {:?}", f.reason)))?;
    Ok((
        f.key,
        ResolvedFlag {
            value: f
                .value
                .map(value_into_json)
                .transpose()
                .map_err(|e| malformed("flag.value", e))?,
            variant: f.variant,
            reason,
            error: f.error.map(resolve_error).transpose()?,
            metadata: struct_field("flag.metadata", f.metadata)?,
            flag_set_version: f.flag_set_version,
        },
    ))
}

fn wire_error(e: ResolveError) -> pb::PeerResolveError {
    let code = match e.code {
        ErrorCode::FlagNotFound => pb::PeerErrorCode::FlagNotFound,
        ErrorCode::TypeMismatch => pb::PeerErrorCode::TypeMismatch,
        ErrorCode::ParseError => pb::PeerErrorCode::ParseError,
        ErrorCode::General => pb::PeerErrorCode::General,
    };
    pb::PeerResolveError {
        code: code.into(),
        message: e.message,
    }
}

fn resolve_error(e: pb::PeerResolveError) -> Result<ResolveError, PeerError> {
    let code = match pb::PeerErrorCode::try_from(e.code) {
        Ok(pb::PeerErrorCode::FlagNotFound) => ErrorCode::FlagNotFound,
        Ok(pb::PeerErrorCode::TypeMismatch) => ErrorCode::TypeMismatch,
        Ok(pb::PeerErrorCode::ParseError) => ErrorCode::ParseError,
        Ok(pb::PeerErrorCode::General) => ErrorCode::General,
        Ok(pb::PeerErrorCode::Unspecified) | Err(_) => {
            return Err(malformed(
                "error.code",
                format!("{} is not an error code", e.code),
            ));
        }
    };
    Ok(ResolveError {
        code,
        message: e.message,
        // The owner's shard counted a budget failure where it happened; the message still names
        // the budget, and the forwarding node must not count it a second time.
        exceeded: None,
    })
}

fn wire_totals(totals: ExperimentTotals) -> pb::PeerExperimentTotals {
    pb::PeerExperimentTotals {
        arms: totals
            .arms
            .into_iter()
            .map(|(arm, t)| {
                (
                    arm,
                    pb::PeerArmTotals {
                        exposed: t.exposed,
                        metrics: t
                            .metrics
                            .into_iter()
                            .map(|(name, m)| {
                                (
                                    String::from(name),
                                    pb::PeerMetricTotals {
                                        converted: m.converted,
                                        sum: m.sum,
                                        sum_squares: m.sum_squares,
                                    },
                                )
                            })
                            .collect(),
                    },
                )
            })
            .collect(),
    }
}

fn totals(t: pb::PeerExperimentTotals) -> Result<ExperimentTotals, PeerError> {
    let mut totals = ExperimentTotals::default();
    for (arm, a) in t.arms {
        let mut metrics = std::collections::BTreeMap::new();
        for (name, m) in a.metrics {
            let name = MetricName::new(name).map_err(|e| malformed("totals.metrics", e))?;
            metrics.insert(
                name,
                MetricTotals {
                    converted: m.converted,
                    sum: m.sum,
                    sum_squares: m.sum_squares,
                },
            );
        }
        totals.arms.insert(
            arm,
            ArmTotals {
                exposed: a.exposed,
                metrics,
            },
        );
    }
    Ok(totals)
}
