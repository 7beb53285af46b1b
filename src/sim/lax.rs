//! pydantic v2 "lax mode" coercion, as vLLM's and trtllm-serve's request models apply it: the
//! simulator accepts what they accept, so tests see what a real replica would do with `"n": "5"`
//! or `"stream": "true"` (issue #13).

use serde_json::Value;

/// An integer field: ints; floats with no fractional part (`5.0`, `4e3`); strings holding an
/// integer, optionally with zero decimals and surrounding whitespace (`"5"`, `" 5.00 "`);
/// booleans (`true` → 1). `None`: pydantic answers "Input should be a valid integer".
pub fn int(value: &Value) -> Option<i128> {
    match value {
        Value::Bool(flag) => Some(i128::from(*flag)),
        Value::Number(number) => {
            if let Some(i) = number.as_i64() {
                return Some(i128::from(i));
            }
            if let Some(u) = number.as_u64() {
                return Some(i128::from(u));
            }
            whole_float(number.as_f64()?)
        }
        Value::String(text) => int_str(text.trim()),
        _ => None,
    }
}

fn whole_float(f: f64) -> Option<i128> {
    // pydantic refuses fractions and values beyond i64 ("int_from_float").
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i128)
}

fn int_str(text: &str) -> Option<i128> {
    let (digits, decimals) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if decimals.is_some_and(|d| d.bytes().any(|b| b != b'0')) {
        return None;
    }
    let unsigned = digits.strip_prefix(['-', '+']).unwrap_or(digits);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    digits.replace('_', "").parse().ok()
}

/// A boolean field: booleans; the ints 0/1 (and floats 0.0/1.0); the strings pydantic lists
/// (`"true"`, `"1"`, `"yes"`, `"on"`, `"t"`, `"y"` and their false twins, any case).
pub fn bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::Number(number) => match number.as_f64() {
            Some(0.0) => Some(false),
            Some(1.0) => Some(true),
            _ => None,
        },
        Value::String(text) => match text.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn ints_like_pydantic() {
        for (value, want) in [
            (json!(5), Some(5)),
            (json!(5.0), Some(5)),
            (json!(4e3), Some(4000)),
            (json!("5"), Some(5)),
            (json!(" 4000 "), Some(4000)),
            (json!("4000.0"), Some(4000)),
            (json!("-2"), Some(-2)),
            (json!(true), Some(1)),
            (json!(5.5), None),
            (json!("5.5"), None),
            (json!("4e3"), None),
            (json!("five"), None),
            (json!(""), None),
            (json!([5]), None),
            (json!(null), None),
        ] {
            assert_eq!(super::int(&value), want, "{value}");
        }
    }

    #[test]
    fn bools_like_pydantic() {
        for (value, want) in [
            (json!(true), Some(true)),
            (json!("true"), Some(true)),
            (json!("True"), Some(true)),
            (json!("yes"), Some(true)),
            (json!(1), Some(true)),
            (json!(1.0), Some(true)),
            (json!(0), Some(false)),
            (json!("off"), Some(false)),
            (json!(2), None),
            (json!("maybe"), None),
            (json!(null), None),
        ] {
            assert_eq!(super::bool(&value), want, "{value}");
        }
    }
}
