//! `tokengate key import`: copies a keys file into the fleet's Redis (hashes only), so every
//! instance serves those keys. Existing names are kept unless `--overwrite`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{keys, FleetLink};
use crate::ratelimit::lease::{LeaseParams, LeaseShared};

#[derive(clap::Args, Debug)]
pub struct KeyImportArgs {
    /// The keys file; default: `auth.keys_file` of the config.
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    /// Replace keys that already exist in Redis under the same name.
    #[arg(long)]
    pub overwrite: bool,
    /// A config with a `[fleet]` section (the Redis to import into).
    #[arg(short = 'c', long = "config", default_value = "conf/tokengate.toml")]
    pub config: PathBuf,
}

pub fn key_import(args: KeyImportArgs) -> ExitCode {
    match run(&args) {
        Ok((written, skipped)) => {
            println!("imported {written} key(s) into Redis, {skipped} kept as they were");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokengate key import: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &KeyImportArgs) -> Result<(usize, usize), String> {
    let config = crate::config::load(&args.config).map_err(|e| e.to_string())?;
    let fleet = config
        .fleet
        .as_ref()
        .ok_or_else(|| format!("{}: no [fleet] section", args.config.display()))?;
    let path = match (&args.keys_file, &config.auth) {
        (Some(p), _) => p.clone(),
        (None, Some(auth)) => auth.keys_file.clone(),
        (None, None) => return Err("no [auth] keys_file; pass --keys-file".into()),
    };
    let list = crate::auth::file::load(&path).map_err(|e| e.to_string())?;
    let mut settings = fleet.clone();
    // An import is not on any hot path: give Redis time.
    settings.redis_timeout = settings
        .redis_timeout
        .max(std::time::Duration::from_secs(2));
    let link = FleetLink::new(&settings, LeaseShared::new(LeaseParams::default()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        link.start_connection().map_err(|e| e.to_string())?;
        keys::import(&link, &list, args.overwrite)
            .await
            .map_err(|e| e.to_string())
    })
}
