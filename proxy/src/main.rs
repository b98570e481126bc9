//! `edge-proxy` CLI: `run -c FILE [--upgrade]`, `check -c FILE` (exit 78 when invalid),
//! `print-default-config`. Thin: all behaviour lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use config_diagnostics::EXIT_CONFIG;
use edge_proxy::config::{self, RuntimeConfig};
use edge_proxy::metrics::Metrics;
use pingora::server::RunArgs;

/// mimalloc: per-thread heaps (glibc's arenas contend on the workers' many small allocations).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "edge-proxy",
    version,
    about = "Pingora edge proxy for the product catalog"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve until SIGTERM (graceful), SIGINT (fast) or SIGQUIT (hand sockets to an --upgrade process).
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets over from the running instance (graceful upgrade).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file; prints every problem as `path: problem (hint)` and exits 78 if any.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the documented default configuration.
    PrintDefaultConfig,
}

fn load(path: &Path) -> Result<RuntimeConfig, ExitCode> {
    config::load(path).map_err(|err| {
        err.report(path);
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::PrintDefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::Check { config } => match load(&config) {
            Ok(cfg) => {
                // Every plugin: compiled, its imports and ABI checked, started with its config.
                let failures: Vec<String> = cfg
                    .plugins
                    .iter()
                    .filter_map(|spec| {
                        edge_proxy::plugin::PluginHost::start(
                            std::slice::from_ref(spec),
                            &cfg.plugin_host,
                            Arc::new(Metrics::new()),
                        )
                        .err()
                        .map(|e| e.to_string())
                    })
                    .collect();
                if !failures.is_empty() {
                    eprintln!(
                        "{}: {} plugin problem(s):",
                        config.display(),
                        failures.len()
                    );
                    for failure in failures {
                        eprintln!("  {failure}");
                    }
                    return ExitCode::from(EXIT_CONFIG);
                }
                println!(
                    "{}: ok (listen {}, admin {}, {} upstream(s), {} route(s), {} plugin(s))",
                    config.display(),
                    cfg.listen,
                    cfg.admin_listen,
                    cfg.upstreams.len(),
                    cfg.router.routes().count(),
                    cfg.plugins.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config, upgrade } => match load(&config) {
            Ok(cfg) => {
                println!(
                    "edge-proxy (pid {}) listening on http://{} (admin http://{})",
                    std::process::id(),
                    cfg.listen,
                    cfg.admin_listen
                );
                let draining = Arc::new(AtomicBool::new(false));
                let server = match edge_proxy::build_server(
                    Arc::new(cfg),
                    Arc::new(Metrics::new()),
                    draining.clone(),
                    upgrade,
                ) {
                    Ok(server) => server,
                    Err(e) => {
                        eprintln!("edge-proxy: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                };
                let signals = edge_proxy::StopSignals::new(None, true, draining);
                server.run(RunArgs {
                    shutdown_signal: Box::new(signals),
                });
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}
