//! OFREP answers serialized straight from what the shards resolved: each flag borrows its key,
//! value and metadata from the `ResolvedSet` instead of being copied into a `serde_json::Value`
//! tree first (a bulk answer over a few hundred flags spent most of its time building and
//! dropping that tree), and a bulk answer's constant parts are written as bytes.

use bunting_actors::{FlagView, ResolvedFlag};
use bunting_engine::{ErrorCode, Metadata, ResolveError};
use serde::ser::SerializeMap;
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

/// OFREP's bulk answer, `{"flags": [...], "metadata": {...}, "eventStreams": [...]}`, written
/// one flag at a time as the dispatch visits them ([`Dispatch::visit_all`]): the same bytes
/// serde writes for each [`FlagAnswer`], without its per-string escaping pass over the member
/// names and reasons, which are constants here. At a few hundred flags that pass was the largest
/// user-space cost of a bulk answer.
///
/// [`Dispatch::visit_all`]: crate::dispatch::Dispatch::visit_all
#[derive(Debug)]
pub struct BulkWriter {
    out: Vec<u8>,
    flags: usize,
    /// The first failure; later flags are skipped and [`BulkWriter::finish`] returns it.
    failed: Option<serde_json::Error>,
}

impl BulkWriter {
    /// A writer sized for about `flags` flags (about 100 bytes each: one allocation for most
    /// answers).
    pub fn with_capacity(flags: usize) -> BulkWriter {
        let mut out = Vec::with_capacity(256 + flags.saturating_mul(128));
        out.extend_from_slice(b"{\"flags\":[");
        BulkWriter {
            out,
            flags: 0,
            failed: None,
        }
    }

    pub fn flag(&mut self, key: &str, flag: FlagView<'_>) {
        if self.failed.is_some() {
            return;
        }
        if self.flags > 0 {
            self.out.push(b',');
        }
        self.flags += 1;
        if let Err(e) = write_flag(&mut self.out, key, flag) {
            self.failed = Some(e);
        }
    }

    /// The whole answer, with the set's metadata and its event stream's URI.
    pub fn finish(
        mut self,
        metadata: &Metadata,
        events_uri: &str,
    ) -> Result<Vec<u8>, serde_json::Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let out = &mut self.out;
        out.extend_from_slice(b"],\"metadata\":");
        write_metadata(out, metadata)?;
        out.extend_from_slice(
            b",\"eventStreams\":[{\"type\":\"sse\",\"endpoint\":{\"requestUri\":",
        );
        write_str(out, events_uri)?;
        out.extend_from_slice(b"}}]}");
        Ok(self.out)
    }
}

/// One flag of a bulk answer, as [`FlagAnswer`] serializes it.
fn write_flag(out: &mut Vec<u8>, key: &str, flag: FlagView<'_>) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"key\":");
    write_str(out, key)?;
    if let Some(error) = flag.error {
        out.extend_from_slice(b",\"errorCode\":\"");
        out.extend_from_slice(code_of(error).as_str().as_bytes());
        out.extend_from_slice(b"\",\"errorDetails\":");
        write_str(out, &error.message)?;
        out.push(b'}');
        return Ok(());
    }
    if let Some(value) = flag.value {
        out.extend_from_slice(b",\"value\":");
        serde_json::to_writer(&mut *out, value)?;
    }
    // Reasons are upper-case ASCII constants: nothing to escape.
    out.extend_from_slice(b",\"reason\":\"");
    out.extend_from_slice(flag.reason.as_str().as_bytes());
    out.push(b'"');
    if let Some(variant) = flag.variant {
        out.extend_from_slice(b",\"variant\":");
        write_str(out, variant)?;
    }
    out.extend_from_slice(b",\"metadata\":");
    write_metadata(out, flag.metadata)?;
    out.push(b'}');
    Ok(())
}

fn write_metadata(out: &mut Vec<u8>, metadata: &Metadata) -> Result<(), serde_json::Error> {
    if metadata.is_empty() {
        out.extend_from_slice(b"{}");
        Ok(())
    } else {
        serde_json::to_writer(&mut *out, metadata)
    }
}

/// A JSON string: copied as it is when serde_json would escape nothing in it (it escapes only
/// `"`, `\\` and control characters), else written by serde_json.
fn write_str(out: &mut Vec<u8>, text: &str) -> Result<(), serde_json::Error> {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(&mut *out, text)
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

#[cfg(test)]
mod tests {
    use bunting_actors::{ResolvedFlag, ResolvedSet};
    use bunting_engine::{ErrorCode, Metadata, Reason, ResolveError};
    use serde_json::{Value, json};

    use super::{BulkWriter, FlagAnswer};

    fn write_bulk(all: &ResolvedSet, events_uri: &str) -> Vec<u8> {
        let mut writer = BulkWriter::with_capacity(all.flags.len());
        for (key, resolved) in &all.flags {
            writer.flag(key, resolved.view());
        }
        writer.finish(&all.metadata, events_uri).unwrap()
    }

    fn flag(value: Option<Value>, variant: Option<&str>, reason: Reason) -> ResolvedFlag {
        ResolvedFlag {
            value,
            variant: variant.map(str::to_owned),
            reason,
            error: None,
            metadata: Metadata::new(),
            flag_set_version: 7,
        }
    }

    fn error(code: ErrorCode, message: &str) -> ResolveError {
        ResolveError {
            code,
            message: message.to_owned(),
            exceeded: None,
        }
    }

    fn metadata(value: Value) -> Metadata {
        match value {
            Value::Object(map) => map,
            _ => Metadata::new(),
        }
    }

    /// The written answer is byte for byte what serde writes for each [`FlagAnswer`] (the
    /// single-flag endpoint's serialization), for keys, variants and texts that need escaping.
    #[test]
    fn bulk_bytes_are_the_serde_bytes_of_each_flag() {
        let mut with_metadata = flag(Some(json!({"a": [1, "x\"y"]})), Some("obj"), Reason::Static);
        with_metadata.metadata = metadata(json!({"owner": "team \"a\"", "n": 2}));
        let mut failed = flag(None, None, Reason::Error);
        failed.error = Some(error(ErrorCode::General, "rule \"x\" ran out\n"));
        let mut not_found = flag(None, None, Reason::Error);
        not_found.error = Some(error(ErrorCode::FlagNotFound, "no flag"));
        let table: Vec<(&str, ResolvedFlag)> = vec![
            (
                "plain",
                flag(Some(json!(true)), Some("on"), Reason::TargetingMatch),
            ),
            (
                "quote\"key",
                flag(Some(json!("v")), Some("back\\slash"), Reason::Default),
            ),
            (
                "tab\tkey",
                flag(Some(json!(2.5)), Some("ctl\u{1}"), Reason::Static),
            ),
            (
                "ünïcode/é",
                flag(Some(json!(null)), Some("ö"), Reason::Disabled),
            ),
            ("code-default", flag(None, None, Reason::Default)),
            ("object", with_metadata),
            ("failed", failed),
            ("missing", not_found),
        ];
        let all = ResolvedSet {
            flags: table
                .iter()
                .map(|(k, f)| ((*k).to_owned(), f.clone()))
                .collect(),
            metadata: metadata(json!({"flagSetId": "web \"beta\""})),
            version: 7,
        };
        for uri in ["/ofrep/v1/events", "/ofrep/v1/events?flagSet=a%22b"] {
            let written = write_bulk(&all, uri);
            let flags: Vec<String> = all
                .flags
                .iter()
                .map(|(key, resolved)| {
                    serde_json::to_string(&FlagAnswer { key, resolved }).unwrap()
                })
                .collect();
            let expected = format!(
                r#"{{"flags":[{}],"metadata":{},"eventStreams":[{{"type":"sse","endpoint":{{"requestUri":{}}}}}]}}"#,
                flags.join(","),
                serde_json::to_string(&all.metadata).unwrap(),
                serde_json::to_string(uri).unwrap(),
            );
            assert_eq!(String::from_utf8(written.clone()).unwrap(), expected);
            let parsed: Value = serde_json::from_slice(&written).unwrap();
            assert_eq!(parsed["flags"][1]["key"], "quote\"key");
            assert_eq!(parsed["flags"][2]["variant"], "ctl\u{1}");
            assert_eq!(parsed["flags"][6]["errorCode"], "GENERAL");
            assert_eq!(parsed["flags"][7]["errorCode"], "FLAG_NOT_FOUND");
            assert_eq!(parsed["eventStreams"][0]["endpoint"]["requestUri"], uri);
        }
    }

    #[test]
    fn an_empty_set_is_an_empty_list() {
        let all = ResolvedSet {
            flags: Vec::new(),
            metadata: Metadata::new(),
            version: 1,
        };
        let written = write_bulk(&all, "/e");
        assert_eq!(
            String::from_utf8(written).unwrap(),
            r#"{"flags":[],"metadata":{},"eventStreams":[{"type":"sse","endpoint":{"requestUri":"/e"}}]}"#
        );
    }
}
