//! `edge-proxy` CLI: `run -c FILE [--upgrade]`, `check -c FILE` (exit 78 when invalid),
//! `reload -c FILE`, `print-default-config`. Thin: all behaviour lives in the library.

use std::io::IsTerminal;
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
    /// Ask the running instance to reload FILE (its admin listener and `admin.token` are read
    /// from FILE): prints the new generation and any setting that needs a restart; exits 78
    /// with every problem when the file is invalid (the running configuration then stays).
    /// `kill -HUP <pid>` does the same without a token.
    Reload {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the documented default configuration.
    PrintDefaultConfig,
}

/// Prints that the proxy listens once its data-plane port really does (every plugin loaded
/// before the server starts binding), so whoever waits for the line can send at once; every
/// listener is named with its scheme.
fn announce_when_listening(
    listen: std::net::SocketAddr,
    listeners: String,
    admin: std::net::SocketAddr,
) {
    let pid = std::process::id();
    let spawned = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            if edge_proxy::listening::wait_for_tcp(listen, std::time::Duration::from_secs(60)) {
                println!("edge-proxy (pid {pid}) listening on {listeners} (admin http://{admin})");
            } else {
                eprintln!("edge-proxy (pid {pid}): not listening on {listen} after 60 s");
            }
        });
    if let Err(e) = spawned {
        eprintln!("edge-proxy: cannot start the announcement thread: {e}");
    }
}

/// `edge-proxy reload`: `POST /config/reload` on the instance's admin listener.
fn reload(cfg: &RuntimeConfig) -> ExitCode {
    use std::io::{Read, Write};
    let Some(token) = &cfg.admin_token else {
        eprintln!("edge-proxy reload: admin.token is not set, so the admin listener refuses reloads; send SIGHUP instead (kill -HUP <pid>)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let exchange = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(cfg.admin_listen)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
        write!(
            stream,
            "POST /config/reload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            cfg.admin_listen
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    match exchange() {
        Ok(answer) => {
            let status = answer.split(' ').nth(1).unwrap_or_default();
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            match status {
                "200" => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                "422" => {
                    eprintln!("{body}");
                    ExitCode::from(EXIT_CONFIG)
                }
                _ => {
                    eprintln!("edge-proxy reload: the admin listener answered {status}: {body}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!(
                "edge-proxy reload: cannot reach the admin listener at {}: {e}",
                cfg.admin_listen
            );
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<RuntimeConfig, ExitCode> {
    config::load(path).map_err(|err| {
        err.report(path);
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    // Logs go to stderr; stdout carries only what a command prints as its result (the
    // `listening` line of `run`, the default config, `check`'s verdict).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into files or collectors.
        .with_ansi(std::io::stderr().is_terminal())
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
                print_certificates(&cfg);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Reload { config } => match load(&config) {
            Ok(cfg) => reload(&cfg),
            Err(code) => code,
        },
        Command::Run { config, upgrade } => match load(&config) {
            Ok(cfg) => {
                let draining = Arc::new(AtomicBool::new(false));
                let upgrade_sock = PathBuf::from(&cfg.server.upgrade_sock);
                let upgrade_timeout = cfg.server.upgrade_timeout;
                let (listen, admin) = (cfg.listen, cfg.admin_listen);
                let listeners = cfg
                    .listeners
                    .iter()
                    .map(|l| {
                        let scheme = if l.tls.is_some() { "https" } else { "http" };
                        format!("{scheme}://{}", l.address)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let options = edge_proxy::BuildOptions {
                    upgrade,
                    source: Some(config.clone()),
                };
                let built = match edge_proxy::build_server(
                    Arc::new(cfg),
                    Arc::new(Metrics::new()),
                    draining.clone(),
                    options,
                ) {
                    Ok(built) => built,
                    Err(e) => {
                        eprintln!("edge-proxy: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                };
                if let Err(e) = edge_proxy::reload::reload_on_sighup(built.reloader) {
                    eprintln!("edge-proxy: cannot install the SIGHUP (reload) handler: {e}");
                    return ExitCode::FAILURE;
                }
                let server = built.server;
                announce_when_listening(listen, listeners, admin);
                let signals =
                    edge_proxy::StopSignals::unix(upgrade_sock, upgrade_timeout, draining);
                server.run(RunArgs {
                    shutdown_signal: Box::new(signals),
                });
                built.access_log.flush();
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

/// Certificates closer to their end than this are flagged by `check`.
const CERTIFICATE_WARNING_DAYS: i64 = 30;

/// Every served certificate (each key already checked against its certificate) and the days it
/// has left.
fn print_certificates(cfg: &edge_proxy::config::RuntimeConfig) {
    let now = std::time::SystemTime::now();
    for listener in &cfg.listeners {
        let Some(tls) = &listener.tls else { continue };
        for cert in &tls.certificates {
            let days = cert.days_left(now);
            let flag = if days < CERTIFICATE_WARNING_DAYS {
                " (renew soon)"
            } else {
                ""
            };
            println!(
                "  https {}: certificate {} [{}], key matches, {days} day(s) left{flag}",
                listener.address,
                cert.subject,
                cert.names.join(", "),
            );
        }
    }
}
