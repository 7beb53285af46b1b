//! Offline subcommands: `tokengate key new`, `tokengate rules test`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::auth::{now_unix, KeyRegistry, NewKey};
use crate::config;
use crate::ratelimit::KeyLimits;

/// Arguments of `tokengate key new`.
#[derive(clap::Args, Debug)]
pub struct KeyNewArgs {
    /// Unique key name (letters, digits, `.`, `_`, `-`); what logs and metrics show.
    #[arg(long)]
    pub name: String,
    /// Model aliases the key may use (comma separated or repeated); default: all.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    #[arg(long)]
    pub requests_per_minute: Option<u64>,
    #[arg(long)]
    pub tokens_per_minute: Option<u64>,
    #[arg(long)]
    pub tokens_per_day: Option<u64>,
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// RFC 3339 UTC expiry, e.g. 2027-01-01T00:00:00Z.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// The keys file; default: `auth.keys_file` of the config.
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    #[arg(short = 'c', long = "config", default_value = "conf/tokengate.toml")]
    pub config: PathBuf,
}

/// Create a key in the keys file (atomically) and print its secret once. A running gateway
/// picks it up on its next reload; the admin API (`POST /admin/keys`) applies at once.
pub fn key_new(args: KeyNewArgs) -> ExitCode {
    let path = match &args.keys_file {
        Some(p) => p.clone(),
        None => match config::load(&args.config) {
            Ok(c) => match c.auth {
                Some(auth) => auth.keys_file,
                None => {
                    eprintln!(
                        "{}: no [auth] keys_file; pass --keys-file",
                        args.config.display()
                    );
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => {
                eprint!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let registry = match KeyRegistry::load_or_empty(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let new = NewKey {
        priority: 0,
        name: args.name,
        team: args.team,
        tags: args.tags,
        models: args.models,
        limits: KeyLimits {
            requests_per_minute: args.requests_per_minute,
            tokens_per_minute: args.tokens_per_minute,
            tokens_per_day: args.tokens_per_day,
            max_concurrent: args.max_concurrent,
        },
        expires_at: args.expires_at,
        enabled: true,
    };
    match registry.create(new, now_unix()) {
        Ok((secret, key)) => {
            println!("{secret}");
            eprintln!(
                "key `{}` added to {} (the secret above is shown only once; the file stores its SHA-256):",
                key.name,
                path.display()
            );
            if let Ok(view) = serde_json::to_string_pretty(&key.view(now_unix())) {
                eprintln!("{view}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot create the key: {e}");
            for f in e.field_errors() {
                eprintln!("  {}: {}", f.field, f.message);
            }
            ExitCode::FAILURE
        }
    }
}

/// `tokengate rules test [DIR]`: run the `[[tests]]` shipped in rule files, with cluster and
/// model names from the config.
pub fn rules_test(dir: &Path, config_path: &Path) -> ExitCode {
    let known = match config::load(config_path) {
        Ok(c) => crate::rules::KnownNames::new(
            c.clusters
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>(),
            c.model_order.clone(),
        ),
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match crate::rules::run_rule_tests(dir, &known) {
        Ok(report) => {
            print!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(2)
        }
    }
}
