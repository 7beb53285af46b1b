//! Configuration: the TOML file format (`file`), the validated model (`model`), and the
//! loader that turns one into the other, reporting every problem with file, line and field.

mod cluster;
pub mod diff;
pub mod file;
pub mod model;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use toml::Spanned;

pub use model::{
    AccessLogTarget, AuthSettings, Cluster, Config, Flavour, Replica, Route, ServerSettings,
    TlsFiles,
};

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    /// 1-based; `None` when the value was defaulted or the location is unknown.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `models[2].cluster`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in one load; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "configuration rejected ({n} error{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigError {
            issues: vec![ConfigIssue {
                file: path.to_path_buf(),
                line: None,
                column: None,
                field: String::new(),
                message: format!("cannot read file: {e}"),
            }],
        }),
    }
}

/// Validate config text; `path` only names the source in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let located = Locator { text, path };
    let raw: file::ConfigFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = match e.span() {
                Some(span) => located.line_col(span.start),
                None => (None, None),
            };
            return Err(ConfigError {
                issues: vec![ConfigIssue {
                    file: path.to_path_buf(),
                    line,
                    column,
                    field: String::new(),
                    message: e.message().trim().to_string(),
                }],
            });
        }
    };
    let mut v = Validator {
        at: located,
        issues: Vec::new(),
    };
    let config = v.config(raw);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { issues: v.issues })
    }
}

struct Locator<'a> {
    text: &'a str,
    path: &'a Path,
}

/// 1-based line and column (in characters) of a byte offset into `text`; the one place every
/// file loader (config, keys, rules) turns a TOML span into a location.
pub fn line_col(text: &str, offset: usize) -> (Option<usize>, Option<usize>) {
    let Some(before) = text.get(..offset) else {
        return (None, None);
    };
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (Some(line), Some(column))
}

impl Locator<'_> {
    fn line_col(&self, offset: usize) -> (Option<usize>, Option<usize>) {
        line_col(self.text, offset)
    }

    fn issue(&self, span: Range<usize>, field: String, message: String) -> ConfigIssue {
        // Defaulted values carry an empty span at 0: no location to point at.
        let (line, column) = if span == (0..0) {
            (None, None)
        } else {
            self.line_col(span.start)
        };
        ConfigIssue {
            file: self.path.to_path_buf(),
            line,
            column,
            field,
            message,
        }
    }
}

struct Validator<'a> {
    at: Locator<'a>,
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    fn fail<T>(
        &mut self,
        value: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let issue = self.at.issue(value.span(), field.into(), message.into());
        self.issues.push(issue);
    }

    fn socket_addr(&mut self, value: &Spanned<String>, field: String) -> Option<SocketAddr> {
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
                for issue in e.issues {
                    let mut field = issue.field.clone();
                    if let Some(rule) = &issue.rule {
                        field = format!("rule `{rule}`: {field}");
                    }
                    self.issues.push(ConfigIssue {
                        file: issue.file,
                        line: issue.line,
                        column: issue.column,
                        field,
                        message: issue.message,
                    });
                }
                crate::rules::RuleSet::default()
            }
        }
    }

    /// Relative paths in a config file are relative to that file's directory.
    fn relative_to_config(&self, path: &str) -> PathBuf {
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

    fn positive_ms(&mut self, value: &Spanned<u64>, field: &str) -> Duration {
        if *value.get_ref() == 0 {
            self.fail(value, field, "must be greater than 0");
        }
        Duration::from_millis(*value.get_ref())
    }

    fn config(&mut self, raw: file::ConfigFile) -> Config {
        let server = self.server(&raw.server);
        let clusters = self.clusters(&raw.clusters, &server);
        let (routes, model_order) = self.models(&raw.models, &clusters);
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
        Config {
            server,
            clusters,
            routes,
            model_order,
            auth,
            global_limits,
            rules: Arc::new(rules),
            loaded_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn server(&mut self, s: &file::ServerSection) -> ServerSettings {
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
        let tls = self.tls_files(s);
        let admin_listen = self
            .socket_addr(&s.admin_listen, "server.admin_listen".into())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090)));
        if clashes(&admin_listen, &listen) || clashes(&admin_listen, &tls_listen) {
            self.fail(
                &s.admin_listen,
                "server.admin_listen",
                "must differ from every client listen address (admin is never served publicly)",
            );
        }
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
        let upstream_idle_timeout = self.positive_ms(
            &s.upstream_idle_timeout_ms,
            "server.upstream_idle_timeout_ms",
        );
        if upstream_idle_timeout >= Duration::from_secs(5) {
            self.fail(
                &s.upstream_idle_timeout_ms,
                "server.upstream_idle_timeout_ms",
                "must be under 5000: vLLM and trtllm-serve close idle connections after 5 s",
            );
        }
        ServerSettings {
            listen,
            tls_listen,
            tls,
            admin_listen,
            threads: threads.max(1),
            max_request_body_bytes: max_body,
            connect_timeout: self.positive_ms(&s.connect_timeout_ms, "server.connect_timeout_ms"),
            read_timeout: self.positive_ms(&s.read_timeout_ms, "server.read_timeout_ms"),
            write_timeout: self.positive_ms(&s.write_timeout_ms, "server.write_timeout_ms"),
            client_body_timeout: self
                .positive_ms(&s.client_body_timeout_ms, "server.client_body_timeout_ms"),
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
            admin_token_file: s.admin_token_file.as_ref().map(|p| {
                let path = self.relative_to_config(p.get_ref());
                if p.get_ref().is_empty() {
                    self.fail(p, "server.admin_token_file", "must not be empty");
                }
                path
            }),
            access_log: match s.access_log.get_ref().as_str() {
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
            },
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
        let cert_ok = match tls_check::certificates(&cert_path) {
            Ok(n) => n > 0,
            Err(e) => {
                self.fail(cert, "server.tls_cert", e);
                false
            }
        };
        let key_ok = match tls_check::private_key(&key_path) {
            Ok(()) => true,
            Err(e) => {
                self.fail(key, "server.tls_key", e);
                false
            }
        };
        if cert_ok && key_ok {
            if let Err(e) = tls_check::pair(&cert_path, &key_path) {
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

/// Loading the TLS files the way Pingora's rustls listener will, with readable errors.
mod tls_check {
    use std::path::Path;

    use pingora_core::tls::{self, CertificateDer, PrivateKeyDer, ServerConfig};

    /// The labels of the PEM blocks in a file (`CERTIFICATE`, `PRIVATE KEY`, ...).
    fn pem_blocks(path: &Path) -> Result<Vec<String>, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&text);
        let mut out = Vec::new();
        let mut rest: &str = &text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let after = &rest[start + 11..];
            let Some(label_end) = after.find("-----") else {
                break;
            };
            let label = after[..label_end].to_string();
            let end_marker = format!("-----END {label}-----");
            let Some(end) = after.find(&end_marker) else {
                return Err(format!(
                    "{}: PEM block `{label}` has no END line",
                    path.display()
                ));
            };
            out.push(label);
            rest = &after[end + end_marker.len()..];
        }
        Ok(out)
    }

    /// Number of certificates; an error when the file is unreadable or holds none.
    pub fn certificates(path: &Path) -> Result<usize, String> {
        let blocks = pem_blocks(path)?;
        let n = blocks.iter().filter(|l| *l == "CERTIFICATE").count();
        if n == 0 {
            return Err(format!(
                "{} holds no PEM `CERTIFICATE` block (expected the certificate chain, leaf first)",
                path.display()
            ));
        }
        // The PEM parser Pingora uses must accept it too (base64 errors and the like).
        let file = path.to_string_lossy().to_string();
        match tls::load_pem_file_ca(&file) {
            Ok(first) if !first.is_empty() => Ok(n),
            Ok(_) => Err(format!("{}: no parsable certificate", path.display())),
            Err(e) => Err(format!(
                "{}: unreadable PEM certificate: {e}",
                path.display()
            )),
        }
    }

    pub fn private_key(path: &Path) -> Result<(), String> {
        let blocks = pem_blocks(path)?;
        if !blocks.iter().any(|l| {
            matches!(
                l.as_str(),
                "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
            )
        }) {
            return Err(format!(
                "{} holds no PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`; \
                 encrypted keys are not supported)",
                path.display()
            ));
        }
        match tls::load_pem_file_private_key(&path.to_string_lossy().to_string()) {
            Ok(der) if !der.is_empty() => Ok(()),
            Ok(_) => Err(format!("{}: no parsable private key", path.display())),
            Err(e) => Err(format!(
                "{}: unreadable PEM private key: {e}",
                path.display()
            )),
        }
    }

    /// The key must be usable and belong to the leaf certificate.
    pub fn pair(cert: &Path, key: &Path) -> Result<(), String> {
        let loaded = tls::load_certs_and_key_files(&cert.to_string_lossy(), &key.to_string_lossy())
            .map_err(|e| format!("cannot load the certificate and key: {e}"))?;
        let Some((certs, key_der)): Option<(Vec<CertificateDer>, PrivateKeyDer)> = loaded else {
            return Err("no certificate / private key pair could be loaded".into());
        };
        tls::install_default_crypto_provider();
        ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{} does not fit the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                )
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[[clusters]]
name = "a"
flavour = "vllm"
replicas = ["127.0.0.1:8101", "127.0.0.1:8102"]

[[models]]
alias = "m"
cluster = "a"
served_name = "org/model"
"#;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("t.toml"))
    }

    #[test]
    fn port_zero_listeners_never_clash_but_fixed_ports_do() {
        let zero = "listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"";
        let c = p(&GOOD.replace("listen = [\"127.0.0.1:8080\"]", zero)).unwrap();
        assert_eq!(c.server.admin_listen.port(), 0);
        let same = "listen = [\"127.0.0.1:8080\"]\nadmin_listen = \"127.0.0.1:8080\"";
        let e = p(&GOOD.replace("listen = [\"127.0.0.1:8080\"]", same)).unwrap_err();
        assert!(e.to_string().contains("server.admin_listen"), "{e}");
    }

    #[test]
    fn parses_a_valid_config_with_defaults() {
        let c = p(GOOD).unwrap();
        assert_eq!(c.server.max_request_body_bytes, 16 * 1024 * 1024);
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
        let r = c.route("m").unwrap();
        assert_eq!(r.served_name, "org/model");
        assert_eq!(r.cluster.replicas.len(), 2);
        assert_eq!(r.cluster.flavour, Flavour::Vllm);
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = GOOD.replace("flavour = \"vllm\"", "flavour = \"vllm\"\nflavor = \"x\"");
        let e = p(&text).unwrap_err();
        assert_eq!(e.issues.len(), 1);
        let msg = e.to_string();
        assert!(msg.contains("t.toml:8:1"), "{msg}");
        assert!(msg.contains("flavor"), "{msg}");
    }

    #[test]
    fn every_semantic_error_is_listed_with_location() {
        let text = r#"
[server]
listen = ["nonsense"]
upstream_idle_timeout_ms = 6000

[[clusters]]
name = "a"
flavour = "sglang"
replicas = []

[[models]]
alias = "m"
cluster = "missing"
"#;
        let e = p(text).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.issues.len(), 4, "{msg}");
        assert!(msg.contains("t.toml:3:11: server.listen[0]"), "{msg}");
        assert!(msg.contains("server.upstream_idle_timeout_ms"), "{msg}");
        assert!(
            msg.contains("t.toml:8:11: clusters[0].flavour: unknown flavour `sglang`"),
            "{msg}"
        );
        assert!(
            msg.contains("t.toml:13:11: models[0].cluster: unknown cluster `missing`"),
            "{msg}"
        );
    }

    #[test]
    fn duplicates_are_rejected() {
        let text = format!("{GOOD}\n[[models]]\nalias = \"m\"\ncluster = \"a\"\n");
        let e = p(&text).unwrap_err();
        assert!(e.to_string().contains("duplicate model alias `m`"));
    }

    #[test]
    fn tls_settings_go_together() {
        let with = |server: &str| GOOD.replace("[server]\n", &format!("[server]\n{server}\n"));
        let e = p(&with("tls_listen = [\"127.0.0.1:8443\"]")).unwrap_err();
        assert!(e
            .to_string()
            .contains("t.toml:3:15: server.tls_listen: TLS listeners need"));
        let e = p(&with("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"")).unwrap_err();
        assert!(e.to_string().contains("`tls_listen` is empty"), "{e}");
        let e = p(&with(
            "tls_listen = [\"127.0.0.1:8443\"]\ntls_cert = \"no/such.pem\"\ntls_key = \"no/k.pem\"",
        ))
        .unwrap_err();
        assert_eq!(e.issues.len(), 2, "{e}");
        assert!(
            e.to_string()
                .contains("server.tls_cert: cannot read no/such.pem"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("server.tls_key: cannot read no/k.pem"),
            "{e}"
        );
        // TLS only: `listen` may be empty then, but not both.
        let e = p(&GOOD.replace("listen = [\"127.0.0.1:8080\"]", "listen = []")).unwrap_err();
        assert!(e.to_string().contains("`listen` or `tls_listen`"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = p("[server\nlisten=1").unwrap_err();
        assert!(e.issues[0].line.is_some());
    }
}
