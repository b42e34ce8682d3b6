//! Input limits: how large a flag-definition document may be before the engine refuses it.
//!
//! The defaults are far above anything a real deployment writes (the largest real sets are a few
//! thousand flags and a few megabytes) and far below what hurts a node: they exist so that a
//! hostile or broken document (a 67 MB file of 100,000 flags) is refused in a few milliseconds
//! instead of being compiled, stored and served.
//!
//! Where each limit is enforced, and why:
//!
//! - the document's size, its flag count and its `$evaluators` count refuse the whole document
//!   ([`DefinitionError::Limit`](crate::DefinitionError)): they are about the set, no single flag
//!   is to blame, and checking them first keeps the cost of refusing small;
//! - a flag's key length, its variant count and its variant names' lengths are per-flag error
//!   diagnostics: the flag becomes a `BrokenFlag` resolving `PARSE_ERROR` and the others are
//!   served, as with any other problem confined to one flag (and the admin API and the file
//!   watcher, which refuse any diagnostic, refuse the document all the same).

use std::borrow::Cow;

/// Size limits on flag-definition documents. Part of [`CompileOptions`](crate::CompileOptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// The document's JSON text, in bytes (checked by [`compile`](crate::compile) on the text).
    pub max_document_bytes: usize,
    /// Flags in one document.
    pub max_flags: usize,
    /// Variants of one flag.
    pub max_variants: usize,
    /// A flag key, in bytes.
    pub max_flag_key_bytes: usize,
    /// A variant name, in bytes.
    pub max_variant_name_bytes: usize,
    /// Entries of `$evaluators`.
    pub max_evaluators: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_document_bytes: 16 << 20,
            max_flags: 20_000,
            max_variants: 1_000,
            max_flag_key_bytes: 1_024,
            max_variant_name_bytes: 1_024,
            max_evaluators: 1_000,
        }
    }
}

/// The longest prefix of a key or name that messages echo, in bytes: enough to recognise it, and a
/// megabyte-long key never reaches a log line whole.
pub(crate) const SHOWN_BYTES: usize = 256;

/// `text` as messages show it: whole up to [`SHOWN_BYTES`], otherwise cut at a character boundary
/// with an ellipsis.
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    if text.len() <= SHOWN_BYTES {
        return Cow::Borrowed(text);
    }
    let mut end = SHOWN_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// `text` quoted for a message that does not otherwise say how long it is: [`shown`], and the
/// original length when it was cut (a caller who sent a megabyte-long key learns that it did).
pub(crate) fn quoted(text: &str) -> String {
    if text.len() <= SHOWN_BYTES {
        format!("{text:?}")
    } else {
        format!("{:?} ({} bytes)", shown(text), text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_cuts_long_text_at_a_character_boundary() {
        assert_eq!(shown("short"), "short");
        let long = "é".repeat(200); // 400 bytes
        let cut = shown(&long);
        assert!(cut.ends_with('…'));
        assert_eq!(cut.len(), 256 + '…'.len_utf8());
        assert_eq!(quoted("short"), "\"short\"");
        assert!(
            quoted(&long).ends_with("…\" (400 bytes)"),
            "{}",
            quoted(&long)
        );
    }
}
