//! Arbitrary bytes as a flag-definition document: compiling must never panic, and every flag of
//! whatever compiles must resolve (as every type) without panicking.
#![no_main]

use bunting_engine::{CompileOptions, EvaluationContext, FractionalMode, compile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for fractional in [FractionalMode::Cbor, FractionalMode::String, FractionalMode::LegacyFloat] {
        let options = CompileOptions {
            fractional,
            ..CompileOptions::default()
        };
        let Ok(compiled) = compile(text, &options) else {
            return;
        };
        let set = &compiled.flag_set;
        let ctx = EvaluationContext::new()
            .with_targeting_key("fuzz-user")
            .with("email", "a@b.c")
            .with("version", "1.2.3")
            .at_time(1_700_000_000);
        for entry in set.entries() {
            let key = entry.key();
            let _ = set.resolve_bool(key, &ctx);
            let _ = set.resolve_string(key, &ctx);
            let _ = set.resolve_int(key, &ctx);
            let _ = set.resolve_float(key, &ctx);
            let _ = set.resolve_object(key, &ctx);
        }
        let _ = set.resolve_all(&ctx).count();
    }
});
