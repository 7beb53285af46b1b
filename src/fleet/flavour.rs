//! Which server software a replica runs.

use std::fmt;

/// Which server software a cluster runs: decides health paths, error shapes and usage defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Vllm,
    Trtllm,
    TritonOpenai,
}

impl Flavour {
    pub const NAMES: &'static str = "vllm, trtllm, triton-openai";

    pub fn parse(name: &str) -> Option<Flavour> {
        match name {
            "vllm" => Some(Flavour::Vllm),
            "trtllm" => Some(Flavour::Trtllm),
            "triton-openai" => Some(Flavour::TritonOpenai),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Vllm => "vllm",
            Flavour::Trtllm => "trtllm",
            Flavour::TritonOpenai => "triton-openai",
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client-facing API surface a cluster's replicas may serve (`[[clusters]] serves`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completions,
    /// `/v1/embeddings`
    Embeddings,
    /// Anthropic's `/v1/messages` and `/v1/messages/count_tokens`
    Messages,
    /// OpenAI's `/v1/responses` (and its stored-response routes)
    Responses,
}

impl Surface {
    pub const ALL: [Surface; 5] = [
        Surface::Chat,
        Surface::Completions,
        Surface::Embeddings,
        Surface::Messages,
        Surface::Responses,
    ];
    pub const NAMES: &'static str = "chat, completions, embeddings, messages, responses";

    pub fn parse(name: &str) -> Option<Surface> {
        Surface::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Chat => "chat",
            Surface::Completions => "completions",
            Surface::Embeddings => "embeddings",
            Surface::Messages => "messages",
            Surface::Responses => "responses",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The surfaces a cluster serves: a small set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Surfaces(u8);

impl Surfaces {
    /// What the flavour's server offers natively (UPSTREAMS.md): vLLM every surface;
    /// trtllm-serve and Triton's OpenAI frontend chat, completions and embeddings (they answer
    /// the Anthropic and Responses routes 404, or lack them).
    pub fn for_flavour(flavour: Flavour) -> Surfaces {
        match flavour {
            Flavour::Vllm => Surface::ALL.into_iter().collect(),
            Flavour::Trtllm | Flavour::TritonOpenai => {
                [Surface::Chat, Surface::Completions, Surface::Embeddings]
                    .into_iter()
                    .collect()
            }
        }
    }

    pub fn contains(self, surface: Surface) -> bool {
        self.0 & surface.bit() != 0
    }

    pub fn insert(&mut self, surface: Surface) {
        self.0 |= surface.bit();
    }

    pub fn iter(self) -> impl Iterator<Item = Surface> {
        Surface::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Surface> for Surfaces {
    fn from_iter<I: IntoIterator<Item = Surface>>(iter: I) -> Surfaces {
        let mut set = Surfaces::default();
        for s in iter {
            set.insert(s);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_defaults_and_names_round_trip() {
        let vllm = Surfaces::for_flavour(Flavour::Vllm);
        assert!(Surface::ALL.iter().all(|s| vllm.contains(*s)));
        let trt = Surfaces::for_flavour(Flavour::Trtllm);
        assert!(trt.contains(Surface::Chat) && !trt.contains(Surface::Responses));
        assert!(!trt.contains(Surface::Messages));
        for s in Surface::ALL {
            assert_eq!(Surface::parse(s.as_str()), Some(s));
        }
        assert_eq!(Surface::parse("ollama"), None);
        let set: Surfaces = [Surface::Responses].into_iter().collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![Surface::Responses]);
    }
}
