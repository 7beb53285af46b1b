//! Listening sockets bound here and handed to Pingora through its fd table: the table a
//! zero-downtime upgrade fills, consulted by key when a service builds its listeners
//! (`Fds::add(key, fd)`; pingora-core `listeners/l4.rs`, `ListenerEndpointBuilder::listen`).
//!
//! Why: Pingora 0.9.1 binds inside `run_forever` and never says which port the kernel chose,
//! so `127.0.0.1:0` was unusable and tests had to guess free ports (a race under parallel
//! tests). Binding first lets the process report what it bound (a log line and the
//! `--ready-file`). A process started with `-u` receives the old process's table with the same
//! keys and binds nothing: the hand-over is Pingora's, unchanged.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ListenFds, RuntimeOpts, ShutdownWatch};
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};

/// Pingora's listen backlog (`LISTENER_BACKLOG` in pingora-core `listeners/l4.rs`).
const BACKLOG: u32 = 65535;
/// Like Pingora's own bind: a port still held (e.g. by a process in its grace period) is
/// retried once a second for up to 30 s.
const BIND_TRIES: u32 = 30;

/// One client or admin listener.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The config field, e.g. `listen[0]`, `tls_listen[0]`, `admin_listen`.
    pub field: String,
    pub configured: SocketAddr,
}

impl Endpoint {
    pub fn new(field: impl Into<String>, configured: SocketAddr) -> Endpoint {
        Endpoint {
            field: field.into(),
            configured,
        }
    }

    /// The key in Pingora's fd table, which is also the address the service is given. A fixed
    /// port keys by its address (what every earlier version used, so an upgrade from one
    /// still finds its sockets); port 0 may repeat across fields, so the field makes it unique.
    /// Pingora never parses a key it finds in the table.
    pub fn key(&self) -> String {
        if self.configured.port() == 0 {
            format!("{}#{}", self.configured, self.field)
        } else {
            self.configured.to_string()
        }
    }
}

/// The addresses actually bound, gathered across services; once every endpoint reported, one
/// log line and (if asked) the ready file, written whole (temp file + rename).
pub struct BoundReport {
    expected: usize,
    ready_file: Option<PathBuf>,
    bound: Mutex<BTreeMap<String, SocketAddr>>,
}

impl BoundReport {
    pub fn new(expected: usize, ready_file: Option<PathBuf>) -> Arc<BoundReport> {
        Arc::new(BoundReport {
            expected,
            ready_file,
            bound: Mutex::new(BTreeMap::new()),
        })
    }

    fn bound(&self, field: &str, addr: SocketAddr) {
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        bound.insert(field.to_string(), addr);
        if bound.len() == self.expected {
            let text = ready_json(&bound);
            log::info!("tokengate bound {text}");
            if let Some(path) = &self.ready_file {
                if let Err(e) = write_whole(path, &text) {
                    log::error!("cannot write the ready file {}: {e}", path.display());
                }
            }
        }
    }
}

/// `{"pid":..,"listen":[..],"tls_listen":[..],"admin_listen":".."}` in field order.
fn ready_json(bound: &BTreeMap<String, SocketAddr>) -> String {
    let list = |prefix: &str| -> Vec<String> {
        let mut items: Vec<(usize, String)> = bound
            .iter()
            .filter_map(|(field, addr)| {
                let index = field.strip_prefix(prefix)?.strip_prefix('[')?;
                let index = index.strip_suffix(']')?.parse().ok()?;
                Some((index, addr.to_string()))
            })
            .collect();
        items.sort();
        items.into_iter().map(|(_, a)| a).collect()
    };
    serde_json::json!({
        "pid": std::process::id(),
        "listen": list("listen"),
        "tls_listen": list("tls_listen"),
        "admin_listen": bound.get("admin_listen").map(|a| a.to_string()),
    })
    .to_string()
}

fn write_whole(path: &std::path::Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{text}\n"))?;
    std::fs::rename(&tmp, path)
}

/// A Pingora service whose listeners are in the fd table before it builds them.
pub struct Prebound<S> {
    inner: S,
    endpoints: Vec<Endpoint>,
    report: Arc<BoundReport>,
}

impl<S> Prebound<S> {
    pub fn new(inner: S, endpoints: Vec<Endpoint>, report: Arc<BoundReport>) -> Prebound<S> {
        Prebound {
            inner,
            endpoints,
            report,
        }
    }
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Prebound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        if let Some(table) = &fds {
            for endpoint in &self.endpoints {
                match claim(table, endpoint).await {
                    Ok(addr) => self.report.bound(&endpoint.field, addr),
                    Err(e) => {
                        // Pingora would panic in the service task and leave the process up
                        // without this listener; a clear exit is better for a supervisor.
                        log::error!(
                            "server.{}: cannot listen on {}: {e}",
                            endpoint.field,
                            endpoint.configured
                        );
                        std::process::exit(1);
                    }
                }
            }
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd, ready_notifier)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// The socket under `endpoint`'s key: inherited from the old process (upgrade) or bound now
/// and put in the table (for Pingora to build on, and to pass on at the next upgrade).
async fn claim(table: &ListenFds, endpoint: &Endpoint) -> io::Result<SocketAddr> {
    let key = endpoint.key();
    let inherited = table.lock().get(&key).copied();
    if let Some(fd) = inherited {
        return local_addr(fd);
    }
    let listener = bind(endpoint.configured).await?;
    let addr = listener.local_addr()?;
    // The table owns the descriptor from here; Pingora adopts it (`from_raw_fd`).
    table.lock().add(key, listener.into_raw_fd());
    Ok(addr)
}

async fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let mut tries = 1;
    loop {
        match bind_once(addr) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < BIND_TRIES => {
                log::warn!("{addr} is in use, will try again");
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            result => return result,
        }
    }
}

/// As Pingora binds: SO_REUSEADDR, its backlog; non-blocking (tokio's `into_std`), as the
/// table's descriptors must be.
fn bind_once(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockname, SockaddrStorage};
    let storage: SockaddrStorage = getsockname(fd).map_err(io::Error::from)?;
    if let Some(v4) = storage.as_sockaddr_in() {
        return Ok(SocketAddr::from(*v4));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::from(*v6))
        .ok_or_else(|| io::Error::other("inherited listener is not a TCP/IP socket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_keys_are_unique_and_fixed_ports_keep_their_address() {
        let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let fixed: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(Endpoint::new("listen[0]", fixed).key(), "127.0.0.1:8080");
        assert_ne!(
            Endpoint::new("listen[0]", zero).key(),
            Endpoint::new("admin_listen", zero).key()
        );
    }

    #[test]
    fn ready_json_lists_fields_in_index_order() {
        let mut bound = BTreeMap::new();
        for (field, port) in [("listen[1]", 2), ("listen[0]", 1), ("admin_listen", 3)] {
            bound.insert(field.to_string(), SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let v: serde_json::Value = serde_json::from_str(&ready_json(&bound)).unwrap();
        assert_eq!(
            v["listen"],
            serde_json::json!(["127.0.0.1:1", "127.0.0.1:2"])
        );
        assert_eq!(v["tls_listen"], serde_json::json!([]));
        assert_eq!(v["admin_listen"], "127.0.0.1:3");
    }

    #[tokio::test]
    async fn a_bound_port_zero_socket_reports_the_port_the_kernel_chose() {
        use std::os::fd::AsRawFd;
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        // What a process that inherited the descriptor reads back.
        assert_eq!(local_addr(listener.as_raw_fd()).unwrap(), addr);
        assert!(std::net::TcpStream::connect(addr).is_ok());
    }
}
