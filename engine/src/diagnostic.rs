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
    /// An object with a key repeated (JSON allows it, serde_json would keep the last): the
    /// object's path, the key (cut to 256 bytes), which member of the object repeats it (1-based),
    /// and where that member ends in the text.
    #[error(
        "{}duplicate key {key:?}: member {member} of the object repeats an earlier member (line {line}, column {column})",
        if path.is_empty() { String::new() } else { format!("{path}: ") }
    )]
    DuplicateKey {
        path: String,
        key: String,
        member: usize,
        line: usize,
        column: usize,
    },
    /// The document is over one of the [`Limits`](crate::Limits) that apply to a whole set.
    #[error("{}", limit_message(*kind, *found, *limit))]
    Limit {
        kind: LimitKind,
        found: usize,
        limit: usize,
    },
}

/// Which whole-document limit a [`DefinitionError::Limit`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// `Limits::max_document_bytes`
    DocumentBytes,
    /// `Limits::max_flags`
    Flags,
    /// `Limits::max_evaluators`
    Evaluators,
}

fn limit_message(kind: LimitKind, found: usize, limit: usize) -> String {
    match kind {
        LimitKind::DocumentBytes => format!(
            "the document is {found} bytes, over the limit of {limit} bytes (max_document_bytes)"
        ),
        LimitKind::Flags => {
            format!("flags: {found} flags, over the limit of {limit} flags per set (max_flags)")
        }
        LimitKind::Evaluators => {
            format!("$evaluators: {found} evaluators, over the limit of {limit} (max_evaluators)")
        }
    }
}

/// The first diagnostics of a long list and how many more there are, for reporting a definition
/// with thousands of problems in a bounded number of lines. `Display` writes one line per shown
/// diagnostic, then `... and N more` when some were left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagnosticSummary<'d> {
    pub shown: &'d [Diagnostic],
    pub omitted: usize,
}

impl<'d> DiagnosticSummary<'d> {
    /// At most `limit` diagnostics, in order, and the count of the rest.
    pub fn new(diagnostics: &'d [Diagnostic], limit: usize) -> DiagnosticSummary<'d> {
        let shown = diagnostics.get(..limit).unwrap_or(diagnostics);
        DiagnosticSummary {
            shown,
            omitted: diagnostics.len() - shown.len(),
        }
    }
}

impl fmt::Display for DiagnosticSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.shown.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        if self.omitted > 0 {
            if !self.shown.is_empty() {
                f.write_str("\n")?;
            }
            write!(f, "... and {} more", self.omitted)?;
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(i: usize) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            path: format!("flags.f{i}"),
            message: "missing \"state\"".to_owned(),
        }
    }

    #[test]
    fn a_summary_shows_the_first_diagnostics_and_counts_the_rest() {
        let many: Vec<Diagnostic> = (0..5).map(diagnostic).collect();
        let summary = DiagnosticSummary::new(&many, 2);
        assert_eq!((summary.shown.len(), summary.omitted), (2, 3));
        assert_eq!(
            summary.to_string(),
            "error: flags.f0: missing \"state\"\nerror: flags.f1: missing \"state\"\n... and 3 more"
        );
        let all = DiagnosticSummary::new(&many[..1], 100);
        assert_eq!((all.shown.len(), all.omitted), (1, 0));
        assert_eq!(
            DiagnosticSummary::new(&many, 0).to_string(),
            "... and 5 more"
        );
    }
}
