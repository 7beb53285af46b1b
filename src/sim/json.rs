//! Tiny JSON writers that keep key order.
//!
//! `serde_json::Value` sorts keys (no `preserve_order` feature in this crate), but the
//! simulator must emit keys in the same order as vLLM / trtllm-serve, so objects are
//! written field by field.

use serde::Serialize;

/// Writes one compact JSON object, keys in insertion order.
#[derive(Debug)]
pub struct JsonObject {
    buf: String,
    empty: bool,
}

impl Default for JsonObject {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonObject {
    pub fn new() -> Self {
        Self {
            buf: String::from("{"),
            empty: true,
        }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.buf.push(',');
        }
        self.empty = false;
        push_json_string(&mut self.buf, key);
        self.buf.push(':');
    }

    /// Adds `key: value`, serialising `value` with serde_json.
    pub fn field<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Self {
        self.key(key);
        // Serialising plain data (strings, numbers, Option, Vec) cannot fail.
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
        self.buf.push_str(&text);
        self
    }

    /// Adds `key: null`.
    pub fn null(mut self, key: &str) -> Self {
        self.key(key);
        self.buf.push_str("null");
        self
    }

    /// Adds `key: <already serialised JSON>`.
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.buf.push_str(json);
        self
    }

    /// Adds `key: <nested object>`.
    pub fn object(self, key: &str, value: JsonObject) -> Self {
        let nested = value.finish();
        self.raw(key, &nested)
    }

    /// Adds the field only when `condition` holds.
    pub fn field_if<T: Serialize + ?Sized>(self, condition: bool, key: &str, value: &T) -> Self {
        if condition {
            self.field(key, value)
        } else {
            self
        }
    }

    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// Joins already serialised JSON values into an array.
pub fn json_array<I: IntoIterator<Item = String>>(items: I) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
    out
}

fn push_json_string(buf: &mut String, s: &str) {
    let text = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    buf.push_str(&text);
}

/// Serialises a string the way Python's `json.dumps` does by default:
/// `ensure_ascii=True`, so every non-ASCII character becomes `\uXXXX` (UTF-16 units).
pub fn python_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keeps_insertion_order() {
        let json = JsonObject::new()
            .field("z", &1)
            .field("a", "x")
            .null("m")
            .object("o", JsonObject::new().field("k", &true))
            .finish();
        assert_eq!(json, r#"{"z":1,"a":"x","m":null,"o":{"k":true}}"#);
    }

    #[test]
    fn empty_object_and_array() {
        assert_eq!(JsonObject::new().finish(), "{}");
        assert_eq!(json_array(Vec::new()), "[]");
        assert_eq!(json_array(vec!["1".into(), "2".into()]), "[1,2]");
    }

    #[test]
    fn python_string_escapes_non_ascii() {
        assert_eq!(python_json_string("café \"q\"\n"), r#""caf\u00e9 \"q\"\n""#);
        assert_eq!(python_json_string("🙂"), r#""\ud83d\ude42""#);
    }
}
