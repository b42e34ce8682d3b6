//! The rollout editor: a flag's variants as whole percentages that add up to 100, written as
//! flagd's `fractional` targeting (users bucketed by their targeting key, flagd's default). The
//! commonest edit without JSON; what it produces goes through the same review (the engine's
//! check, the side-by-side diff) and the same guarded save as any other edit.

use serde_json::{Map, Value, json};

use super::html::{self, escape};

/// Why a submitted rollout was not taken; nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("the flag has no variants to roll out")]
    NoVariants,
    #[error("the percentage for variant {variant:?} is {text:?}, not a whole number from 0 to 100")]
    NotAPercentage { variant: String, text: String },
    #[error("the percentages add up to {0}, not 100")]
    Sum(u32),
}

/// The flag's variants in order, each with the percentage its targeting gives it now: known
/// only when the targeting is exactly a `fractional` split over variant names (anything else,
/// rules or a custom bucketing expression, shows empty fields and is replaced on save).
pub fn current(definition: &Value) -> Vec<(String, Option<u32>)> {
    let variants: Vec<String> = definition
        .get("variants")
        .and_then(Value::as_object)
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    let split = plain_fractional(definition);
    variants
        .into_iter()
        .map(|variant| {
            let pct = split.as_ref().map(|split| {
                split
                    .iter()
                    .find(|(name, _)| *name == variant)
                    .map_or(0, |(_, pct)| *pct)
            });
            (variant, pct)
        })
        .collect()
}

/// `targeting` as `[(variant, percent)]` when it is `{"fractional": [["a", w], ...]}`.
fn plain_fractional(definition: &Value) -> Option<Vec<(String, u32)>> {
    let arms = definition
        .get("targeting")?
        .as_object()
        .filter(|t| t.len() == 1)?
        .get("fractional")?
        .as_array()?;
    let weights: Vec<(String, f64)> = arms
        .iter()
        .map(|arm| {
            let pair = arm.as_array().filter(|p| p.len() == 2)?;
            Some((pair[0].as_str()?.to_owned(), pair[1].as_f64()?))
        })
        .collect::<Option<_>>()?;
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return None;
    }
    Some(
        weights
            .into_iter()
            .map(|(name, w)| (name, (w * 100.0 / total).round().clamp(0.0, 100.0) as u32))
            .collect(),
    )
}

/// The split a form gives: field `pct_<i>` for the flag's `i`th variant (in `current`'s order),
/// an empty field being 0.
pub fn parse(
    variants: &[(String, Option<u32>)],
    field: impl Fn(&str) -> String,
) -> Result<Vec<(String, u32)>, RolloutError> {
    if variants.is_empty() {
        return Err(RolloutError::NoVariants);
    }
    let mut split = Vec::with_capacity(variants.len());
    for (i, (variant, _)) in variants.iter().enumerate() {
        let text = field(&format!("pct_{i}"));
        let trimmed = text.trim();
        let pct = if trimmed.is_empty() {
            0
        } else {
            trimmed
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| RolloutError::NotAPercentage {
                    variant: variant.clone(),
                    text: text.chars().take(20).collect(),
                })?
        };
        split.push((variant.clone(), pct));
    }
    let sum: u32 = split.iter().map(|(_, p)| p).sum();
    if sum != 100 {
        return Err(RolloutError::Sum(sum));
    }
    Ok(split)
}

/// `definition` with its targeting replaced by the split (variants at 0 % left out).
pub fn apply(definition: &Value, split: &[(String, u32)]) -> Value {
    let arms: Vec<Value> = split
        .iter()
        .filter(|(_, pct)| *pct > 0)
        .map(|(variant, pct)| json!([variant, pct]))
        .collect();
    let mut out = definition.as_object().cloned().unwrap_or_else(Map::new);
    out.insert("targeting".into(), json!({ "fractional": arms }));
    Value::Object(out)
}

/// The rollout section of a flag page: a labelled percentage field per variant.
pub fn section(url: &str, csrf: &str, version: i64, variants: &[(String, Option<u32>)]) -> String {
    if variants.is_empty() {
        return String::new();
    }
    let fields: String = variants
        .iter()
        .enumerate()
        .map(|(i, (variant, pct))| {
            format!(
                "<label for=\"pct_{i}\">{name} %</label>\
                 <input id=\"pct_{i}\" name=\"pct_{i}\" type=\"number\" min=\"0\" max=\"100\" \
                 step=\"1\" inputmode=\"numeric\" value=\"{value}\">",
                name = escape(variant),
                value = pct.map(|p| p.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    format!(
        "<section aria-labelledby=\"rollout-h\"><h2 id=\"rollout-h\">Rollout</h2>\
         <p>Whole percentages per variant, adding up to 100; users are split by their targeting \
         key. Saving replaces the flag's targeting with this split.</p>\
         <form method=\"post\" action=\"{url}/rollout\" class=\"stack\">{csrf}\
         <input type=\"hidden\" name=\"expected_version\" value=\"{version}\">{fields}\
         <button type=\"submit\" id=\"review-rollout\">Review rollout</button></form></section>",
        csrf = html::csrf_field(csrf),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(targeting: Value) -> Value {
        json!({"state": "ENABLED", "variants": {"on": true, "off": false},
               "defaultVariant": "off", "targeting": targeting})
    }

    #[test]
    fn a_plain_fractional_split_reads_as_percentages_and_anything_else_as_unknown() {
        let table = [
            (
                json!({"fractional": [["on", 25], ["off", 75]]}),
                vec![("off", Some(75)), ("on", Some(25))],
            ),
            // Weights need not add up to 100.
            (
                json!({"fractional": [["on", 1], ["off", 3]]}),
                vec![("off", Some(75)), ("on", Some(25))],
            ),
            // A variant the split leaves out is at 0 %.
            (
                json!({"fractional": [["on", 100]]}),
                vec![("off", Some(0)), ("on", Some(100))],
            ),
            (
                json!({"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]}),
                vec![("off", None), ("on", None)],
            ),
            // A custom bucketing expression is not the plain form.
            (
                json!({"fractional": [{"var": "email"}, ["on", 50], ["off", 50]]}),
                vec![("off", None), ("on", None)],
            ),
        ];
        for (targeting, expected) in table {
            let got = current(&flag(targeting.clone()));
            let expected: Vec<(String, Option<u32>)> = expected
                .into_iter()
                .map(|(v, p)| (v.to_owned(), p))
                .collect();
            assert_eq!(got, expected, "{targeting}");
        }
    }

    /// Form fields, and the split (or refusal) they give.
    type Row = (
        &'static [(&'static str, &'static str)],
        Result<Vec<(&'static str, u32)>, RolloutError>,
    );

    #[test]
    fn a_form_must_give_whole_percentages_adding_up_to_100() {
        let variants = current(&flag(Value::Null));
        let table: [Row; 6] = [
            (
                &[("pct_0", "70"), ("pct_1", "30")],
                Ok(vec![("off", 70), ("on", 30)]),
            ),
            (
                &[("pct_0", ""), ("pct_1", "100")],
                Ok(vec![("off", 0), ("on", 100)]),
            ),
            (
                &[("pct_0", "70"), ("pct_1", "20")],
                Err(RolloutError::Sum(90)),
            ),
            (
                &[("pct_0", "-5"), ("pct_1", "105")],
                Err(RolloutError::NotAPercentage {
                    variant: "off".into(),
                    text: "-5".into(),
                }),
            ),
            (
                &[("pct_0", "12.5"), ("pct_1", "87.5")],
                Err(RolloutError::NotAPercentage {
                    variant: "off".into(),
                    text: "12.5".into(),
                }),
            ),
            (
                &[("pct_0", "0"), ("pct_1", "101")],
                Err(RolloutError::NotAPercentage {
                    variant: "on".into(),
                    text: "101".into(),
                }),
            ),
        ];
        for (fields, expected) in table {
            let got = parse(&variants, |name| {
                fields
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
                    .unwrap_or_default()
            });
            let expected = expected.map(|split| {
                split
                    .into_iter()
                    .map(|(v, p)| (v.to_owned(), p))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, expected, "{fields:?}");
        }
        assert_eq!(parse(&[], |_| String::new()), Err(RolloutError::NoVariants));
    }

    #[test]
    fn applying_a_split_replaces_the_targeting_and_keeps_the_rest() {
        let before = flag(json!({"if": [true, "on", null]}));
        let after = apply(&before, &[("off".into(), 0), ("on".into(), 100)]);
        assert_eq!(after["targeting"], json!({"fractional": [["on", 100]]}));
        assert_eq!(after["variants"], before["variants"]);
        assert_eq!(after["defaultVariant"], "off");
        assert_eq!(
            current(&after),
            vec![("off".into(), Some(0)), ("on".into(), Some(100))]
        );
    }

    #[test]
    fn variant_names_are_escaped_in_the_form() {
        let variants = vec![("<script>".to_owned(), Some(100))];
        let html = section("/ui/sets/s/flags/f", "c", 1, &variants);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}
