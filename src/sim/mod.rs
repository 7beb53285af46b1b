//! `tokengate-sim`: a replica simulator that behaves on the wire like vLLM,
//! trtllm-serve or Triton's OpenAI frontend (see `/work/shared/UPSTREAMS.md`).
//!
//! It is the upstream for the demo and the integration tests: deterministic text,
//! exact SSE shapes, real in-flight metrics, injectable faults and a `/sim/` control API
//! that records every request it received.

mod anthropic;
mod control;
pub mod engine;
pub mod faults;
pub mod generate;
mod json;
pub mod lax;
mod metrics;
pub mod request;
mod responses;
mod responses_api;
mod server;
#[cfg(test)]
mod server_tests;
pub mod state;
mod stream;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::Faults;
pub use state::SimState;

/// Which upstream server to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// vLLM 0.11 OpenAI server.
    Vllm,
    /// TensorRT-LLM's trtllm-serve.
    Trtllm,
    /// Triton Inference Server's OpenAI-compatible frontend.
    TritonOpenai,
}

/// How the simulator times its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineMode {
    /// Fixed delays (`--ttft-ms`, `--itl-ms`): deterministic, for protocol tests.
    Fixed,
    /// A model of vLLM's scheduler: FIFO queue, prefix cache, prefill and decode costs.
    Batching,
}

/// Command line and start-up configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "tokengate-sim",
    version,
    about = "LLM replica simulator (vLLM / trtllm-serve / Triton OpenAI) for tokengate tests"
)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port (printed as `LISTENING <addr>`).
    #[arg(long, default_value = "127.0.0.1:8101")]
    pub listen: SocketAddr,
    /// Upstream server to imitate.
    #[arg(long, value_enum, default_value_t = Flavour::Vllm)]
    pub flavour: Flavour,
    /// Served model name; repeatable. The first is the one responses carry (vLLM).
    #[arg(long = "served-model-name", num_args = 1.., default_value = "sim-model")]
    pub served_model_names: Vec<String>,
    /// Completion tokens when the request sets no max_tokens / max_completion_tokens.
    #[arg(long, default_value_t = 16)]
    pub tokens: u64,
    /// Delay before the first content token (header x-sim-ttft-ms overrides).
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Delay between tokens (header x-sim-itl-ms overrides).
    #[arg(long, default_value_t = 0)]
    pub itl_ms: u64,
    /// Seed of the generated text (a request's `seed` field overrides).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scheduler slots (vLLM's `--max-num-seqs`; vLLM's own default is 256, the sim's 8 so a
    /// few test clients can fill it). `fixed` engine: requests beyond it only count as waiting
    /// in the metrics. `batching` engine: they really wait, in FIFO order.
    #[arg(
        long = "max-num-seqs",
        value_name = "N",
        visible_alias = "max-running",
        default_value_t = 8
    )]
    pub max_running: u64,
    /// `fixed`: every request gets `--ttft-ms` and `--itl-ms`, however loaded the replica.
    /// `batching`: a model of vLLM's scheduler (continuous batching, FIFO queue, prefix cache,
    /// prefill and decode costs from the knobs below); `--ttft-ms` / `--itl-ms` are ignored.
    #[arg(long, value_enum, default_value_t = EngineMode::Fixed)]
    pub engine: EngineMode,
    /// `batching`: prefill throughput in prompt tokens per second, for tokens not found in
    /// the prefix cache (one prefill at a time). Default 10000: Llama-3.1-8B on one A100.
    #[arg(long, default_value_t = 10_000.0, value_parser = positive)]
    pub prefill_tokens_per_s: f64,
    /// `batching`: milliseconds per output token with one request running. Default 12
    /// (Llama-3.1-8B, A100: reading 16 GB of weights per step at ~2 TB/s is ≥ 8 ms).
    #[arg(long, default_value_t = 12.0, value_parser = non_negative)]
    pub decode_ms: f64,
    /// `batching`: each further running request adds this fraction of `--decode-ms` to every
    /// step. Default 0.03: ~2× slower steps with 32 running.
    #[arg(long, default_value_t = 0.03, value_parser = non_negative)]
    pub decode_growth: f64,
    /// `batching`: prefix-cache capacity in 16-token (64-byte) blocks, LRU; also the
    /// denominator of `kv_cache_usage_perc`. Default 16384 (262k tokens).
    #[arg(long, default_value_t = 16_384)]
    pub cache_blocks: usize,
    /// `batching`: speed factor dividing every prefill and decode time (0.25 = a quarter of
    /// the speed). Default 1.
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    pub speed: f64,
    /// Length of embedding vectors.
    #[arg(long, default_value_t = 16)]
    pub embedding_dim: usize,
    /// Label echoed in the `x-sim-replica` header and in records; default: the bound address.
    #[arg(long)]
    pub replica_name: Option<String>,
    #[command(flatten)]
    pub faults: Faults,
}

/// A finite number above 0 (rates and speed factors).
fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a number above 0")),
    }
}

/// A finite number ≥ 0 (durations and growth factors).
fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a number ≥ 0")),
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["tokengate-sim"])
    }
}

/// Errors that stop the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Per-process settings shared by all connections.
#[derive(Debug)]
pub(crate) struct App {
    pub config: SimConfig,
    pub replica: String,
    pub state: Arc<SimState>,
    /// Stored Responses API responses of this replica.
    pub stored: Arc<responses_api::Store>,
    /// The batching engine (`--engine batching`).
    pub engine: Option<Arc<engine::Engine>>,
}

impl SimConfig {
    /// The engine settings from the flags.
    pub fn engine_config(&self) -> engine::EngineConfig {
        engine::EngineConfig {
            max_num_seqs: self.max_running,
            prefill_tokens_per_s: self.prefill_tokens_per_s,
            decode_ms: self.decode_ms,
            decode_growth: self.decode_growth,
            cache_blocks: self.cache_blocks,
            speed: self.speed,
        }
    }
}

/// A running simulator (for in-process use; the binary uses [`run`]).
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SimServer {
    /// The bound address (the real port when `--listen` used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Records, counters and faults, as the `/sim/` API sees them.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Stops accepting and closes every open connection.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Binds (after `slow_start_ms`, like vLLM loading weights) and serves in the background.
pub async fn start(config: SimConfig) -> Result<SimServer, SimError> {
    if let Some(delay) = config.faults.slow_start_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let replica = config
        .replica_name
        .clone()
        .unwrap_or_else(|| addr.to_string());
    let state = SimState::new(config.faults.clone());
    let engine = (config.engine == EngineMode::Batching)
        .then(|| engine::Engine::new(config.engine_config()));
    let app = Arc::new(App {
        engine,
        config,
        replica,
        state: Arc::clone(&state),
        stored: Arc::default(),
    });
    let (shutdown, shutdown_requested) = watch::channel(false);
    let task = tokio::spawn(server::serve(listener, app, shutdown_requested));
    Ok(SimServer {
        addr,
        state,
        shutdown,
        task,
    })
}

/// Runs the simulator until Ctrl-C or SIGTERM. Prints `LISTENING <addr>` once bound.
pub fn run(config: SimConfig) -> Result<(), SimError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let server = tokio::select! {
            started = start(config) => started?,
            _ = shutdown_signal() => return Ok(()),
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "LISTENING {}", server.local_addr())?;
        stdout.flush()?;
        drop(stdout);
        log::info!("tokengate-sim listening on {}", server.local_addr());
        shutdown_signal().await;
        log::info!("shutting down");
        server.shutdown().await;
        Ok(())
    });
    // Streams still sleeping in background tasks must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                log::warn!("cannot listen for SIGTERM: {error}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
