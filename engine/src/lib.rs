//! Bunting's flag engine: reads flagd flag definitions, compiles their targeting rules once, and
//! resolves flags for evaluation contexts.
//!
//! The engine does no I/O and knows nothing of async runtimes, networks or stores: the server,
//! the actors and in-process users all call the same two steps.
//!
//! ```
//! use bunting_engine::{compile, CompileOptions, EvaluationContext, Reason};
//!
//! let definition = r#"{"flags": {"new-checkout": {
//!     "state": "ENABLED",
//!     "variants": {"on": true, "off": false},
//!     "defaultVariant": "off",
//!     "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on"]}
//! }}}"#;
//! let compiled = compile(definition, &CompileOptions::default()).unwrap();
//! let ctx = EvaluationContext::new().with("email", "ada@example.com");
//! let resolution = compiled.flag_set.resolve_bool("new-checkout", &ctx);
//! assert_eq!(resolution.value, Some(true));
//! assert_eq!(resolution.reason, Reason::TargetingMatch);
//! ```

mod context;
mod definition;
mod diagnostic;
mod flag;
mod flag_set;
mod json_text;
mod limits;
mod resolution;
mod rule;
mod targeting;

pub use context::{ContextError, EvaluationContext};
pub use definition::{CompileOptions, Compiled, Dialect, compile, compile_value};
pub use diagnostic::{DefinitionError, Diagnostic, DiagnosticSummary, LimitKind, Severity};
pub use flag::{BrokenFlag, Entry, Flag, FlagState, Metadata, Variant, VariantKind};
pub use flag_set::{FlagSet, FlagType};
pub use json_text::parse_document;
pub use limits::Limits;
pub use resolution::{ErrorCode, Reason, Resolution, ResolveError};
pub use rule::Rule;
pub use targeting::{Budget, BudgetExceeded, BudgetKind, FractionalMode};
