//! The shared secret that ractor_cluster's handshake checks.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest cookie accepted; a cookie is a password, not a document.
const MAX_COOKIE_LEN: usize = 4096;

/// The cluster cookie. Nodes prove they know it in ractor_cluster's challenge-response handshake
/// (SHA-256 digests of random challenges, so the cookie itself never crosses the wire). It
/// authenticates peers; it does not encrypt the traffic that follows.
///
/// Read it from an environment variable or a secret file, never from a file in the repository.
/// `Debug` prints `<redacted>` so the cookie cannot end up in logs through a config dump.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(String);

#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    #[error("cookie environment variable {0} is not set")]
    EnvMissing(String),
    #[error("cookie environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read cookie file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cookie from {0} is empty")]
    Empty(String),
    #[error("cookie from {origin} is {len} bytes; the limit is {MAX_COOKIE_LEN}")]
    TooLong { origin: String, len: usize },
}

impl Cookie {
    /// A cookie from a string; a trailing newline is removed.
    pub fn new(secret: impl Into<String>) -> Result<Cookie, CookieError> {
        Cookie::checked(secret.into(), "the given string")
    }

    /// The cookie in environment variable `var`.
    pub fn from_env(var: &str) -> Result<Cookie, CookieError> {
        let value = std::env::var(var).map_err(|e| match e {
            std::env::VarError::NotPresent => CookieError::EnvMissing(var.to_string()),
            std::env::VarError::NotUnicode(_) => CookieError::EnvNotUnicode(var.to_string()),
        })?;
        Cookie::checked(value, &format!("environment variable {var}"))
    }

    /// The cookie in the file at `path` (a secret file such as a Kubernetes secret mount).
    pub fn from_file(path: &Path) -> Result<Cookie, CookieError> {
        let value = std::fs::read_to_string(path).map_err(|source| CookieError::File {
            path: path.to_path_buf(),
            source,
        })?;
        Cookie::checked(value, &format!("file {}", path.display()))
    }

    fn checked(mut value: String, origin: &str) -> Result<Cookie, CookieError> {
        // Secret files and `echo` add a newline that is not part of the secret.
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        if value.is_empty() {
            return Err(CookieError::Empty(origin.to_string()));
        }
        if value.len() > MAX_COOKIE_LEN {
            return Err(CookieError::TooLong {
                origin: origin.to_string(),
                len: value.len(),
            });
        }
        Ok(Cookie(value))
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let cookie = Cookie::new("hunter2").unwrap();
        assert_eq!(format!("{cookie:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(cookie)), "Some(<redacted>)");
    }

    #[test]
    fn trailing_newline_trimmed_but_inner_whitespace_kept() {
        assert_eq!(Cookie::new("s3cret\n").unwrap().secret(), "s3cret");
        assert_eq!(Cookie::new("s3cret\r\n").unwrap().secret(), "s3cret");
        assert_eq!(Cookie::new(" a b ").unwrap().secret(), " a b ");
    }

    #[test]
    fn empty_refused() {
        assert!(matches!(Cookie::new(""), Err(CookieError::Empty(_))));
        assert!(matches!(Cookie::new("\n"), Err(CookieError::Empty(_))));
    }

    #[test]
    fn errors_name_the_variable_and_the_file() {
        let err = Cookie::from_env("BUNTING_TEST_COOKIE_THAT_IS_NOT_SET").unwrap_err();
        assert!(
            err.to_string()
                .contains("BUNTING_TEST_COOKIE_THAT_IS_NOT_SET"),
            "{err}"
        );

        let missing = Path::new("/nonexistent/bunting/cookie");
        let err = Cookie::from_file(missing).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/bunting/cookie"),
            "{err}"
        );
    }

    #[test]
    fn reads_a_secret_file() {
        let path = std::env::temp_dir().join(format!("bunting-cookie-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let cookie = Cookie::from_file(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(cookie.unwrap().secret(), "from-file");

        let empty =
            std::env::temp_dir().join(format!("bunting-cookie-empty-{}", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let err = Cookie::from_file(&empty).unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(
            err.to_string().contains("is empty")
                && err.to_string().contains("bunting-cookie-empty"),
            "{err}"
        );
    }
}
