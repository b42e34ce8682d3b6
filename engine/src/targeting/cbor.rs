//! Deterministic CBOR (RFC 8949 section 4.2.1) for JSON values, written straight into a hasher.
//! flagd's in-process evaluators hash this encoding of the fractional bucketing value, so every
//! byte must match theirs: shortest heads, integral numbers as integers, floats in the shortest
//! width that holds them exactly, map keys sorted by their encoded bytes.

use serde_json::{Map, Number, Value};

use super::murmur3::Murmur3;

const UNSIGNED: u8 = 0;
const NEGATIVE: u8 = 1;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;

pub(crate) fn write_value(out: &mut Murmur3, v: &Value) {
    match v {
        Value::Null => out.write(&[0xf6]),
        Value::Bool(false) => out.write(&[0xf4]),
        Value::Bool(true) => out.write(&[0xf5]),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_text(out, s),
        Value::Array(items) => {
            write_head(out, ARRAY, items.len() as u64);
            for item in items {
                write_value(out, item);
            }
        }
        Value::Object(map) => write_map(out, map),
    }
}

pub(crate) fn write_text(out: &mut Murmur3, s: &str) {
    write_head(out, TEXT, s.len() as u64);
    out.write(s.as_bytes());
}

pub(crate) fn write_array_head(out: &mut Murmur3, len: usize) {
    write_head(out, ARRAY, len as u64);
}

fn write_map(out: &mut Murmur3, map: &Map<String, Value>) {
    // Text keys sort bytewise by their encoding: the head carries the length, so shorter keys come
    // first and equal lengths compare by content.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    write_head(out, MAP, entries.len() as u64);
    for (k, v) in entries {
        write_text(out, k);
        write_value(out, v);
    }
}

fn write_head(out: &mut Murmur3, major: u8, n: u64) {
    let m = major << 5;
    // Each arm's range check makes the narrowing exact.
    #[allow(clippy::cast_possible_truncation)]
    match n {
        0..=23 => out.write(&[m | n as u8]),
        24..=0xff => out.write(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.write(&[m | 25]);
            out.write(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.write(&[m | 26]);
            out.write(&(n as u32).to_be_bytes());
        }
        _ => {
            out.write(&[m | 27]);
            out.write(&n.to_be_bytes());
        }
    }
}

fn write_number(out: &mut Murmur3, n: &Number) {
    if let Some(u) = n.as_u64() {
        return write_head(out, UNSIGNED, u);
    }
    if let Some(i) = n.as_i64() {
        // Negative: CBOR stores -1 - i.
        return write_head(out, NEGATIVE, (-1 - i) as u64);
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    write_float_or_integer(out, f);
}

fn write_float_or_integer(out: &mut Murmur3, f: f64) {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    if f.fract() == 0.0 && (-TWO_63..TWO_64).contains(&f) {
        // Integral and in range: exact as an integer (-0.0 becomes 0).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        if f >= 0.0 {
            return write_head(out, UNSIGNED, f as u64);
        } else {
            return write_head(out, NEGATIVE, (-1.0 - f) as u64);
        }
    }
    if let Some(half) = to_half_exact(f) {
        out.write(&[0xf9]);
        out.write(&half.to_be_bytes());
        return;
    }
    #[allow(clippy::cast_possible_truncation)]
    let single = f as f32;
    if f64::from(single) == f || f.is_nan() {
        out.write(&[0xfa]);
        out.write(&single.to_be_bytes());
        return;
    }
    out.write(&[0xfb]);
    out.write(&f.to_be_bytes());
}

/// The IEEE 754 half-precision bits of `f`, when a half holds it exactly.
fn to_half_exact(f: f64) -> Option<u16> {
    if f.is_nan() {
        return Some(0x7e00);
    }
    let bits = f.to_bits();
    let sign = ((bits >> 63) as u16) << 15;
    if f.is_infinite() {
        return Some(sign | 0x7c00);
    }
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mant = bits & ((1u64 << 52) - 1);
    if (-14..=15).contains(&exp) {
        // Normal half: 10 mantissa bits, so the low 42 of the double's 52 must be zero.
        if mant & ((1u64 << 42) - 1) != 0 {
            return None;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return Some(sign | (((exp + 15) as u16) << 10) | (mant >> 42) as u16);
    }
    if (-24..-14).contains(&exp) {
        // Subnormal half: value = m * 2^-24 with m < 1024.
        let full = (1u64 << 52) | mant;
        #[allow(clippy::cast_sign_loss)]
        let shift = (42 + (-14 - exp)) as u32;
        if full & ((1u64 << shift) - 1) != 0 {
            return None;
        }
        #[allow(clippy::cast_possible_truncation)]
        return Some(sign | (full >> shift) as u16);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Encodes into a capturing sink by hashing and also collecting bytes through a shadow
    /// encoder: the simplest way is to compare hashes of known encodings.
    fn hash_of(v: &Value) -> u32 {
        let mut m = Murmur3::new(0);
        write_value(&mut m, v);
        m.finish()
    }

    fn hash_bytes(b: &[u8]) -> u32 {
        super::super::murmur3::hash(b)
    }

    #[test]
    fn encodes_rfc_8949_examples() {
        // Appendix A of RFC 8949.
        let cases: &[(Value, &[u8])] = &[
            (json!(0), &[0x00]),
            (json!(23), &[0x17]),
            (json!(24), &[0x18, 0x18]),
            (json!(1000), &[0x19, 0x03, 0xe8]),
            (json!(1_000_000), &[0x1a, 0x00, 0x0f, 0x42, 0x40]),
            (json!(-1), &[0x20]),
            (json!(-1000), &[0x39, 0x03, 0xe7]),
            (json!(1.5), &[0xf9, 0x3e, 0x00]),
            (json!(100000.0), &[0x1a, 0x00, 0x01, 0x86, 0xa0]),
            (json!(5.960_464_477_539_063e-8), &[0xf9, 0x00, 0x01]),
            (
                json!(3.402_823_466_385_288_6e38),
                &[0xfa, 0x7f, 0x7f, 0xff, 0xff],
            ),
            (
                json!(1.1),
                &[0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a],
            ),
            (
                json!(-4.1),
                &[0xfb, 0xc0, 0x10, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66],
            ),
            (json!(false), &[0xf4]),
            (json!(null), &[0xf6]),
            (json!("a"), &[0x61, 0x61]),
            (json!([1, [2, 3]]), &[0x82, 0x01, 0x82, 0x02, 0x03]),
            (
                json!({"b": 1, "a": 2}),
                &[0xa2, 0x61, 0x61, 0x02, 0x61, 0x62, 0x01],
            ),
            (
                json!({"aa": 1, "b": 2}),
                &[0xa2, 0x61, 0x62, 0x02, 0x62, 0x61, 0x61, 0x01],
            ),
        ];
        for (value, bytes) in cases {
            assert_eq!(hash_of(value), hash_bytes(bytes), "{value}");
        }
    }
}
