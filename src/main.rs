//! `tokengate`: run the proxy, check a config, or start the self-contained demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use tokengate::server::{self, RunFlags};

#[derive(Parser)]
#[command(name = "tokengate", version, about = "LLM edge proxy on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Config file.
    #[arg(short = 'c', long = "config", default_value = "conf/tokengate.toml")]
    config: PathBuf,
    /// Daemonize (Pingora `-d`).
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Take over the listeners of a running instance (Pingora `-u`).
    #[arg(short = 'u', long)]
    upgrade: bool,
    /// Validate and exit (Pingora `-t`).
    #[arg(short = 't', long)]
    test: bool,
    /// Once every listener accepts, write the bound addresses here as JSON
    /// (`{"pid", "listen", "tls_listen", "admin_listen"}`); how a supervisor or a test learns
    /// the ports of `127.0.0.1:0` listeners.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate a config file; prints every error and exits non-zero if any.
    Check {
        #[arg(short = 'c', long = "config", default_value = "conf/tokengate.toml")]
        config: PathBuf,
    },
    /// Manage API keys offline.
    #[command(subcommand)]
    Key(KeyCommand),
    /// lua-free-rules tools.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Run one simulated replica (the demo's and the tests' upstream; same as `tokengate-sim`).
    Sim(tokengate::sim::SimConfig),
    /// Start simulated replicas and the proxy on this machine (see README).
    Demo {
        #[arg(short = 'c', long = "config", default_value = "conf/demo.toml")]
        config: PathBuf,
        /// Seconds before a simulated replica that exited (e.g. was killed) is started again.
        #[arg(long, default_value_t = 10.0)]
        restart_after_secs: f64,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key, print its secret once, store its hash in the keys file.
    New(tokengate::cli::KeyNewArgs),
    /// Copy a keys file into the fleet's Redis ([fleet]); every instance then serves them.
    Import(tokengate::distributed::import::KeyImportArgs),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Run the example requests shipped in the rule files and report pass/fail.
    Test {
        #[arg(default_value = "lua-free-rules")]
        dir: PathBuf,
        /// Config naming the clusters and models the rules may refer to.
        #[arg(short = 'c', long = "config", default_value = "conf/demo.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Check { config }) => match tokengate::config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} clusters, {} models)",
                    config.display(),
                    c.clusters.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Key(KeyCommand::New(args))) => tokengate::cli::key_new(args),
        Some(Command::Key(KeyCommand::Import(args))) => {
            tokengate::distributed::import::key_import(args)
        }
        Some(Command::Rules(RulesCommand::Test { dir, config })) => {
            tokengate::cli::rules_test(&dir, &config)
        }
        Some(Command::Sim(config)) => match tokengate::sim::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tokengate sim: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Demo {
            config,
            restart_after_secs,
        }) => match Duration::try_from_secs_f64(restart_after_secs)
            .map_err(|e| format!("--restart-after-secs: {e}"))
            .and_then(|delay| tokengate::demo::run(&config, delay))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(args: RunArgs) -> ExitCode {
    let flags = RunFlags {
        daemon: args.daemon,
        upgrade: args.upgrade,
        test: args.test,
        ready_file: args.ready_file,
    };
    match server::run(&args.config, flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}
