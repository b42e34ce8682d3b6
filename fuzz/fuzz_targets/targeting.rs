//! A rule and a context from the same input (split at the first NUL byte): compiling and
//! evaluating must never panic, whatever either contains.
#![no_main]

use bunting_engine::{EvaluationContext, FractionalMode, Rule};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let (Some(rule), Some(context)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(rule) = serde_json::from_slice::<Value>(rule) else {
        return;
    };
    let ctx = match serde_json::from_slice::<Value>(context)
        .ok()
        .and_then(|v| EvaluationContext::from_value(v).ok())
    {
        Some(ctx) => ctx,
        None => EvaluationContext::new().with_targeting_key("fuzz-user"),
    };
    for mode in [FractionalMode::Cbor, FractionalMode::String, FractionalMode::LegacyFloat] {
        if let Ok((compiled, _warnings)) = Rule::compile(&rule, mode) {
            let _ = compiled.evaluate("fuzz-flag", &ctx.clone().at_time(1_700_000_000));
        }
    }
});
