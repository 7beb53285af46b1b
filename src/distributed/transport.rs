//! How tokengate reaches the fleet's Redis: one standalone server (or Valkey) through the
//! crate's connection manager, or a Redis Cluster through its cluster client, either over
//! plain TCP or TLS (`rediss://`, rustls with the system roots or `ca_file`). Everything
//! above talks to one [`Conn`], so scripts, leases, keys and the heartbeat run unchanged on
//! both; every multi-key command keeps its keys in one hash slot (see `Names`).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, ClientTlsConfig, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    TlsCertificates, Value,
};

use crate::config::FleetSettings;

/// A multiplexed handle to Redis, cheap to clone; reconnects on its own.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    /// The one `subscribe` client serves commands too.
    Single,
    Cluster(Box<ClusterClient>),
}

/// The configured Redis: one plain client per seed URL — the subscriptions go through them
/// (on a cluster a `PUBLISH` reaches every node, so any one will do), and for a standalone
/// Redis the commands too — and the cluster client in cluster mode.
pub struct Transport {
    target: Target,
    subscribe: Vec<Client>,
}

fn info(url: &str, password: Option<&str>) -> Result<ConnectionInfo, String> {
    let mut info = url
        .into_connection_info()
        .map_err(|e| format!("fleet.redis_url `{url}`: {e}"))?;
    if let Some(password) = password {
        let redis = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(redis);
    }
    Ok(info)
}

fn certificates(settings: &FleetSettings) -> Result<Option<TlsCertificates>, String> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("fleet.{what} {}: {e}", path.display()))
    };
    let root_cert = match &settings.ca_file {
        Some(path) => Some(read("ca_file", path)?),
        None => None,
    };
    let client_tls = match &settings.client_cert {
        Some((cert, key)) => Some(ClientTlsConfig {
            client_cert: read("client_cert_file", cert)?,
            client_key: read("client_key_file", key)?,
        }),
        None => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn client(info: ConnectionInfo, certs: Option<&TlsCertificates>) -> Result<Client, String> {
    match certs {
        Some(certs) => Client::build_with_tls(info, certs.clone()),
        None => Client::open(info),
    }
    .map_err(|e| format!("fleet: {e}"))
}

impl Transport {
    /// Fails only on a malformed URL or an unreadable password or CA file; never connects.
    pub fn new(settings: &FleetSettings) -> Result<Transport, String> {
        let password = match &settings.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("fleet.password_file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let certs = certificates(settings)?;
        let urls = std::iter::once(&settings.redis_url).chain(&settings.cluster_seeds);
        let infos = urls
            .map(|u| info(u, password.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let subscribe = infos
            .iter()
            .map(|i| client(i.clone(), certs.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let target = if settings.cluster {
            let mut builder = ClusterClientBuilder::new(infos)
                .connection_timeout(connect_timeout(settings.redis_timeout))
                .response_timeout(settings.redis_timeout)
                .retries(1)
                .max_retry_wait(500);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            Target::Cluster(Box::new(
                builder.build().map_err(|e| format!("fleet: {e}"))?,
            ))
        } else {
            Target::Single
        };
        Ok(Transport { target, subscribe })
    }

    /// The command connection, created on the calling runtime; it connects in the background
    /// (a Redis that is down at start is not an error here).
    pub fn connect_lazy(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match &self.target {
            Target::Single => {
                let client = self.subscribe.first().ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no URL"))
                })?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(connect_timeout(timeout)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client.clone(), config).map(Conn::Single)
            }
            Target::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_response_timeout(timeout)
                    .set_connection_timeout(connect_timeout(timeout));
                Ok(Conn::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// The node to subscribe through on the `attempt`-th try (the seeds in turn).
    pub fn subscriber(&self, attempt: usize) -> Option<&Client> {
        let n = self.subscribe.len();
        self.subscribe.get(attempt.checked_rem(n)?)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }
}

fn connect_timeout(command: Duration) -> Duration {
    command.max(Duration::from_millis(250))
}

/// Whether `err` is, or wraps, rustls's error (the redis crate keeps an `io::Error` in an
/// `Arc`, and `io::Error::source` skips the error it carries).
fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(found) = err.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    if let Some(found) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Some(found);
    }
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    err.downcast_ref::<Shared>()
        .and_then(|inner| find_rustls(inner.as_ref()))
}

/// The rustls error in `e`, if the TLS handshake failed (a certificate refused either way):
/// a configuration error, unlike a Redis that is down.
pub fn tls_error(e: &redis::RedisError) -> Option<rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(found) = find_rustls(err) {
            return Some(found.clone());
        }
        source = err.source();
    }
    None
}

/// What to check for a failed handshake.
fn tls_hint(error: &rustls::Error, settings: &FleetSettings) -> String {
    match error {
        rustls::Error::AlertReceived(_) => match &settings.client_cert {
            Some((cert, _)) => format!(
                "Redis refused this client's certificate: check that fleet.client_cert_file {} \
                 is signed by a CA in Redis's tls-ca-cert-file",
                cert.display()
            ),
            None => "Redis may require a client certificate (tls-auth-clients yes): set \
                     fleet.client_cert_file and fleet.client_key_file"
                .to_string(),
        },
        _ => match &settings.ca_file {
            Some(path) => format!(
                "Redis's certificate is not trusted: check that fleet.ca_file {} is the CA \
                 that signed it and that the URL's host is in its names",
                path.display()
            ),
            None => "Redis's certificate is not trusted by the system roots: set fleet.ca_file \
                     to the CA that signed it"
                .to_string(),
        },
    }
}

/// At start, with TLS configured: one connection attempt, so a certificate Redis presents
/// that `ca_file` (or the system roots) do not trust stops the start with the reason. A
/// Redis that is merely down is not an error (the instance serves on its local share).
pub fn probe_tls(transport: &Transport, settings: &FleetSettings) -> Result<(), String> {
    if !settings.redis_url.starts_with("rediss://") {
        return Ok(());
    }
    let Some(client) = transport.subscriber(0) else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let timeout = connect_timeout(settings.redis_timeout).max(Duration::from_secs(1));
    let result = runtime.block_on(async {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map(|_| ())
    });
    match result {
        Err(e) if tls_error(&e).is_some() => {
            let hint = tls_error(&e).map_or_else(String::new, |t| tls_hint(&t, settings));
            Err(format!(
                "{}: the TLS handshake failed ({e}); {hint}",
                settings.redis_url
            ))
        }
        Err(e) => {
            log::warn!("fleet: Redis not reachable at start ({e}); serving on the local share");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_told_apart_from_a_redis_that_is_down() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            tls_error(&redis::RedisError::from(tls)),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        );
        let down = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_error(&redis::RedisError::from(down)), None);
    }

    #[test]
    fn cluster_seeds_are_subscribed_through_in_turn() {
        let settings = FleetSettings {
            redis_url: "redis://127.0.0.1:7000".into(),
            ca_file: None,
            client_cert: None,
            cluster: true,
            cluster_seeds: vec!["redis://127.0.0.1:7001".into()],
            password_file: None,
            instance_id: "i".into(),
            key_prefix: "tg".into(),
            sync_interval: Duration::from_millis(100),
            lease_fraction: 0.05,
            idle_return: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            redis_timeout: Duration::from_millis(50),
            key_check: Duration::from_millis(500),
            usage_push: Duration::from_secs(1),
            on_redis_down: crate::ratelimit::lease::DownMode::LocalShare,
        };
        let t = Transport::new(&settings).unwrap();
        assert!(t.is_cluster());
        let port = |i| {
            t.subscriber(i)
                .unwrap()
                .get_connection_info()
                .addr()
                .to_string()
        };
        assert_eq!(port(0), "127.0.0.1:7000");
        assert_eq!(port(1), "127.0.0.1:7001");
        assert_eq!(port(2), "127.0.0.1:7000");
    }
}
