//! URLs that carry credentials (the PostgreSQL and Redis URLs) and the only form of them that
//! may be shown: in logs, error messages, metric labels and status answers.
//!
//! A `postgres://bunting:PASSWORD@db/flags` printed once into a log line or a `/metrics` label
//! (which is scraped anonymously) leaks the password to whoever reads them. So everything that
//! names a dependency by its URL holds a [`RedactedUrl`], built by redacting the raw text, and
//! the raw text itself lives only in a [`SecretUrl`] (or the config it came from) whose `Debug`
//! prints the redacted form too.

use std::fmt;

/// Printed in place of a URL that does not parse: its text may be anything, a secret included.
const UNPARSEABLE: &str = "<unparseable url>";

/// Printed in place of the whole user information (user name and password).
const HIDDEN: &str = "***";

/// Query parameters whose value is, or points at, a credential (libpq's `password`,
/// `sslpassword`, `sslkey`; Redis' `password`/`pass`; tokens). Matched as substrings of the
/// lower-cased key, so `sslpassword` and `auth_token` are caught without being listed.
const SECRET_PARAMS: &[&str] = &["pass", "pwd", "secret", "token", "key", "auth", "cred"];

/// A URL with its credentials removed: user information replaced by `***`, query parameters
/// that carry secrets and the fragment dropped. A text that does not parse is shown as
/// `<unparseable url>`, nothing of it. A bare `host:port` (a Scylla contact point) is kept.
///
/// The only constructor redacts, so a `RedactedUrl` cannot hold a secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Redacts `raw`.
    pub fn new(raw: &str) -> RedactedUrl {
        RedactedUrl(redact(raw).unwrap_or_else(|| UNPARSEABLE.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A URL that may carry credentials, kept to connect with. `Debug` and `Display` print only the
/// redacted form; [`SecretUrl::expose`] is for handing the URL to a driver, nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    raw: String,
    redacted: RedactedUrl,
}

impl SecretUrl {
    pub fn new(raw: impl Into<String>) -> SecretUrl {
        let raw = raw.into();
        let redacted = RedactedUrl::new(&raw);
        SecretUrl { raw, redacted }
    }

    /// The URL with its credentials: for the driver that connects, never for printing.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    pub fn redacted(&self) -> &RedactedUrl {
        &self.redacted
    }
}

impl From<String> for SecretUrl {
    fn from(raw: String) -> SecretUrl {
        SecretUrl::new(raw)
    }
}

impl From<&str> for SecretUrl {
    fn from(raw: &str) -> SecretUrl {
        SecretUrl::new(raw)
    }
}

/// Config files name their PostgreSQL and Redis URLs as plain strings; they are held as
/// `SecretUrl` from the moment they are read, so printing a config (`{:?}`) shows no password.
impl<'de> serde::Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SecretUrl, D::Error> {
        String::deserialize(deserializer).map(SecretUrl::new)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.redacted, f)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted, f)
    }
}

/// `text` with every word that looks like a URL (it contains `://`) redacted: for messages
/// written by others (a TOML or driver error) that may quote a URL. Words end at whitespace and
/// quotes.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") {
            out.push_str(RedactedUrl::new(word).as_str());
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The redacted text of `raw`, or `None` when it does not parse as a URL with an authority.
fn redact(raw: &str) -> Option<String> {
    // A bare `host:port` or `user:pw@host:port` would parse as scheme `host` with an opaque
    // path, hiding nothing; giving it a scheme makes its user information recognisable.
    let bare = !raw.contains("://");
    let mut url = if bare {
        url::Url::parse(&format!("tcp://{raw}")).ok()?
    } else {
        url::Url::parse(raw).ok()?
    };
    if url.cannot_be_a_base() || (bare && url.host_str().is_none_or(str::is_empty)) {
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        url.set_password(None).ok()?;
        url.set_username(HIDDEN).ok()?;
    }
    if url.query().is_some() {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| {
                let key = key.to_lowercase();
                !SECRET_PARAMS.iter().any(|secret| key.contains(secret))
            })
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    url.set_fragment(None);
    let text = url.to_string();
    Some(if bare {
        text.strip_prefix("tcp://")?.to_owned()
    } else {
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_shape() {
        let cases = [
            // (raw, shown)
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:s3cr3t@127.0.0.1:6379",
                "redis://***@127.0.0.1:6379",
            ),
            (
                "redis://default:s3cr3t@127.0.0.1:6379/2",
                "redis://***@127.0.0.1:6379/2",
            ),
            (
                "rediss://user@cache.internal:6380",
                "rediss://***@cache.internal:6380",
            ),
            (
                "postgres://bunting:s3cr3t@db:5432/flags",
                "postgres://***@db:5432/flags",
            ),
            ("postgres://db/flags", "postgres://db/flags"),
            (
                "postgres://bunting@db/flags?password=s3cr3t&sslmode=require",
                "postgres://***@db/flags?sslmode=require",
            ),
            (
                "postgresql:///flags?host=/run/pg&sslpassword=s3cr3t&sslkey=/k.pem",
                "postgresql:///flags?host=%2Frun%2Fpg",
            ),
            ("postgres://db/flags?PassWord=s3cr3t", "postgres://db/flags"),
            ("redis://[::1]:6379", "redis://[::1]:6379"),
            ("redis://:s3cr3t@[::1]:6379/0", "redis://***@[::1]:6379/0"),
            (
                "redis+unix:///tmp/redis.sock?pass=s3cr3t&db=1",
                "redis+unix:///tmp/redis.sock?db=1",
            ),
            ("redis://h:1/#s3cr3t", "redis://h:1/"),
            ("127.0.0.1:9042", "127.0.0.1:9042"),
            ("scylla-0.scylla:9042", "scylla-0.scylla:9042"),
            ("cassandra:s3cr3t@scylla:9042", "***@scylla:9042"),
            ("redis://:s3cr3t@exa mple:6379", UNPARSEABLE),
            ("not a url s3cr3t", UNPARSEABLE),
            ("mailto:s3cr3t", UNPARSEABLE),
            ("", UNPARSEABLE),
            ("redis://:s3cr3t@127.0.0.1:99999", UNPARSEABLE),
        ];
        for (raw, shown) in cases {
            let redacted = RedactedUrl::new(raw);
            assert_eq!(redacted.as_str(), shown, "redacting {raw:?}");
            assert!(
                !format!("{redacted} {redacted:?}").contains("s3cr3t"),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn redacts_urls_quoted_in_messages() {
        assert_eq!(
            redact_urls("invalid type: string \"postgres://u:s3cr3t@db/x\", expected u64"),
            "invalid type: string \"postgres://***@db/x\", expected u64"
        );
        assert_eq!(redact_urls("no url here: a:b@c"), "no url here: a:b@c");
        assert_eq!(
            redact_urls("at redis://:s3cr3t@h:1 now"),
            "at redis://***@h:1 now"
        );
    }

    #[test]
    fn secret_url_prints_only_the_redacted_form() {
        let url = SecretUrl::new("postgres://u:s3cr3t@db/flags");
        assert_eq!(url.expose(), "postgres://u:s3cr3t@db/flags");
        assert_eq!(format!("{url}"), "postgres://***@db/flags");
        assert_eq!(format!("{url:?}"), "\"postgres://***@db/flags\"");
        assert_eq!(
            format!("{:?}", Some(&url)),
            "Some(\"postgres://***@db/flags\")"
        );
    }
}
