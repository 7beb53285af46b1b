//! Small borrowed serde views of the JSON events we meter. Unknown fields are ignored; strings
//! we only need to measure are never copied ([`TextLen`]).

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

use super::chunk_skim::EventFacts;

/// One streamed event: OpenAI/vLLM/trtllm chat or completion chunk, or a Triton
/// `generate_stream` response.
#[derive(Deserialize)]
pub(crate) struct Chunk<'a> {
    #[serde(default)]
    pub choices: Option<Vec<Choice>>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
    /// Triton generate extension.
    #[serde(default)]
    pub text_output: Option<TextLen>,
}

#[derive(Deserialize)]
pub(crate) struct Choice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Option<Delta>,
    /// Completions.
    #[serde(default)]
    pub text: Option<TextLen>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Delta {
    #[serde(default)]
    pub content: Option<TextLen>,
    #[serde(default)]
    pub reasoning_content: Option<TextLen>,
    /// Newest vLLM name of `reasoning_content`.
    #[serde(default)]
    pub reasoning: Option<TextLen>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
pub(crate) struct ToolCallDelta {
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
pub(crate) struct FunctionDelta {
    #[serde(default)]
    pub name: Option<TextLen>,
    #[serde(default)]
    pub arguments: Option<TextLen>,
}

impl Delta {
    /// Characters of generated text (content and reasoning).
    pub fn text_chars(&self) -> u64 {
        [&self.content, &self.reasoning_content, &self.reasoning]
            .into_iter()
            .flatten()
            .map(|t| t.0)
            .sum()
    }

    /// Characters of tool-call names and arguments, `None` without tool calls.
    pub fn tool_call_chars(&self) -> Option<u64> {
        let calls = self.tool_calls.as_ref().filter(|c| !c.is_empty())?;
        Some(
            calls
                .iter()
                .filter_map(|c| c.function.as_ref())
                .map(|f| f.name.map_or(0, |t| t.0) + f.arguments.map_or(0, |t| t.0))
                .sum(),
        )
    }
}

impl<'a> Chunk<'a> {
    /// What this event contributes to the meter (the same facts
    /// [`super::chunk_skim::skim`] reads from ordinary chunks without serde).
    pub(crate) fn facts(&self) -> EventFacts<'_> {
        let mut facts = EventFacts {
            has_choices: self.choices.as_ref().is_some_and(|c| !c.is_empty()),
            empty_choices: self.choices.as_ref().is_some_and(Vec::is_empty),
            usage: self.usage,
            error: self.error.is_some(),
            ..EventFacts::default()
        };
        for choice in self.choices.iter().flatten() {
            let mut chars = choice.text.map_or(0, |t| t.0);
            if let Some(delta) = &choice.delta {
                chars += delta.text_chars();
                if let Some(tool_chars) = delta.tool_call_chars() {
                    facts.tool_call_deltas += 1;
                    facts.tool_call_chars += tool_chars;
                }
            }
            if chars > 0 {
                facts.content_deltas += 1;
                facts.text_chars += chars;
            }
            if let Some(reason) = &choice.finish_reason {
                facts.finishes.push((choice.index, reason.as_str()));
            }
        }
        if let Some(text) = self.text_output.filter(|t| t.0 > 0) {
            facts.content_deltas += 1;
            facts.text_chars += text.0;
        }
        facts
    }
}

/// The `usage` object, in any key order. `total_tokens` may be missing in odd servers.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl WireUsage {
    pub fn cached_tokens(&self) -> Option<u64> {
        self.prompt_tokens_details.and_then(|d| d.cached_tokens)
    }

    pub fn reasoning_tokens(&self) -> Option<u64> {
        self.completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
    }

    /// `total_tokens`, or prompt + completion when the server left it out.
    pub fn total(&self) -> u64 {
        self.total_tokens.unwrap_or_else(|| {
            self.prompt_tokens
                .unwrap_or(0)
                .saturating_add(self.completion_tokens.unwrap_or(0))
        })
    }
}

/// A JSON string measured in characters without being copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TextLen(pub u64);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CharCount;
        impl Visitor<'_> for CharCount {
            type Value = TextLen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TextLen, E> {
                Ok(TextLen(s.chars().count() as u64))
            }
        }
        d.deserialize_str(CharCount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_len_counts_chars_of_escaped_and_plain_strings() {
        let d: Delta = serde_json::from_str(r#"{"content":"caf\u00e9 日本 🙂\n"}"#).unwrap();
        assert_eq!(d.text_chars(), 10);
    }

    #[test]
    fn usage_in_any_key_order_and_with_nulls() {
        let a: WireUsage = serde_json::from_str(
            r#"{"prompt_tokens":7,"total_tokens":23,"completion_tokens":16,"prompt_tokens_details":{"cached_tokens":1}}"#,
        )
        .unwrap();
        let b: WireUsage = serde_json::from_str(
            r#"{"completion_tokens":16,"prompt_tokens_details":null,"prompt_tokens":7}"#,
        )
        .unwrap();
        assert_eq!(a.total(), b.total());
        assert_eq!(a.cached_tokens(), Some(1));
        assert_eq!(b.cached_tokens(), None);
    }

    #[test]
    fn chunk_ignores_unknown_fields_and_null_usage() {
        let c: Chunk<'_> = serde_json::from_str(
            r#"{"id":"x","choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":null}],"usage":null,"error":null}"#,
        )
        .unwrap();
        assert!(c.usage.is_none() && c.error.is_none());
        let choices = c.choices.unwrap();
        assert_eq!(choices[0].index, 1);
        assert_eq!(
            choices[0].delta.as_ref().unwrap().tool_call_chars(),
            Some(2)
        );
    }
}
