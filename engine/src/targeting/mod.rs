//! Targeting rules: JsonLogic plus flagd's operators, compiled once per flag set.

mod budget;
mod cbor;
mod coerce;
mod compile;
mod eval;
mod expr;
mod fractional;
mod murmur3;
mod semver;

pub use budget::{Budget, BudgetExceeded, BudgetKind};
pub use fractional::FractionalMode;

pub(crate) use budget::Meter;
pub(crate) use compile::Compiler;
pub(crate) use eval::Scope;
pub(crate) use expr::Expr;
