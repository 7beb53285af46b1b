//! `tokengate-sim`: the LLM replica simulator used as upstream by the demo and tests.
//! See `tokengate::sim` for the behaviour and `--help` for the flags.

use std::process::ExitCode;

use clap::Parser;
use tokengate::sim::{self, SimConfig};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let config = SimConfig::parse();
    match sim::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tokengate-sim: {error}");
            ExitCode::FAILURE
        }
    }
}
