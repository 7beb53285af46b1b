//! The optional `[fleet]` section: several instances sharing keys, limits and usage through
//! Redis. Its file format and its validation into [`FleetSettings`]; without the section the
//! gateway is a single node and nothing here is used.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::ratelimit::lease::DownMode;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// `redis://[user[:password]@]host:port[/db]`, or `rediss://` for TLS. With
    /// `redis_cluster`, any one node of the cluster (a seed).
    pub redis_url: Spanned<String>,
    /// A PEM file of the CA(s) that sign Redis's certificate (a private CA); without it a
    /// `rediss://` server must present a certificate the system trust store accepts.
    pub ca_file: Option<Spanned<String>>,
    /// This client's certificate chain and key (PEM), for a Redis with `tls-auth-clients yes`.
    pub client_cert_file: Option<Spanned<String>>,
    pub client_key_file: Option<Spanned<String>>,
    /// Redis Cluster (or Valkey cluster): the client follows the slot map (MOVED/ASK).
    pub redis_cluster: Option<bool>,
    /// More cluster nodes to start from, besides `redis_url` (only with `redis_cluster`).
    pub redis_cluster_seeds: Option<Vec<Spanned<String>>>,
    /// A file holding the Redis password (wins over one in the URL).
    pub password_file: Option<Spanned<String>>,
    /// Default: hostname + the first listen port (or the pid when that port is 0).
    pub instance_id: Option<Spanned<String>>,
    /// Prefix of every Redis key and channel (several fleets can share one Redis).
    pub key_prefix: Option<Spanned<String>>,
    pub sync_interval_ms: Option<Spanned<u64>>,
    /// Largest lease as a fraction of this instance's share of a limit.
    pub lease_fraction: Option<Spanned<f64>>,
    pub idle_return_ms: Option<Spanned<u64>>,
    pub heartbeat_ms: Option<Spanned<u64>>,
    /// Per Redis command; past it the command counts as failed.
    pub redis_timeout_ms: Option<Spanned<u64>>,
    pub key_check_ms: Option<Spanned<u64>>,
    pub usage_push_ms: Option<Spanned<u64>>,
    /// `local-share` (default), `fail-open` or `fail-closed`.
    pub on_redis_down: Option<Spanned<String>>,
}

/// The validated `[fleet]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub redis_url: String,
    pub ca_file: Option<PathBuf>,
    /// (certificate chain, key) this client presents over TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `redis_cluster = true`: `redis_url` then `cluster_seeds` are the seed nodes.
    pub cluster: bool,
    pub cluster_seeds: Vec<String>,
    pub password_file: Option<PathBuf>,
    pub instance_id: String,
    pub key_prefix: String,
    pub sync_interval: Duration,
    pub lease_fraction: f64,
    pub idle_return: Duration,
    pub heartbeat: Duration,
    pub redis_timeout: Duration,
    pub key_check: Duration,
    pub usage_push: Duration,
    pub on_redis_down: DownMode,
}

/// One problem: the span it points at, the field and the message.
pub type FleetIssue = (Range<usize>, String, String);

fn ms(
    value: &Option<Spanned<u64>>,
    field: &str,
    default: u64,
    issues: &mut Vec<FleetIssue>,
) -> Duration {
    match value {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 3_600_000 => {
            issues.push((
                v.span(),
                format!("fleet.{field}"),
                "must be between 1 and 3600000 ms".into(),
            ));
            Duration::from_millis(default)
        }
        Some(v) => Duration::from_millis(*v.get_ref()),
        None => Duration::from_millis(default),
    }
}

fn down_mode(value: &Option<Spanned<String>>, issues: &mut Vec<FleetIssue>) -> DownMode {
    let Some(v) = value else {
        return DownMode::LocalShare;
    };
    match v.get_ref().as_str() {
        "local-share" => DownMode::LocalShare,
        "fail-open" => DownMode::FailOpen,
        "fail-closed" => DownMode::FailClosed,
        other => {
            issues.push((
                v.span(),
                "fleet.on_redis_down".into(),
                format!("`{other}` is not one of `local-share`, `fail-open`, `fail-closed`"),
            ));
            DownMode::LocalShare
        }
    }
}

fn check_url(url: &Spanned<String>, field: &str, issues: &mut Vec<FleetIssue>) {
    let text = url.get_ref();
    let rest = text
        .strip_prefix("redis://")
        .or_else(|| text.strip_prefix("rediss://"));
    let host = rest.map(|r| r.rsplit('@').next().unwrap_or(r));
    if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
        issues.push((
            url.span(),
            format!("fleet.{field}"),
            format!("`{text}` is not a `redis://host:port` or `rediss://host:port` URL"),
        ));
    }
}

/// The cluster seeds: each a URL of the same scheme as `redis_url`; only with `redis_cluster`.
fn cluster_seeds(raw: &FleetSection, cluster: bool, issues: &mut Vec<FleetIssue>) -> Vec<String> {
    let Some(seeds) = &raw.redis_cluster_seeds else {
        return Vec::new();
    };
    let tls = raw.redis_url.get_ref().starts_with("rediss://");
    for seed in seeds {
        check_url(seed, "redis_cluster_seeds", issues);
        if seed.get_ref().starts_with("rediss://") != tls {
            issues.push((
                seed.span(),
                "fleet.redis_cluster_seeds".into(),
                "every seed must use the scheme of `redis_url` (all TLS or none)".into(),
            ));
        }
        if !cluster {
            issues.push((
                seed.span(),
                "fleet.redis_cluster_seeds".into(),
                "seeds are for a Redis Cluster: set `redis_cluster = true`".into(),
            ));
        }
    }
    seeds.iter().map(|s| s.get_ref().clone()).collect()
}

/// The CA file: only for `rediss://`, and it must hold PEM certificates.
fn ca_file(
    raw: &FleetSection,
    resolve: &impl Fn(&str) -> PathBuf,
    issues: &mut Vec<FleetIssue>,
) -> Option<PathBuf> {
    let ca = raw.ca_file.as_ref()?;
    let path = resolve(ca.get_ref());
    if !raw.redis_url.get_ref().starts_with("rediss://") {
        issues.push((
            ca.span(),
            "fleet.ca_file".into(),
            "a CA file is for TLS: use a `rediss://` redis_url".into(),
        ));
    } else if let Err(e) = super::tls::certificates(&path) {
        issues.push((ca.span(), "fleet.ca_file".into(), e));
    }
    Some(path)
}

/// The client certificate and key: both or neither, only for `rediss://`, and a pair.
fn client_cert(
    raw: &FleetSection,
    resolve: &impl Fn(&str) -> PathBuf,
    issues: &mut Vec<FleetIssue>,
) -> Option<(PathBuf, PathBuf)> {
    let field = |f: &str| format!("fleet.{f}");
    let (cert, key) = match (&raw.client_cert_file, &raw.client_key_file) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        (Some(one), None) | (None, Some(one)) => {
            issues.push((
                one.span(),
                field("client_cert_file"),
                "set both client_cert_file and client_key_file, or neither".into(),
            ));
            return None;
        }
    };
    let paths = (resolve(cert.get_ref()), resolve(key.get_ref()));
    if !raw.redis_url.get_ref().starts_with("rediss://") {
        issues.push((
            cert.span(),
            field("client_cert_file"),
            "a client certificate is for TLS: use a `rediss://` redis_url".into(),
        ));
        return Some(paths);
    }
    let cert_ok = super::tls::certificates(&paths.0)
        .map_err(|e| issues.push((cert.span(), field("client_cert_file"), e)))
        .is_ok();
    let key_ok = super::tls::private_key(&paths.1)
        .map_err(|e| issues.push((key.span(), field("client_key_file"), e)))
        .is_ok();
    if cert_ok && key_ok {
        if let Err(e) = super::tls::pair(&paths.0, &paths.1) {
            issues.push((key.span(), field("client_key_file"), e));
        }
    }
    Some(paths)
}

/// Validates the section. `default_port` names the instance when `instance_id` is unset;
/// `resolve` makes a path relative to the config file.
pub fn validate(
    raw: &FleetSection,
    default_port: Option<u16>,
    resolve: impl Fn(&str) -> PathBuf,
) -> (FleetSettings, Vec<FleetIssue>) {
    let mut issues = Vec::new();
    check_url(&raw.redis_url, "redis_url", &mut issues);
    let cluster = raw.redis_cluster.unwrap_or(false);
    let cluster_seeds = cluster_seeds(raw, cluster, &mut issues);
    let ca_file = ca_file(raw, &resolve, &mut issues);
    let client_cert = client_cert(raw, &resolve, &mut issues);
    let instance_id = match &raw.instance_id {
        Some(id) => {
            let ok = !id.get_ref().is_empty()
                && id.get_ref().len() <= 128
                && id.get_ref().chars().all(|c| c.is_ascii_graphic());
            if !ok {
                issues.push((
                    id.span(),
                    "fleet.instance_id".into(),
                    "must be 1-128 printable characters without spaces".into(),
                ));
            }
            id.get_ref().clone()
        }
        // Port 0 (bound by the OS) names nothing stable: the pid tells instances apart.
        None => match default_port.filter(|p| *p != 0) {
            Some(port) => format!("{}:{port}", hostname()),
            None => format!("{}:pid{}", hostname(), std::process::id()),
        },
    };
    let key_prefix = raw
        .key_prefix
        .as_ref()
        .map_or_else(|| "tg".to_string(), |p| p.get_ref().clone());
    if let Some(p) = &raw.key_prefix {
        if p.get_ref().is_empty() || p.get_ref().contains(['{', '}', ' ']) {
            issues.push((
                p.span(),
                "fleet.key_prefix".into(),
                "must be non-empty, without braces or spaces".into(),
            ));
        }
    }
    let lease_fraction = match &raw.lease_fraction {
        Some(f) if !(*f.get_ref() > 0.0 && *f.get_ref() <= 1.0) => {
            issues.push((
                f.span(),
                "fleet.lease_fraction".into(),
                "must be greater than 0 and at most 1".into(),
            ));
            0.05
        }
        Some(f) => *f.get_ref(),
        None => 0.05,
    };
    let settings = FleetSettings {
        redis_url: raw.redis_url.get_ref().clone(),
        ca_file,
        client_cert,
        cluster,
        cluster_seeds,
        password_file: raw.password_file.as_ref().map(|p| resolve(p.get_ref())),
        instance_id,
        key_prefix,
        sync_interval: ms(&raw.sync_interval_ms, "sync_interval_ms", 100, &mut issues),
        lease_fraction,
        idle_return: ms(&raw.idle_return_ms, "idle_return_ms", 2_000, &mut issues),
        heartbeat: ms(&raw.heartbeat_ms, "heartbeat_ms", 1_000, &mut issues),
        redis_timeout: ms(&raw.redis_timeout_ms, "redis_timeout_ms", 50, &mut issues),
        key_check: ms(&raw.key_check_ms, "key_check_ms", 500, &mut issues),
        usage_push: ms(&raw.usage_push_ms, "usage_push_ms", 1_000, &mut issues),
        on_redis_down: down_mode(&raw.on_redis_down, &mut issues),
    };
    if let Some(path) = &settings.password_file {
        if let Err(e) = std::fs::metadata(path) {
            let span = raw.password_file.as_ref().map_or(0..0, |p| p.span());
            issues.push((
                span,
                "fleet.password_file".into(),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    }
    (settings, issues)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "tokengate".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (FleetSettings, Vec<FleetIssue>) {
        let raw: FleetSection = toml::from_str(text).unwrap();
        validate(&raw, Some(8080), |p: &str| PathBuf::from(p))
    }

    #[test]
    fn defaults() {
        let (s, issues) = parse(r#"redis_url = "redis://127.0.0.1:6379""#);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(s.sync_interval, Duration::from_millis(100));
        assert_eq!(s.on_redis_down, DownMode::LocalShare);
        assert!(s.instance_id.ends_with(":8080"));
        assert_eq!(s.key_prefix, "tg");
    }

    #[test]
    fn bad_values_are_named() {
        let (_, issues) = parse(
            r#"redis_url = "http://x"
               on_redis_down = "maybe"
               lease_fraction = 0.0
               sync_interval_ms = 0"#,
        );
        let fields: Vec<&str> = issues.iter().map(|i| i.1.as_str()).collect();
        assert_eq!(
            fields,
            [
                "fleet.redis_url",
                "fleet.lease_fraction",
                "fleet.sync_interval_ms",
                "fleet.on_redis_down"
            ]
        );
        assert!(toml::from_str::<FleetSection>("redis_url = \"redis://a\"\nredis = 1").is_err());
    }

    #[test]
    fn modes_and_credentials() {
        let (s, issues) = parse(
            r#"redis_url = "redis://user:pw@redis.internal:6380/2"
               on_redis_down = "fail-closed""#,
        );
        assert!(issues.is_empty());
        assert_eq!(s.on_redis_down, DownMode::FailClosed);
    }

    #[test]
    fn tls_and_cluster_settings() {
        let (s, issues) = parse(
            r#"redis_url = "rediss://redis.internal:6380"
               redis_cluster = true
               redis_cluster_seeds = ["rediss://redis-2.internal:6380"]"#,
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert!(s.cluster);
        assert_eq!(s.cluster_seeds, ["rediss://redis-2.internal:6380"]);
        assert_eq!(s.ca_file, None);

        let (_, issues) = parse(
            r#"redis_url = "rediss://a:1"
               client_key_file = "k.pem""#,
        );
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].2.contains("both"), "{issues:?}");

        let (_, issues) = parse(
            r#"redis_url = "redis://a:1"
               ca_file = "/nonexistent/ca.pem"
               redis_cluster_seeds = ["rediss://b:2", "nope"]"#,
        );
        let fields: Vec<&str> = issues.iter().map(|i| i.1.as_str()).collect();
        assert_eq!(
            fields,
            [
                "fleet.redis_cluster_seeds",
                "fleet.redis_cluster_seeds",
                "fleet.redis_cluster_seeds",
                "fleet.redis_cluster_seeds",
                "fleet.ca_file",
            ],
            "{issues:?}"
        );
        assert!(issues[4].2.contains("rediss://"), "{issues:?}");
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let text = format!(
            "redis_url = \"rediss://r:6380\"\nca_file = \"{}\"",
            path.display()
        );
        let (s, issues) = parse(&text);
        assert_eq!(s.ca_file.as_deref(), Some(path.as_path()));
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].1, "fleet.ca_file");
        assert!(issues[0].2.contains("CERTIFICATE"), "{issues:?}");
    }
}
