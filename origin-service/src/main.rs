//! `origin-service` CLI: `run`, `check` and `seed`, each taking `-c FILE`. Thin: all behaviour
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config_diagnostics::EXIT_CONFIG;
use origin_service::config::OriginConfig;

/// mimalloc: per-thread heaps (glibc's arenas contend on the workers' many small allocations).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "origin-service",
    version,
    about = "The shirt shop's product-catalog API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create/migrate/seed the database if needed, then serve HTTPS until SIGINT/SIGTERM.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Prepare the state folder (database created, migrated, seeded; test CA generated) and exit.
    Init {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file: prints every problem as `path: problem (hint)`, exits 78 if any.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Replace the catalog with a deterministic one of N products (default: database.seed_products).
    Seed {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "N")]
        products: Option<u32>,
    },
}

fn load(path: &std::path::Path) -> Result<OriginConfig, ExitCode> {
    OriginConfig::load(path).map_err(|err| {
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
    let cli = Cli::parse();
    let config_path = match &cli.command {
        Command::Run { config }
        | Command::Init { config }
        | Command::Check { config }
        | Command::Seed { config, .. } => config.clone(),
    };
    let config = match load(&config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let outcome = match cli.command {
        Command::Check { .. } => {
            println!(
                "{}: ok (listen {}, database {}, pool {}..{} connections)",
                config_path.display(),
                config.listen,
                config.database_path().display(),
                config.database.pool.min_idle,
                config.database.pool.max_connections
            );
            Ok(())
        }
        Command::Run { .. } => runtime().and_then(|rt| rt.block_on(run(config))),
        Command::Init { .. } => runtime().and_then(|rt| {
            let state = rt
                .block_on(origin_service::prepare_state(&config))
                .context("preparing the state folder failed")?;
            println!(
                "{} products in {}",
                state.products,
                config.database_path().display()
            );
            if let Some(ca) = state.ca_file {
                println!("test CA: {}", ca.display());
            }
            Ok(())
        }),
        Command::Seed { products, .. } => runtime().and_then(|rt| {
            let n = products.unwrap_or(config.database.seed_products);
            let count = rt
                .block_on(origin_service::reseed(&config, n))
                .context("seeding failed")?;
            println!(
                "seeded {count} products into {}",
                config.database_path().display()
            );
            Ok(())
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("origin-service: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(config: OriginConfig) -> anyhow::Result<()> {
    let origin = origin_service::start(config)
        .await
        .context("origin-service failed to start")?;
    println!(
        "origin-service listening on https://{}",
        origin.local_addr()
    );
    if let Some(ca) = origin.ca_file() {
        println!("trust this CA to call it: {}", ca.display());
    }
    let shutdown = origin.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        shutdown.trigger();
    });
    origin.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
