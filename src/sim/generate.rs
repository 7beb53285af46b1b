//! Deterministic "model": token text, prompt token counts and embedding vectors.
//!
//! Token `i` of choice `c` is a word picked by hashing `(seed, c, i)`, so the same seed
//! always yields the same text. Some words are multi-byte UTF-8 on purpose, to exercise
//! byte-level SSE parsing in the proxy.

use serde_json::Value;

/// Every entry is one token. The leading space makes the concatenated text read as words.
pub const WORDS: &[&str] = &[
    " the",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " lazy",
    " dog",
    " GPU",
    " tensor",
    " cache",
    " token",
    " stream",
    " replica",
    " proxy",
    " edge",
    " latency",
    " batch",
    " kernel",
    " model",
    " prompt",
    " reply",
    " queue",
    " route",
    " and",
    " of",
    " to",
    " in",
    " café",
    " naïve",
    " 日本",
    " emoji🙂",
    " Zürich",
    " façade",
    " données",
    " ñandú",
    " Ελλάδα",
    " fast",
];

/// Extra prompt tokens per chat message, standing in for the chat template's role markers.
pub const CHAT_TOKENS_PER_MESSAGE: u64 = 3;

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash step.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Text of token `index` of choice `choice` for `seed`.
pub fn token_text(seed: u64, choice: u32, index: u64) -> &'static str {
    let hash = mix64(mix64(seed) ^ mix64(index.wrapping_add(u64::from(choice) << 40)));
    // The modulo result is < WORDS.len(), so the cast cannot truncate.
    WORDS[(hash % WORDS.len() as u64) as usize]
}

/// The full text of one choice with `count` tokens.
pub fn choice_text(seed: u64, choice: u32, count: u64) -> String {
    (0..count).map(|i| token_text(seed, choice, i)).collect()
}

/// Whitespace-separated words in `text`: the simulator's tokenizer.
pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Prompt tokens of a chat request: words in every message's text content
/// (string content or `{"type":"text","text":..}` parts) plus
/// [`CHAT_TOKENS_PER_MESSAGE`] per message.
pub fn chat_prompt_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(|message| {
            let words = match message.get("content") {
                Some(Value::String(text)) => count_words(text),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .map(count_words)
                    .sum(),
                _ => 0,
            };
            words + CHAT_TOKENS_PER_MESSAGE
        })
        .sum()
}

/// One prompt / embedding input after splitting a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptItem<'a> {
    Text(&'a str),
    /// Pre-tokenised input: a list of token ids.
    TokenIds(usize),
}

impl PromptItem<'_> {
    /// Tokens of this item: words for text, one per id for token lists.
    pub fn tokens(&self) -> u64 {
        match self {
            PromptItem::Text(text) => count_words(text),
            PromptItem::TokenIds(len) => *len as u64,
        }
    }
}

/// Splits a completion `prompt` or embedding `input` into its items, following the
/// OpenAI forms: a string, a list of strings, a list of token ids, or a list of lists
/// of token ids. Returns `None` for any other shape.
pub fn prompt_items(value: &Value) -> Option<Vec<PromptItem<'_>>> {
    match value {
        Value::String(text) => Some(vec![PromptItem::Text(text)]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            Some(vec![PromptItem::TokenIds(items.len())])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Some(PromptItem::Text(text)),
                Value::Array(ids) if ids.iter().all(Value::is_u64) => {
                    Some(PromptItem::TokenIds(ids.len()))
                }
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// FNV-1a over the input, so each distinct input gets its own vector.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl PromptItem<'_> {
    /// A hash identifying this input, used to derive its embedding.
    pub fn fingerprint(&self) -> u64 {
        match self {
            PromptItem::Text(text) => fnv1a(text.as_bytes()),
            PromptItem::TokenIds(len) => mix64(*len as u64),
        }
    }
}

/// A deterministic unit-length embedding of `dim` floats for the input with `fingerprint`.
pub fn embedding_vector(seed: u64, fingerprint: u64, dim: usize) -> Vec<f32> {
    let base = mix64(seed ^ fingerprint);
    let raw: Vec<f64> = (0..dim as u64)
        .map(|i| (mix64(base ^ mix64(i)) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    raw.iter()
        .map(|v| if norm > 0.0 { (v / norm) as f32 } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_seed_same_text_other_seed_other_text() {
        assert_eq!(choice_text(7, 0, 50), choice_text(7, 0, 50));
        assert_ne!(choice_text(7, 0, 50), choice_text(8, 0, 50));
        assert_ne!(choice_text(7, 0, 50), choice_text(7, 1, 50));
    }

    #[test]
    fn text_is_a_prefix_when_more_tokens_are_asked() {
        let short = choice_text(3, 0, 10);
        assert!(choice_text(3, 0, 20).starts_with(&short));
    }

    #[test]
    fn every_word_is_one_token_with_leading_space() {
        for word in WORDS {
            assert!(word.starts_with(' '), "{word:?}");
            assert_eq!(count_words(word), 1, "{word:?}");
        }
        assert!(WORDS.iter().any(|w| w.len() != w.chars().count()));
    }

    #[test]
    fn generated_text_counts_back_to_its_token_count() {
        assert_eq!(count_words(&choice_text(1, 0, 123)), 123);
    }

    #[test]
    fn chat_prompt_tokens_counts_words_plus_per_message_overhead() {
        let messages = vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": [{"type": "text", "text": "hello  there world"}]}),
            json!({"role": "assistant", "content": null}),
        ];
        assert_eq!(chat_prompt_tokens(&messages), 2 + 3 + 3 * 3);
        assert_eq!(chat_prompt_tokens(&[]), 0);
    }

    #[test]
    fn prompt_items_accepts_openai_forms() {
        let single = json!("a b c");
        assert_eq!(prompt_items(&single), Some(vec![PromptItem::Text("a b c")]));
        let batch = json!(["a", "b c"]);
        let items = prompt_items(&batch).unwrap_or_default();
        assert_eq!(items.iter().map(PromptItem::tokens).sum::<u64>(), 3);
        assert_eq!(
            prompt_items(&json!([1, 2, 3])),
            Some(vec![PromptItem::TokenIds(3)])
        );
        let ids = json!([[1, 2], [3]]);
        assert_eq!(prompt_items(&ids).map(|v| v.len()), Some(2));
        assert_eq!(prompt_items(&json!(5)), None);
        assert_eq!(prompt_items(&json!([])), None);
        assert_eq!(prompt_items(&json!(["a", 1])), None);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let hello = PromptItem::Text("hello").fingerprint();
        let world = PromptItem::Text("world").fingerprint();
        let a = embedding_vector(0, hello, 16);
        assert_eq!(a.len(), 16);
        assert_eq!(a, embedding_vector(0, hello, 16));
        assert_ne!(a, embedding_vector(0, world, 16));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
