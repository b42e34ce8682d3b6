//! Validators (ETags) and `If-None-Match`.
//!
//! A bulk evaluation's answer is a function of the flag set's definition, the node's `fractional`
//! mode and the context, unless a flag of the set reads the clock (`$flagd.timestamp`) or a
//! running experiment puts per-user state in it. For such a *pure* set the validator is computed
//! from those inputs alone ([`for_inputs`]), so a revalidation that matches is answered 304
//! before any evaluation: flagd evaluates first and hashes the body after. For every other
//! answer the validator is a digest of the body itself ([`for_body`]), so it is never wrong, only
//! less cheap. Both are SHA-256, cut to 128 bits, over inputs that name their kind, so the two
//! can never collide with each other.

use axum::http::HeaderValue;
use bunting_engine::FlagSet;
use sha2::{Digest, Sha256};

/// The validator of a pure set's bulk answer: the set's name, definition fingerprint and version,
/// the fractional mode, and the context exactly as the request carried it (a context with the
/// same fields in another order is another validator: a revalidation miss, never a wrong hit).
pub fn for_inputs(set: &str, flags: &FlagSet, fractional: &str, context: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"bunting-ofrep-bulk-inputs-v1\0");
    for part in [set.as_bytes(), fractional.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(flags.fingerprint().to_be_bytes());
    hash.update(flags.version().to_be_bytes());
    hash.update(context);
    quoted(&hash.finalize())
}

/// The validator of an answer body.
pub fn for_body(body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"bunting-ofrep-bulk-body-v1\0");
    hash.update(body);
    quoted(&hash.finalize())
}

/// The strong validator of a flag set's definition: its version and fingerprint (a file node
/// counts versions from 1 at every start, so the version alone could name two definitions).
pub fn for_definition(flags: &FlagSet) -> String {
    format!("\"{}-{:016x}\"", flags.version(), flags.fingerprint())
}

fn quoted(digest: &[u8]) -> String {
    let cut = digest.get(..16).unwrap_or(digest);
    format!("\"{}\"", hex::encode(cut))
}

/// Whether `If-None-Match` (a list of validators, or `*`) names `etag`. The comparison is weak,
/// as RFC 9110 wants for `If-None-Match`: `W/"x"` matches `"x"`.
pub fn matches(if_none_match: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(Ok(list)) = if_none_match.map(HeaderValue::to_str) else {
        return false;
    };
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_is_a_weak_list_match() {
        let etag = "\"abc\"";
        let cases: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some("\"abc\""), true),
            (Some("W/\"abc\""), true),
            (Some("\"x\", \"abc\""), true),
            (Some("*"), true),
            (Some("\"abd\""), false),
            (Some("abc"), false),
            (Some(""), false),
        ];
        for (header, expected) in cases {
            let value = header.map(|h| HeaderValue::from_str(h).unwrap());
            assert_eq!(matches(value.as_ref(), etag), *expected, "{header:?}");
        }
    }

    #[test]
    fn inputs_and_bodies_never_share_a_validator() {
        assert_ne!(for_body(b""), for_body(b"x"));
        assert_eq!(for_body(b"x"), for_body(b"x"));
        assert_eq!(for_body(b"x").len(), 34);
    }
}
