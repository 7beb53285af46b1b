//! Building and running the Pingora server from a validated config.

mod connection_guard;
mod guarded_stream;
mod listeners;
mod settle;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::admin::{AdminApp, AdminServer};
use crate::config::{self, ConfigError};
use crate::proxy::TokenGate;
use crate::state::AppState;
use connection_guard::GuardedApp;
use listeners::{BoundReport, Endpoint, Prebound};
use settle::SettlingApp;

/// Process-level switches, with Pingora's letters.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub daemon: bool,
    pub upgrade: bool,
    pub test: bool,
    /// Where to write the bound addresses (JSON) once every listener accepts.
    pub ready_file: Option<PathBuf>,
}

/// Load the config and serve until a signal ends the process.
pub fn run(config_path: &Path, flags: RunFlags) -> Result<(), ConfigError> {
    // `-d` changes the working directory to `/`: keep SIGHUP reloads finding the same file.
    let absolute = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let config_path = absolute.as_path();
    let ready_file = flags.ready_file.as_deref().map(absolute_path);
    // Before the config is validated: the default connection cap derives from the limit.
    connection_guard::raise_fd_limit();
    let config = config::load(config_path)?;
    let server_settings = config.server.clone();
    crate::accesslog::configure(server_settings.access_log.clone());
    let state = AppState::new(config, config_path)?;
    let fleet_link = fleet_link(&state, config_path)?;

    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        nocapture: false,
        test: flags.test,
        conf: None,
    };
    let conf = ServerConf {
        threads: server_settings.threads,
        work_stealing: server_settings.work_stealing,
        grace_period_seconds: Some(server_settings.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(server_settings.graceful_shutdown_timeout_seconds),
        pid_file: server_settings.pid_file.clone(),
        upgrade_sock: server_settings.upgrade_sock.clone(),
        upstream_keepalive_pool_size: 128,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = proxy_service(&server, &state, &server_settings);
    let mut proxy_endpoints = Vec::new();
    let read_buffer = L4BufferSettings::default().read(server_settings.client_read_buffer_bytes);
    for (i, addr) in server_settings.listen.iter().enumerate() {
        let endpoint = Endpoint::new(format!("listen[{i}]"), *addr);
        proxy.add_listener(ListenerConfig::tcp(endpoint.key()).l4_buffer(read_buffer));
        proxy_endpoints.push(endpoint);
    }
    if let Some(tls) = &server_settings.tls {
        // The files were loaded and matched during validation (config::tls_check); Pingora
        // loads them again when the listener starts (also in a process taking over with -u,
        // which is how a certificate is rotated without dropping a connection).
        for (i, addr) in server_settings.tls_listen.iter().enumerate() {
            let endpoint = Endpoint::new(format!("tls_listen[{i}]"), *addr);
            // Start-up: config validation already loaded these files the same way (config/tls.rs).
            #[allow(clippy::expect_used)]
            let mut settings =
                TlsSettings::intermediate(&tls.cert.to_string_lossy(), &tls.key.to_string_lossy())
                    .expect("TLS settings from validated files");
            if tls.http2 {
                settings.enable_h2();
            }
            proxy.add_listener(
                ListenerConfig::tcp(endpoint.key())
                    .tls(settings)
                    .l4_buffer(read_buffer),
            );
            proxy_endpoints.push(endpoint);
        }
    }
    let mut admin = Service::new(
        "tokengate admin".to_string(),
        AdminServer::new(AdminApp::new(state.clone()).with_fleet(fleet_link.clone())),
    );
    let admin_endpoint = Endpoint::new("admin_listen", server_settings.admin_listen);
    admin.add_tcp(&admin_endpoint.key());
    let report = BoundReport::new(proxy_endpoints.len() + 1, ready_file);

    // The proxy accepts only once every replica was probed (see HealthService).
    let health = server.add_service(background_service(
        "health",
        crate::services::health::HealthService::new(&state),
    ));
    let proxy = server.add_service(Prebound::new(proxy, proxy_endpoints, report.clone()));
    proxy.add_dependency(&health);
    add_fleet_service(&mut server, fleet_link, &state, &proxy);
    server.add_service(Prebound::new(admin, vec![admin_endpoint], report));
    add_state_services(&mut server, &state);
    log::info!(
        "tokengate configured to listen on {:?}, TLS on {:?}, admin on {}",
        server_settings.listen,
        server_settings.tls_listen,
        server_settings.admin_listen
    );
    server.run_forever()
}

/// `path` from the current directory: `-d` changes the working directory to `/`.
fn absolute_path(path: &Path) -> PathBuf {
    std::env::current_dir().map_or_else(|_| path.to_path_buf(), |dir| dir.join(path))
}

/// The event stream's tick and SIGHUP reloads.
fn add_state_services(server: &mut Server, state: &std::sync::Arc<AppState>) {
    server.add_service(background_service(
        "events",
        crate::services::events::EventTicker {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "sighup reload",
        crate::services::reload_signal::SighupReload {
            state: state.clone(),
        },
    ));
}

/// Fleet mode's background service; the proxy accepts only after its first key sync from
/// Redis was tried.
fn add_fleet_service(
    server: &mut Server,
    link: Option<std::sync::Arc<crate::distributed::FleetLink>>,
    state: &std::sync::Arc<AppState>,
    proxy: &pingora_core::services::ServiceHandle,
) {
    if let Some(link) = link {
        proxy.add_dependency(server.add_service(background_service(
            "fleet",
            crate::services::fleet::FleetService::new(link, state.clone()),
        )));
    }
}

/// Fleet mode's Redis link (`None` without `[fleet]`); a bad URL or password file stops the
/// start with the config's kind of error.
fn fleet_link(
    state: &AppState,
    config_path: &Path,
) -> Result<Option<std::sync::Arc<crate::distributed::FleetLink>>, ConfigError> {
    let snapshot = state.snapshot();
    let (Some(settings), Some(shared)) = (&snapshot.fleet, state.limiter.lease_shared()) else {
        return Ok(None);
    };
    crate::distributed::FleetLink::new(settings, shared.clone())
        .and_then(|l| l.probe_tls().map(|()| Some(std::sync::Arc::new(l))))
        .map_err(|message| ConfigError {
            issues: vec![config::ConfigIssue {
                file: config_path.to_path_buf(),
                line: None,
                column: None,
                field: "fleet".into(),
                message,
            }],
        })
}

/// The proxy service: tokengate's `ProxyHttp` in Pingora's HTTP proxy, behind the connection
/// caps and header deadline (`connection_guard.rs`), with a short settle before its shutdown
/// cleanup (`settle.rs`). With `h2c`, Pingora peeks each plain connection for the HTTP/2
/// preface (bounded by the header deadline, `guarded_stream.rs`) and speaks HTTP/2 to those
/// that send it; TLS connections keep ALPN.
fn proxy_service(
    server: &Server,
    state: &Arc<AppState>,
    settings: &config::ServerSettings,
) -> Service<GuardedApp<SettlingApp<pingora_proxy::HttpProxy<TokenGate>>>> {
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2c = settings.h2c;
    let mut proxy = pingora_proxy::http_proxy(&server.configuration, TokenGate::new(state.clone()));
    proxy.server_options = Some(options);
    let settling = SettlingApp::new(proxy, settings.grace_period_seconds);
    Service::new(
        "tokengate proxy".to_string(),
        GuardedApp::new(settling, state.clone()),
    )
}
