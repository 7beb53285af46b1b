//! Validation: the file format (`file`) → the runtime model (`model`), every problem collected
//! with its file, line, column and field.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use toml::Spanned;

use super::model::{
    AccessLogTarget, AuthSettings, Cluster, Config, Flavour, Replica, Route, ServerSettings,
    TlsFiles,
};
use super::{file, tls, ConfigIssue};

pub(super) struct Locator<'a> {
    pub text: &'a str,
    pub path: &'a Path,
    /// The overlay merged into this load: its spans start at `offset` (past `text`).
    pub overlay: Option<(&'a str, &'a Path, usize)>,
}
impl Locator<'_> {
    pub(super) fn issue(&self, span: Range<usize>, field: String, message: String) -> ConfigIssue {
        match self.overlay {
            Some((text, path, offset)) if span.start >= offset => {
                let local = span.start - offset..span.end.saturating_sub(offset);
                ConfigIssue::at_span(path, text, local, field, message)
            }
            _ => ConfigIssue::at_span(self.path, self.text, span, field, message),
        }
    }
}

pub(super) struct Validator<'a> {
    pub at: Locator<'a>,
    pub issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    pub(super) fn fail<T>(
        &mut self,
        value: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let issue = self.at.issue(value.span(), field.into(), message.into());
        self.issues.push(issue);
    }

    pub(super) fn socket_addr(
        &mut self,
        value: &Spanned<String>,
        field: String,
    ) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.fail(
                    value,
                    field,
                    format!(
                        "`{}` is not an `ip:port` socket address (e.g. 127.0.0.1:8080)",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// Compile the rule files; their problems join this load's list (file, line, rule, field).
    fn rules(
        &mut self,
        paths: &[Spanned<String>],
        clusters: &[Arc<Cluster>],
        models: &[String],
    ) -> crate::rules::RuleSet {
        let resolved: Vec<PathBuf> = paths
            .iter()
            .map(|p| self.relative_to_config(p.get_ref()))
            .collect();
        let known = crate::rules::KnownNames::new(
            clusters.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            models.to_vec(),
        );
        match crate::rules::load_paths(&resolved, &known) {
            Ok(set) => set,
            Err(e) => {
                // Rule issues already carry their rule in `field`.
                self.issues.extend(e.issues);
                crate::rules::RuleSet::default()
            }
        }
    }

    /// Relative paths in a config file are relative to that file's directory.
    fn fleet(
        &mut self,
        raw: &super::fleet::FleetSection,
        server: &ServerSettings,
    ) -> super::FleetSettings {
        let port = server.listen.first().or(server.tls_listen.first());
        let (settings, issues) =
            super::fleet::validate(raw, port.map(|a| a.port()), |p| self.relative_to_config(p));
        for (span, field, message) in issues {
            let issue = self.at.issue(span, field, message);
            self.issues.push(issue);
        }
        settings
    }

    pub(super) fn relative_to_config(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.at
                .path
                .parent()
                .map_or_else(|| p.to_path_buf(), |dir| dir.join(p))
        }
    }

    pub(super) fn positive_ms(&mut self, value: &Spanned<u64>, field: &str) -> Duration {
        if *value.get_ref() == 0 {
            self.fail(value, field, "must be greater than 0");
        }
        Duration::from_millis(*value.get_ref())
    }

    pub fn config(&mut self, raw: file::ConfigFile) -> Config {
        let server = self.server(&raw.server);
        let clusters = self.clusters(&raw.clusters, &server);
        let (mut routes, model_order) = self.models(&raw.models, &clusters);
        super::model::share_cluster_names(&mut routes);
        let auth = raw.auth.as_ref().map(|a| AuthSettings {
            keys_file: self.relative_to_config(a.keys_file.get_ref()),
            default_completion_reservation: a
                .default_completion_reservation
                .as_ref()
                .map_or(256, |v| *v.get_ref()),
        });
        let global_limits = match raw.limits.as_ref().and_then(|l| l.global.as_ref()) {
            Some(g) => {
                let v = g.get_ref();
                if v.requests_per_minute == Some(0)
                    || v.tokens_per_minute == Some(0)
                    || v.max_concurrent == Some(0)
                {
                    self.fail(
                        g,
                        "limits.global",
                        "limits must be greater than 0 (omit a limit to disable it)",
                    );
                }
                *v
            }
            None => Default::default(),
        };
        let rules = self.rules(&raw.rules, &clusters, &model_order);
        let rate_limit_classes = self.rate_limit_classes(&raw, &rules);
        let fleet = raw.fleet.as_ref().map(|f| self.fleet(f, &server));
        Config {
            fleet,
            server,
            clusters,
            routes,
            model_order,
            auth,
            global_limits,
            rate_limit_classes,
            rules: Arc::new(rules),
            origins: Default::default(),
            loaded_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn server(&mut self, s: &file::ServerSection) -> ServerSettings {
        let (listen, tls_listen) = self.listeners(s);
        let tls = self.tls_files(s);
        let admin_listen = self.admin_listen(s, &listen, &tls_listen);
        let threads = *s.threads.get_ref();
        if threads == 0 || threads > 1024 {
            self.fail(&s.threads, "server.threads", "must be between 1 and 1024");
        }
        let max_body = *s.max_request_body_bytes.get_ref();
        if max_body == 0 || max_body > 1024 * 1024 * 1024 {
            self.fail(
                &s.max_request_body_bytes,
                "server.max_request_body_bytes",
                "must be between 1 and 1073741824 (1 GiB)",
            );
        }
        let upstream_idle_timeout = self.upstream_idle_timeout(s);
        let body_budget = self.body_budget(s, max_body);
        ServerSettings {
            listen,
            tls_listen,
            tls,
            h2c: s.h2c,
            admin_listen,
            threads: threads.max(1),
            work_stealing: s.work_stealing,
            max_request_body_bytes: max_body,
            body_budget,
            connect_timeout: self.positive_ms(&s.connect_timeout_ms, "server.connect_timeout_ms"),
            read_timeout: self.positive_ms(&s.read_timeout_ms, "server.read_timeout_ms"),
            write_timeout: self.positive_ms(&s.write_timeout_ms, "server.write_timeout_ms"),
            client_body_timeout: self
                .positive_ms(&s.client_body_timeout_ms, "server.client_body_timeout_ms"),
            client_header_timeout: self.positive_ms(
                &s.client_header_timeout_ms,
                "server.client_header_timeout_ms",
            ),
            connections: self.connection_limits(s),
            client_read_buffer_bytes: self.client_read_buffer(s),
            upstream_idle_timeout,
            connect_retries: *s.connect_retries.get_ref(),
            grace_period_seconds: *s.grace_period_seconds.get_ref(),
            graceful_shutdown_timeout_seconds: *s.graceful_shutdown_timeout_seconds.get_ref(),
            client_keepalive_seconds: *s.client_keepalive_seconds.get_ref(),
            pid_file: s
                .pid_file
                .clone()
                .unwrap_or_else(|| "/tmp/tokengate.pid".to_string()),
            upgrade_sock: s
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| "/tmp/tokengate_upgrade.sock".to_string()),
            admin_token_file: self.admin_token_file(s),
            access_log: self.access_log(s),
            recent_requests: self.recent_requests(s),
            stored_responses: self.stored_responses(s),
        }
    }

    /// The plain and TLS client listeners; a TLS address may not repeat any listen address.
    fn listeners(&mut self, s: &file::ServerSection) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let mut listen = Vec::new();
        if s.listen.is_empty() && s.tls_listen.is_empty() {
            self.issues.push(self.at.issue(
                0..0,
                "server.listen".into(),
                "at least one listen address (`listen` or `tls_listen`) is required".into(),
            ));
        }
        for (i, addr) in s.listen.iter().enumerate() {
            if let Some(a) = self.socket_addr(addr, format!("server.listen[{i}]")) {
                listen.push(a);
            }
        }
        let mut tls_listen = Vec::new();
        for (i, addr) in s.tls_listen.iter().enumerate() {
            let field = format!("server.tls_listen[{i}]");
            if let Some(a) = self.socket_addr(addr, field.clone()) {
                if clashes(&a, &listen) || clashes(&a, &tls_listen) {
                    self.fail(addr, field, format!("`{a}` is already a listen address"));
                    continue;
                }
                tls_listen.push(a);
            }
        }
        (listen, tls_listen)
    }

    fn admin_listen(
        &mut self,
        s: &file::ServerSection,
        listen: &[SocketAddr],
        tls_listen: &[SocketAddr],
    ) -> SocketAddr {
        let admin_listen = self
            .socket_addr(&s.admin_listen, "server.admin_listen".into())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090)));
        if clashes(&admin_listen, listen) || clashes(&admin_listen, tls_listen) {
            self.fail(
                &s.admin_listen,
                "server.admin_listen",
                "must differ from every client listen address (admin is never served publicly)",
            );
        }
        admin_listen
    }

    fn upstream_idle_timeout(&mut self, s: &file::ServerSection) -> Duration {
        let timeout = self.positive_ms(
            &s.upstream_idle_timeout_ms,
            "server.upstream_idle_timeout_ms",
        );
        if timeout >= Duration::from_secs(5) {
            self.fail(
                &s.upstream_idle_timeout_ms,
                "server.upstream_idle_timeout_ms",
                "must be under 5000: vLLM and trtllm-serve close idle connections after 5 s",
            );
        }
        timeout
    }

    fn admin_token_file(&mut self, s: &file::ServerSection) -> Option<PathBuf> {
        let p = s.admin_token_file.as_ref()?;
        let path = self.relative_to_config(p.get_ref());
        if p.get_ref().is_empty() {
            self.fail(p, "server.admin_token_file", "must not be empty");
        } else if std::env::var_os("TOKENGATE_ADMIN_TOKEN").is_none() {
            // Caught here, a missing file fails `check`, start-up and reload (the running
            // token stays) instead of silently switching the admin API off.
            if let Err(e) = std::fs::read(&path) {
                let message = format!("cannot read {}: {e}", path.display());
                self.fail(p, "server.admin_token_file", message);
            }
        }
        Some(path)
    }

    fn recent_requests(&mut self, s: &file::ServerSection) -> usize {
        let n = *s.recent_requests.get_ref();
        if !(1..=100_000).contains(&n) {
            let message = "must be between 1 and 100000";
            self.fail(&s.recent_requests, "server.recent_requests", message);
        }
        n.clamp(1, 100_000)
    }

    fn access_log(&mut self, s: &file::ServerSection) -> AccessLogTarget {
        match s.access_log.get_ref().as_str() {
            "stdout" => AccessLogTarget::Stdout,
            "off" => AccessLogTarget::Off,
            "" => {
                self.fail(
                    &s.access_log,
                    "server.access_log",
                    "use `stdout`, `off` or a file path",
                );
                AccessLogTarget::Off
            }
            path => AccessLogTarget::File(self.relative_to_config(path)),
        }
    }

    /// `tls_listen` needs `tls_cert` + `tls_key` (and they need `tls_listen`); both files must
    /// be readable PEM, and the key must belong to the certificate. Checked here so that a bad
    /// file is a config error (`tokengate check`, SIGHUP, `ExecStartPre`), never a panic in
    /// Pingora's listener setup.
    fn tls_files(&mut self, s: &file::ServerSection) -> Option<TlsFiles> {
        let (cert, key) = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                if let Some(first) = s.tls_listen.first() {
                    self.fail(
                        first,
                        "server.tls_listen",
                        "TLS listeners need `tls_cert` and `tls_key` (PEM files)",
                    );
                }
                return None;
            }
            (Some(one), None) | (None, Some(one)) => {
                let missing = if s.tls_cert.is_none() {
                    "tls_cert"
                } else {
                    "tls_key"
                };
                self.fail(
                    one,
                    format!("server.{missing}"),
                    format!("`tls_cert` and `tls_key` go together: `{missing}` is missing"),
                );
                return None;
            }
        };
        if s.tls_listen.is_empty() {
            self.fail(
                cert,
                "server.tls_cert",
                "`tls_cert` / `tls_key` are set but `tls_listen` is empty",
            );
            return None;
        }
        let cert_path = self.relative_to_config(cert.get_ref());
        let key_path = self.relative_to_config(key.get_ref());
        let cert_ok = match tls::certificates(&cert_path) {
            Ok(n) => n > 0,
            Err(e) => {
                self.fail(cert, "server.tls_cert", e);
                false
            }
        };
        let key_ok = match tls::private_key(&key_path) {
            Ok(()) => true,
            Err(e) => {
                self.fail(key, "server.tls_key", e);
                false
            }
        };
        if cert_ok && key_ok {
            if let Err(e) = tls::pair(&cert_path, &key_path) {
                self.fail(key, "server.tls_key", e);
            }
        }
        Some(TlsFiles {
            cert: cert_path,
            key: key_path,
            http2: s.tls_http2,
        })
    }

    fn clusters(
        &mut self,
        raw: &[file::ClusterSection],
        server: &ServerSettings,
    ) -> Vec<Arc<Cluster>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, c) in raw.iter().enumerate() {
            let name = c.name.get_ref();
            if !valid_name(name) {
                self.fail(
                    &c.name,
                    format!("clusters[{i}].name"),
                    format!("`{name}` is not a valid name (use letters, digits, `-`, `_`, `.`)"),
                );
            }
            if !seen.insert(name.clone()) {
                self.fail(
                    &c.name,
                    format!("clusters[{i}].name"),
                    format!("duplicate cluster name `{name}`"),
                );
            }
            let flavour = Flavour::parse(c.flavour.get_ref()).unwrap_or_else(|| {
                self.fail(
                    &c.flavour,
                    format!("clusters[{i}].flavour"),
                    format!(
                        "unknown flavour `{}`; expected one of: {}",
                        c.flavour.get_ref(),
                        Flavour::NAMES
                    ),
                );
                Flavour::Vllm
            });
            // An empty list is valid: a cluster scaled to zero answers 503 with Retry-After.
            let mut replicas: Vec<Replica> = Vec::new();
            for (j, r) in c.replicas.get_ref().iter().enumerate() {
                let field = format!("clusters[{i}].replicas[{j}]");
                if let Some(addr) = self.socket_addr(r, field.clone()) {
                    if replicas.iter().any(|x| x.addr == addr) {
                        self.fail(r, field, format!("duplicate replica `{addr}`"));
                        continue;
                    }
                    replicas.push(Replica {
                        addr,
                        authority: r.get_ref().clone(),
                    });
                }
            }
            let settings = self.cluster_settings(c, i, flavour, server);
            out.push(Arc::new(Cluster {
                name: name.clone(),
                flavour,
                replicas,
                health: settings.health,
                passive: settings.passive,
                scrape: settings.scrape,
                balance: settings.balance,
                affinity_header: settings.affinity_header,
                timeouts: settings.timeouts,
                serves: settings.serves,
            }));
        }
        out
    }

    fn models(
        &mut self,
        raw: &[file::ModelSection],
        clusters: &[Arc<Cluster>],
    ) -> (HashMap<String, Arc<Route>>, Vec<String>) {
        let mut routes = HashMap::new();
        let mut order = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            let alias = m.alias.get_ref();
            if alias.is_empty() || alias.chars().any(|ch| ch.is_control()) {
                self.fail(
                    &m.alias,
                    format!("models[{i}].alias"),
                    "must be a non-empty name without control characters",
                );
                continue;
            }
            let Some(cluster) = clusters.iter().find(|c| &c.name == m.cluster.get_ref()) else {
                let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
                self.fail(
                    &m.cluster,
                    format!("models[{i}].cluster"),
                    format!(
                        "unknown cluster `{}` (defined clusters: {})",
                        m.cluster.get_ref(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                continue;
            };
            let served_name = match &m.served_name {
                Some(s) if s.get_ref().is_empty() => {
                    self.fail(s, format!("models[{i}].served_name"), "must not be empty");
                    continue;
                }
                Some(s) => s.get_ref().clone(),
                None => alias.clone(),
            };
            let limits = match &m.limits {
                Some(l) => {
                    let v = l.get_ref();
                    if v.tokens_per_minute == Some(0) || v.max_concurrent == Some(0) {
                        self.fail(
                            l,
                            format!("models[{i}].limits"),
                            "limits must be greater than 0 (omit a limit to disable it)",
                        );
                    }
                    *v
                }
                None => Default::default(),
            };
            if routes.contains_key(alias) {
                self.fail(
                    &m.alias,
                    format!("models[{i}].alias"),
                    format!("duplicate model alias `{alias}`"),
                );
                continue;
            }
            order.push(alias.clone());
            routes.insert(
                alias.clone(),
                Arc::new(Route {
                    alias: alias.clone(),
                    cluster: cluster.clone(),
                    served_name,
                    expose_served_name: m.expose_served_name,
                    cluster_names: Arc::from([]),
                    owned_by: m
                        .owned_by
                        .clone()
                        .unwrap_or_else(|| "tokengate".to_string()),
                    limits,
                }),
            );
        }
        (routes, order)
    }
}

/// `a` is already bound by `taken`. Port 0 never clashes: each such listener gets its own
/// ephemeral port from the kernel (the tests' way to avoid guessing free ports).
fn clashes(a: &SocketAddr, taken: &[SocketAddr]) -> bool {
    a.port() != 0 && taken.contains(a)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
