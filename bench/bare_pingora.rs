//! `bare-pingora`: the baseline for `bench/run.sh`. A plain Pingora 0.9.1 HTTP pass-through,
//! round robin over the given upstreams, no body read, no filters: what tokengate would cost
//! if it did nothing. Same Pingora version, thread count and upstream pool size as tokengate.
//!
//! ```text
//! bare-pingora --listen 127.0.0.1:7001 --upstream 127.0.0.1:7101 --upstream 127.0.0.1:7102 --threads 2
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench fails loudly

use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;
use pingora_proxy::{ProxyHttp, Session};

#[derive(Parser)]
#[command(
    name = "bare-pingora",
    about = "Bare Pingora pass-through (benchmark baseline)"
)]
struct Args {
    #[arg(long)]
    listen: String,
    /// Upstream `ip:port`; repeatable (round robin).
    #[arg(long, required = true)]
    upstream: Vec<String>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Per-connection read buffer; unset keeps Pingora's default (64 KiB). The benchmarks pass
    /// tokengate's default (0: `client_read_buffer_bytes`) so the two are equally tuned.
    #[arg(long)]
    read_buffer_bytes: Option<usize>,
    /// Pingora's `work_stealing` (default true): `--work-stealing false` gives each worker
    /// thread its own runtime, as tokengate's `[server] work_stealing = false` does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    work_stealing: bool,
}

struct Bare(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let backend = self.0.select(b"", 256).ok_or_else(|| {
            pingora_core::Error::explain(pingora_core::ErrorType::ConnectNoRoute, "no upstream")
        })?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let conf = ServerConf {
        threads: args.threads,
        work_stealing: args.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/bare-pingora-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/bare-pingora-{}.sock", std::process::id()),
        upstream_keepalive_pool_size: 128,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let upstreams = LoadBalancer::try_from_iter(args.upstream.iter().map(String::as_str))
        .expect("upstream addresses");
    let mut proxy =
        pingora_proxy::http_proxy_service(&server.configuration, Bare(Arc::new(upstreams)));
    match args.read_buffer_bytes {
        Some(bytes) => proxy.add_listener(
            pingora_core::listeners::ListenerConfig::tcp(&args.listen)
                .l4_buffer(pingora_core::listeners::L4BufferSettings::default().read(bytes)),
        ),
        None => proxy.add_tcp(&args.listen),
    }
    server.add_service(proxy);
    println!("LISTENING {}", args.listen);
    server.run_forever();
}
