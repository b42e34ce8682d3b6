//! OFREP answers serialized straight from what the shards resolved: each flag borrows its key,
//! value and metadata from the `ResolvedSet` instead of being copied into a `serde_json::Value`
//! tree first. A bulk answer over a few hundred flags spent most of its time building and
//! dropping that tree.

use bunting_actors::{ResolvedFlag, ResolvedSet};
use bunting_engine::{ErrorCode, ResolveError};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::problem::Code;

/// One flag of an answer: OFREP's `evaluationSuccess` (no `value` when the caller's default
/// applies: `codeDefaultFlag`), or, inside a bulk answer, `evaluationFailure` / `flagNotFound`.
#[derive(Debug)]
pub struct FlagAnswer<'a> {
    pub key: &'a str,
    pub resolved: &'a ResolvedFlag,
}

impl Serialize for FlagAnswer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let resolved = self.resolved;
        if let Some(error) = &resolved.error {
            let mut map = serializer.serialize_map(Some(3))?;
            map.serialize_entry("key", self.key)?;
            map.serialize_entry("errorCode", code_of(error).as_str())?;
            map.serialize_entry("errorDetails", &error.message)?;
            return map.end();
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("key", self.key)?;
        if let Some(value) = &resolved.value {
            map.serialize_entry("value", value)?;
        }
        map.serialize_entry("reason", resolved.reason.as_str())?;
        if let Some(variant) = &resolved.variant {
            map.serialize_entry("variant", variant)?;
        }
        map.serialize_entry("metadata", &resolved.metadata)?;
        map.end()
    }
}

/// OFREP's bulk answer: every flag, the set's metadata, and where to hear of changes.
#[derive(Debug)]
pub struct BulkAnswer<'a> {
    pub all: &'a ResolvedSet,
    /// The `eventStreams` endpoint's relative URI.
    pub events_uri: &'a str,
}

impl Serialize for BulkAnswer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("flags", &Flags(&self.all.flags))?;
        map.serialize_entry("metadata", &self.all.metadata)?;
        map.serialize_entry("eventStreams", &[EventStream(self.events_uri)])?;
        map.end()
    }
}

struct Flags<'a>(&'a [(String, ResolvedFlag)]);

impl Serialize for Flags<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (key, resolved) in self.0 {
            seq.serialize_element(&FlagAnswer { key, resolved })?;
        }
        seq.end()
    }
}

/// `{"type": "sse", "endpoint": {"requestUri": ...}}`.
struct EventStream<'a>(&'a str);

impl Serialize for EventStream<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("type", "sse")?;
        map.serialize_entry("endpoint", &Endpoint(self.0))?;
        map.end()
    }
}

struct Endpoint<'a>(&'a str);

impl Serialize for Endpoint<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("requestUri", self.0)?;
        map.end()
    }
}

/// A resolution's error as OFREP names it.
pub(super) fn code_of(error: &ResolveError) -> Code {
    match error.code {
        ErrorCode::FlagNotFound => Code::FlagNotFound,
        ErrorCode::ParseError => Code::ParseError,
        // An untyped resolution cannot mismatch; budgets and other run-time failures are GENERAL.
        ErrorCode::TypeMismatch | ErrorCode::General => Code::General,
    }
}
