//! A targeting rule on its own, outside any flag: for callers that need JsonLogic with flagd's
//! operators for something other than choosing a variant (experiment audiences, tests, tools).

use serde_json::Value;

use crate::context::EvaluationContext;
use crate::diagnostic::{Diagnostic, Diagnostics, Path, Severity};
use crate::targeting::{Budget, BudgetExceeded, Compiler, Expr, FractionalMode, Meter, Scope};

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
        let expr = Compiler::new(None, fractional, Budget::default()).compile(
            rule,
            &Path::root("rule"),
            &mut diags,
        );
        if diags.0.iter().any(|d| d.severity == Severity::Error) {
            Err(diags.0)
        } else {
            Ok((Rule { expr }, diags.0))
        }
    }

    /// Evaluates the rule; `flag_key` is what `$flagd.flagKey` and `fractional` see. Null when the
    /// evaluation exceeds the default [`Budget`] (see [`Rule::try_evaluate`]).
    pub fn evaluate(&self, flag_key: &str, ctx: &EvaluationContext) -> Value {
        self.try_evaluate(flag_key, ctx).unwrap_or(Value::Null)
    }

    /// Evaluates the rule, or says which budget the evaluation exceeded.
    pub fn try_evaluate(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> Result<Value, BudgetExceeded> {
        let meter = Meter::new(Budget::default());
        let scope = Scope {
            root: ctx.fields(),
            data: None,
            flag_key,
            now: ctx.now(),
            meter: &meter,
        };
        let value = self.expr.eval(&scope).into_owned();
        meter.exceeded().map_or(Ok(value), Err)
    }
}
