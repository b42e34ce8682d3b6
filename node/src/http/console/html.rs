//! The console's pages as strings. No template engine: markup is written in `format!` calls here
//! and in the pages, and every string that did not come from this source file (a flag key, a
//! definition, an error message, a token's name) goes through [`escape`] first, the one escaping
//! function. Text is escaped for both element content and double- or single-quoted attributes,
//! so one function serves every place a value is put.

use std::fmt::Write;

/// `text` safe to put in an element or a quoted attribute: `& < > " '` as character references.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one URL path segment (flag keys may hold `/`, `?` or spaces): everything but RFC
/// 3986's unreserved characters percent-encoded. The result is then safe in an attribute too.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Who is signed in, for the header of every page: the name shown and the sign-out form's CSRF
/// token.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    pub who: &'a str,
    pub csrf: &'a str,
}

/// A whole page: `body` is markup built by the caller (its own values escaped), `title` is text.
pub fn page(title: &str, header: Option<Header<'_>>, body: &str) -> String {
    let nav = match header {
        None => String::new(),
        Some(h) => format!(
            "<nav aria-label=\"Console\"><a href=\"/ui/sets\">Flag sets</a>\
             <a href=\"/ui/experiments\">Experiments</a><a href=\"/ui/tokens\">Tokens</a><a href=\"/ui/cluster\">Cluster</a>\
             <span class=\"who\">Signed in as {who}</span>\
             <form method=\"post\" action=\"/ui/sign-out\" class=\"inline\">{csrf}\
             <button type=\"submit\">Sign out</button></form></nav>",
            who = escape(h.who),
            csrf = csrf_field(h.csrf),
        ),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Bunting</title>\
         <link rel=\"stylesheet\" href=\"/ui/console.css\">\
         <link rel=\"icon\" href=\"/ui/favicon.svg\" type=\"image/svg+xml\"></head>\
         <body><header><span class=\"brand\">Bunting</span>{nav}</header>\
         <main><h1>{title}</h1>{body}</main></body></html>\n",
        title = escape(title),
    )
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    )
}

/// A notice above a page's content: `kind` is `error` or `ok`, `text` is escaped.
pub fn notice(kind: &str, text: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!(
        "<p class=\"notice {kind}\" role=\"{role}\">{}</p>",
        escape(text)
    )
}

/// Two JSON documents side by side, each line marked when the other side lacks it.
pub fn side_by_side(left_title: &str, left: &str, right_title: &str, right: &str) -> String {
    let column = |title: &str, text: &str, other: &str| {
        let others: std::collections::HashSet<&str> = other.lines().collect();
        let mut lines = String::new();
        for line in text.lines() {
            let class = if others.contains(line) {
                "same"
            } else {
                "changed"
            };
            let _ = write!(lines, "<span class=\"{class}\">{}</span>", escape(line));
        }
        format!(
            "<section class=\"column\"><h2>{}</h2><pre>{lines}</pre></section>",
            escape(title)
        )
    };
    format!(
        "<div class=\"diff\">{}{}</div>",
        column(left_title, left, right),
        column(right_title, right, left)
    )
}

/// `value` as indented JSON text (what the editor and the diffs show).
pub fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_as_a_table() {
        let cases = [
            ("plain", "plain"),
            (
                "<script>alert(1)</script>",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            (
                "\"><img src=x onerror=alert(1)>",
                "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;",
            ),
            ("' onmouseover='x", "&#39; onmouseover=&#39;x"),
            ("a & b", "a &amp; b"),
            ("&lt;", "&amp;lt;"),
            ("ünïcödé ✓", "ünïcödé ✓"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(escape(input), expected, "{input}");
        }
    }

    #[test]
    fn pages_escape_every_interpolated_string() {
        let evil = "<script>x()</script>\"'";
        let html = page(
            evil,
            Some(Header {
                who: evil,
                csrf: evil,
            }),
            &notice("error", evil),
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("\"'"), "{html}");
        let diff = side_by_side(evil, evil, evil, "{}");
        assert!(!diff.contains("<script>"), "{diff}");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        for (key, expected) in [
            ("new-checkout_v2.1~", "new-checkout_v2.1~"),
            ("a/b?c d", "a%2Fb%3Fc%20d"),
            ("\"><x", "%22%3E%3Cx"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(segment(key), expected);
        }
    }
}
