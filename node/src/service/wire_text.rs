//! Client input echoed back in a status message. A status travels in the `grpc-message` trailer,
//! and clients cap metadata (8 KiB is common): a 1 MB flag key echoed whole turned NOT_FOUND into
//! the client's own RESOURCE_EXHAUSTED. Every key, set id or selector a status quotes goes
//! through [`quoted`].

use std::fmt;

/// The most bytes of a client's string a status message repeats.
pub const MAX_ECHOED_BYTES: usize = 256;

/// The longest status message that quotes client input in a form this crate does not control
/// (an engine's or store's error message): room for a quoted key and the sentence around it.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `message`, cut to [`MAX_MESSAGE_BYTES`] on a character boundary, saying how long it was.
pub fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let end = boundary(&message, MAX_MESSAGE_BYTES);
    format!(
        "{}... (message of {} bytes cut)",
        message.get(..end).unwrap_or_default(),
        message.len()
    )
}

/// The largest character boundary in `text` at or below `at`.
fn boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// `text` quoted as Rust's `{:?}` does, cut to [`MAX_ECHOED_BYTES`] on a character boundary;
/// when cut, says how long the original was.
pub fn quoted(text: &str) -> impl fmt::Display + '_ {
    Quoted(text)
}

struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= MAX_ECHOED_BYTES {
            return write!(f, "{text:?}");
        }
        let end = boundary(text, MAX_ECHOED_BYTES);
        let shown = text.get(..end).unwrap_or_default();
        write!(f, "{shown:?}... ({} bytes, first {end} shown)", text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_char_boundary_and_says_how_long_it_was() {
        let table: &[(String, &str)] = &[
            ("key".to_owned(), "\"key\""),
            ("a\"b".to_owned(), "\"a\\\"b\""),
            ("x".repeat(256), ""),
            ("x".repeat(1 << 20), "... (1048576 bytes, first 256 shown)"),
            // 255 ASCII bytes then a 2-byte character across the cut.
            (
                format!("{}é", "x".repeat(255)),
                "... (257 bytes, first 255 shown)",
            ),
        ];
        for (input, expected) in table {
            let shown = quoted(input).to_string();
            assert!(shown.len() < MAX_ECHOED_BYTES + 64, "{shown}");
            assert!(
                shown.contains(expected),
                "{shown:?} should contain {expected:?}"
            );
        }
        assert_eq!(
            quoted(&"x".repeat(256)).to_string().len(),
            258,
            "256 bytes fit whole"
        );
    }

    #[test]
    fn long_messages_are_bounded() {
        assert_eq!(bounded("short".to_owned()), "short");
        let long = bounded(format!("flag \"{}\" not found", "é".repeat(1 << 19)));
        assert!(long.len() <= MAX_MESSAGE_BYTES + 64, "{}", long.len());
        assert!(long.ends_with("(message of 1048593 bytes cut)"), "{long}");
    }
}
