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
