//! Admission of client connections (issue #13): the connection caps, and each admitted
//! connection wrapped in a [`GuardedStream`] that holds its place and bounds its request
//! headers. Sits in front of the proxy app, so it sees every connection before Pingora reads
//! a byte of it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;

use super::guarded_stream::GuardedStream;
use crate::metrics;
use crate::ratelimit::connections::{ConnectionRefusal, ConnectionTable};
use crate::state::AppState;

/// What a refused HTTP/1 connection is told before it is closed.
const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 99\r\n\r\n\
{\"error\":{\"message\":\"too many client connections\",\"type\":\"server_error\",\"code\":\"connection_limit\"}}";

/// How long a refusal may take to write: a refused client gets no more of our time.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Wraps the proxy app with the connection caps and header deadline.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    state: Arc<AppState>,
    table: Arc<ConnectionTable>,
    refused_total: IntCounter,
    refused_per_ip: IntCounter,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A, state: Arc<AppState>) -> GuardedApp<A> {
        let refused = |reason: ConnectionRefusal| {
            metrics::CLIENT_CONNECTIONS_REFUSED.with_label_values(&[reason.label()])
        };
        GuardedApp {
            inner: Arc::new(inner),
            state,
            table: Arc::new(ConnectionTable::default()),
            refused_total: refused(ConnectionRefusal::Total),
            refused_per_ip: refused(ConnectionRefusal::PerIp),
        }
    }

    fn admit(&self, stream: Stream) -> Result<Stream, (Stream, ConnectionRefusal)> {
        let server = &self.state.snapshot().server;
        let permit = match self.table.admit(peer_ip(&stream), server.connections) {
            Ok(permit) => permit,
            Err(refusal) => return Err((stream, refusal)),
        };
        metrics::CLIENT_CONNECTIONS.inc();
        let guarded = GuardedStream::new(stream, permit, server.client_header_timeout)
            .on_close(|| metrics::CLIENT_CONNECTIONS.dec())
            .count_header_timeouts(metrics::CLIENT_HEADER_TIMEOUTS.clone());
        Ok(Box::new(guarded))
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(std::net::SocketAddr::ip)
}

/// Tell an HTTP/1 client why it is closed; HTTP/2 clients see the close (no frame to send
/// before their preface).
async fn refuse(mut stream: Stream) {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        return;
    }
    let write = async {
        stream.write_all(REFUSED_RESPONSE).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A connection handed back for reuse is already guarded.
        if stream.as_any().is::<GuardedStream>() {
            return self.inner.process_new(stream, shutdown).await;
        }
        match self.admit(stream) {
            Ok(guarded) => self.inner.process_new(guarded, shutdown).await,
            Err((stream, refusal)) => {
                match refusal {
                    ConnectionRefusal::Total => self.refused_total.inc(),
                    ConnectionRefusal::PerIp => self.refused_per_ip.inc(),
                }
                refuse(stream).await;
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Raise the soft descriptor limit to the hard one (as Go's runtime and nginx's
/// `worker_rlimit_nofile` do), so the derived connection cap uses what the service was given
/// (systemd's `LimitNOFILE` sets both; a shell often leaves the soft one at 1024).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_declares_its_exact_length() {
        let text = std::str::from_utf8(REFUSED_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "connection_limit");
    }
}
