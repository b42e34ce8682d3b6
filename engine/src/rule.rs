//! A targeting rule on its own, outside any flag: for callers that need JsonLogic with flagd's
//! operators for something other than choosing a variant (experiment audiences, tests, tools).

use serde_json::Value;

use crate::context::EvaluationContext;
use crate::diagnostic::{Diagnostic, Diagnostics, Path, Severity};
use crate::targeting::{Compiler, Expr, FractionalMode, Scope};

#[derive(Debug, Clone)]
pub struct Rule {
    expr: Expr,
}

impl Rule {
    /// Compiles a rule. Errors refuse it; warnings (things flagd tolerates) are returned beside it.
    pub fn compile(
        rule: &Value,
        fractional: FractionalMode,
    ) -> Result<(Rule, Vec<Diagnostic>), Vec<Diagnostic>> {
        let mut diags = Diagnostics::default();
        let expr = Compiler::new(None, fractional).compile(rule, &Path::root("rule"), &mut diags);
        if diags.0.iter().any(|d| d.severity == Severity::Error) {
            Err(diags.0)
        } else {
            Ok((Rule { expr }, diags.0))
        }
    }

    /// Evaluates the rule; `flag_key` is what `$flagd.flagKey` and `fractional` see.
    pub fn evaluate(&self, flag_key: &str, ctx: &EvaluationContext) -> Value {
        let scope = Scope {
            root: ctx.fields(),
            data: None,
            flag_key,
            now: ctx.now(),
        };
        self.expr.eval(&scope).into_owned()
    }
}
