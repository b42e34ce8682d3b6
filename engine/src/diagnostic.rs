//! Problems found while reading a flag definition, each tied to the place it was found.

use std::fmt;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The definition breaks the flagd schema but flagd's own evaluators serve it anyway, so Bunting
    /// serves it the same way (a negative fractional weight is clamped to 0, say). `bunting validate`
    /// still reports it, and the admin API refuses it.
    Warning,
    /// The flag (or the flag-set entry) cannot be served as written. The flag resolves with
    /// `PARSE_ERROR`, exactly as flagd treats a flag it cannot evaluate; sources that load whole files
    /// (the file watcher, the admin API) refuse the definition instead.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem in a flag definition: where it is (a JSON path such as
/// `flags.welcome-banner.targeting.if[1]`) and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.severity, self.message)
        } else {
            write!(f, "{}: {}: {}", self.severity, self.path, self.message)
        }
    }
}

/// A definition that cannot become a flag set at all: not JSON, or not shaped like a flag file.
/// Problems confined to one flag are [`Diagnostic`]s instead, so one bad flag does not take the
/// others down.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DefinitionError {
    #[error("flag definition is not valid JSON: {0}")]
    Json(String),
    #[error("{path}: {message}")]
    Shape { path: String, message: String },
}

/// A JSON path under construction while walking a definition. Cheap to extend: the compiler builds
/// paths only to report problems, and a clean definition reports none.
#[derive(Debug, Clone, Default)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn root(name: &str) -> Path {
        Path(name.to_owned())
    }

    pub(crate) fn key(&self, key: &str) -> Path {
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'));
        if self.0.is_empty() {
            Path(key.to_owned())
        } else if plain {
            Path(format!("{}.{key}", self.0))
        } else {
            Path(format!("{}[{key:?}]", self.0))
        }
    }

    pub(crate) fn index(&self, index: usize) -> Path {
        Path(format!("{}[{index}]", self.0))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Collects diagnostics while compiling.
#[derive(Debug, Default)]
pub(crate) struct Diagnostics(pub(crate) Vec<Diagnostic>);

impl Diagnostics {
    pub(crate) fn error(&mut self, path: &Path, message: impl Into<String>) {
        self.push(Severity::Error, path, message.into());
    }

    pub(crate) fn warning(&mut self, path: &Path, message: impl Into<String>) {
        self.push(Severity::Warning, path, message.into());
    }

    fn push(&mut self, severity: Severity, path: &Path, message: String) {
        self.0.push(Diagnostic {
            severity,
            path: path.as_str().to_owned(),
            message,
        });
    }

    pub(crate) fn errors_since(&self, mark: usize) -> impl Iterator<Item = &Diagnostic> {
        self.0[mark..]
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}
