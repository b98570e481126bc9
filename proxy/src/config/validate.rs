//! Semantic checks on the parsed file. Collects EVERY problem (`path: problem (hint)`), then
//! compiles the file into a `RuntimeConfig`: resolved paths, parsed addresses, built routes.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file::{FileConfig, UpstreamFile, MAX_WRITE_BUFFER};
use super::runtime::{RuntimeConfig, ServerSettings};
use crate::access_log::Destination;
use crate::routing::{CachePolicy, Route, Router};
use crate::upstream::{PeerSettings, Upstream};
use config_diagnostics::{resolve, Problem, Problems};

fn upstream(
    name: &str,
    file: &UpstreamFile,
    base: &Path,
    problems: &mut Problems,
    ca_files: &mut BTreeSet<PathBuf>,
) -> Upstream {
    let at = |key: &str| format!("upstreams.{name}.{key}");
    if file.addresses.is_empty() {
        problems.add(
            at("addresses"),
            "no addresses",
            Some("list at least one ip:port, e.g. [127.0.0.1:8443]"),
        );
    }
    let addresses: Vec<SocketAddr> = file
        .addresses
        .iter()
        .enumerate()
        .filter_map(|(i, a)| problems.socket_addr(&format!("{}[{i}]", at("addresses")), a))
        .collect();
    let sni = file.tls.as_ref().map(|tls| {
        if tls.sni.trim().is_empty() {
            problems.add(
                at("tls.sni"),
                "must not be empty",
                Some("the name on the origin's certificate, e.g. localhost"),
            );
        }
        if let Some(ca) = &tls.ca_file {
            let path = resolve(base, ca);
            if !path.is_file() {
                problems.add(
                    at("tls.ca_file"),
                    format!("file {} does not exist", path.display()),
                    Some("paths are relative to the config file's folder; start the origin once to generate its CA"),
                );
            }
            ca_files.insert(path);
        }
        tls.sni.clone()
    });
    if file.pool_size == 0 {
        problems.add(at("pool_size"), "must be at least 1", None);
    }
    problems.positive(&at("idle_timeout"), file.idle_timeout);
    problems.positive(&at("connect_timeout"), file.connect_timeout);
    problems.positive(&at("total_connect_timeout"), file.total_connect_timeout);
    problems.positive(&at("read_timeout"), file.read_timeout);
    problems.positive(&at("write_timeout"), file.write_timeout);
    problems.positive(&at("response_timeout"), file.response_timeout);
    if file.total_connect_timeout < file.connect_timeout {
        problems.add(
            at("total_connect_timeout"),
            "is shorter than connect_timeout",
            Some("total_connect_timeout covers TCP connect plus the TLS handshake"),
        );
    }
    if let Some(ka) = &file.tcp_keepalive {
        problems.positive(&at("tcp_keepalive.idle"), ka.idle);
        problems.positive(&at("tcp_keepalive.interval"), ka.interval);
        if ka.count == 0 {
            problems.add(at("tcp_keepalive.count"), "must be at least 1", None);
        }
    }
    if file.shield && file.host_header.is_some() {
        problems.add(
            at("host_header"),
            "is set on a shield upstream",
            Some("a shield keys its cache on the client's Host, as this tier does: drop host_header so both tiers compute the same cache key"),
        );
    }
    Upstream::new(
        name,
        addresses,
        sni,
        file.host_header.clone(),
        PeerSettings {
            idle_timeout: file.idle_timeout,
            connect_timeout: file.connect_timeout,
            total_connect_timeout: file.total_connect_timeout,
            read_timeout: file.read_timeout,
            write_timeout: file.write_timeout,
            response_timeout: file.response_timeout,
            tcp_keepalive: file
                .tcp_keepalive
                .as_ref()
                .map(|ka| (ka.idle, ka.interval, ka.count)),
        },
    )
    .shielded(file.shield)
}

/// `off`, `stdout`, or a file (relative to the config's folder) in a folder that exists.
fn access_log(value: &str, base: &Path, problems: &mut Problems) -> Destination {
    match value.trim() {
        "off" => Destination::Off,
        "stdout" => Destination::Stdout,
        "" => {
            problems.add(
                "access_log",
                "must not be empty",
                Some("`off`, `stdout`, or a file path such as /var/log/edge/access.log"),
            );
            Destination::Off
        }
        path => {
            let path = resolve(base, path);
            let folder = path.parent().unwrap_or(Path::new("/"));
            if !folder.is_dir() {
                problems.add(
                    "access_log",
                    format!("folder {} does not exist", folder.display()),
                    Some("create it first, or use `stdout` or `off`"),
                );
            } else if path.is_dir() {
                problems.add(
                    "access_log",
                    format!("{} is a folder", path.display()),
                    Some("name a file in it, e.g. access.log"),
                );
            }
            Destination::File(path)
        }
    }
}

pub(super) fn validate(file: &FileConfig, base: &Path) -> Result<RuntimeConfig, Vec<Problem>> {
    let mut problems = Problems::default();
    let listeners =
        super::listeners::listeners(file.listen.as_deref(), &file.listeners, base, &mut problems);
    let listen = listeners.first().map(|l| l.address);
    let redis = super::redis::redis(file.redis.as_ref(), base, &mut problems);
    let admin = problems.socket_addr("admin.listen", &file.admin.listen);
    if let Some(admin) = admin {
        if !admin.ip().is_loopback() {
            problems.add(
                "admin.listen",
                format!("{admin} is not a loopback address"),
                Some("the admin listener serves metrics and cache purge: keep it on 127.0.0.1 or ::1"),
            );
        }
    }
    let access_log = access_log(&file.access_log, base, &mut problems);
    if file.server.threads == 0 {
        problems.add(
            "server.threads",
            "must be at least 1",
            Some("one per core is a good start"),
        );
    }
    if file.server.write_buffer > MAX_WRITE_BUFFER {
        problems.add(
            "server.write_buffer",
            format!(
                "{} bytes is more than {MAX_WRITE_BUFFER}",
                file.server.write_buffer
            ),
            Some("it is allocated for every client connection; 16384 fits a catalog page"),
        );
    }
    problems.positive(
        "server.graceful_shutdown_timeout",
        file.server.graceful_shutdown_timeout,
    );
    problems.positive("server.upgrade_timeout", file.server.upgrade_timeout);
    let downstream = &file.downstream;
    for (key, value) in [
        (
            "downstream.header_read_timeout",
            downstream.header_read_timeout,
        ),
        ("downstream.keepalive_timeout", downstream.keepalive_timeout),
        ("downstream.body_read_timeout", downstream.body_read_timeout),
    ] {
        if value < std::time::Duration::from_secs(1) {
            problems.add(key, "must be at least 1s", Some("whole seconds, e.g. 75s"));
        }
    }
    if downstream.max_connections == 0 {
        problems.add(
            "downstream.max_connections",
            "must be at least 1",
            Some("each idle client connection costs tens of KiB; 4096 is the default"),
        );
    }
    if downstream.max_requests_per_connection == 0 {
        problems.add(
            "downstream.max_requests_per_connection",
            "must be at least 1",
            Some("NGINX's keepalive_requests default is 1000"),
        );
    }

    let h2 = super::listeners::h2_limits(&downstream.h2, &mut problems);

    let mut ca_files = BTreeSet::new();
    let upstreams: HashMap<String, Arc<Upstream>> = file
        .upstreams
        .iter()
        .map(|(name, u)| {
            let built = upstream(name, u, base, &mut problems, &mut ca_files);
            (name.clone(), Arc::new(built))
        })
        .collect();
    if ca_files.len() > 1 {
        problems.add(
            "upstreams",
            format!("{} different tls.ca_file values", ca_files.len()),
            Some("upstream TLS sessions resume only through one shared trust store: put every CA in one bundle file and name it in each upstream"),
        );
    }

    if file.routes.is_empty() {
        problems.add(
            "routes",
            "no routes",
            Some("add at least one { name, path_prefix, upstream }"),
        );
    }
    let upstream_names: BTreeSet<&str> = file.upstreams.keys().map(String::as_str).collect();
    let (plugins, plugin_host) = super::plugins::validate(
        &file.plugins,
        &file.plugin_host,
        &upstream_names,
        file.server.threads.max(1),
        base,
        &mut problems,
    );
    let mut names = BTreeSet::new();
    let mut prefixes: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::new();
    for (i, route) in file.routes.iter().enumerate() {
        let at = |key: &str| format!("routes[{i}].{key}");
        if !names.insert(route.name.as_str()) {
            problems.add(
                at("name"),
                format!("duplicate route name `{}`", route.name),
                None,
            );
        }
        if let Some(first) = prefixes.insert(route.path_prefix.as_str(), i) {
            problems.add(
                at("path_prefix"),
                format!("`{}` is also routes[{first}]'s prefix", route.path_prefix),
                Some("each prefix may appear once: only one of the two routes could ever match"),
            );
        }
        if !route.path_prefix.starts_with('/') {
            problems.add(
                at("path_prefix"),
                format!("`{}` does not start with /", route.path_prefix),
                Some("e.g. /api/"),
            );
        }
        let cache = route.cache.as_ref().filter(|c| c.enabled).map(|c| {
            problems.positive(&at("cache.default_ttl"), c.default_ttl);
            problems.positive(&at("cache.lock_timeout"), c.lock_timeout);
            let mut key_query_params = c.key_query_params.clone();
            key_query_params.sort();
            key_query_params.dedup();
            if let Some(tag) = &c.tag_query_param {
                if !key_query_params.contains(tag) {
                    problems.add(
                        at("cache.tag_query_param"),
                        format!("`{tag}` is not one of cache.key_query_params"),
                        Some("an entry can only be tagged by a parameter that is part of its key"),
                    );
                }
            }
            CachePolicy {
                key_query_params,
                tag_query_param: c.tag_query_param.clone(),
                default_ttl: c.default_ttl,
                stale_while_revalidate: c.stale_while_revalidate,
                stale_if_error: c.stale_if_error,
                lock_timeout: c.lock_timeout,
            }
        });
        let chain = super::plugins::route_chain(i, &route.plugins, &plugins, &mut problems);
        match upstreams.get(&route.upstream) {
            Some(upstream) => routes.push(Route {
                name: route.name.clone(),
                path_prefix: route.path_prefix.clone(),
                upstream: upstream.clone(),
                cache,
                plugins: chain,
            }),
            None => {
                let known: Vec<&str> = file.upstreams.keys().map(String::as_str).collect();
                problems.add(
                    at("upstream"),
                    format!("unknown upstream `{}`", route.upstream),
                    Some(&format!("defined upstreams: {}", known.join(", "))),
                );
            }
        }
    }

    if file.cache.max_bytes < 1024 * 1024 {
        problems.add(
            "cache.max_bytes",
            "must be at least 1 MiB",
            Some("e.g. 268435456 for 256 MiB"),
        );
    }
    let purge_token = file.cache.purge_token.clone().filter(|t| !t.is_empty());
    let admin_token = file.admin.token.clone().filter(|t| !t.is_empty());
    if file.admin.profiling && admin_token.is_none() {
        problems.add(
            "admin.profiling",
            "needs admin.token",
            Some(
                "profiles show what the process runs: they are served only behind the admin token",
            ),
        );
    }
    for (key, token) in [
        ("cache.purge_token", &purge_token),
        ("admin.token", &admin_token),
    ] {
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            problems.add(
                key,
                "is shorter than 16 characters",
                Some("use a long random secret, e.g. `openssl rand -hex 32`"),
            );
        }
    }

    match (listen, admin, problems.is_empty()) {
        (Some(listen), Some(admin_listen), true) => Ok(RuntimeConfig {
            server: ServerSettings {
                threads: file.server.threads,
                grace_period: file.server.grace_period,
                graceful_shutdown_timeout: file.server.graceful_shutdown_timeout,
                upgrade_sock: file.server.upgrade_sock.clone(),
                upgrade_timeout: file.server.upgrade_timeout,
                write_buffer: file.server.write_buffer,
                work_stealing: file.server.work_stealing,
            },
            listen,
            listeners,
            access_log,
            downstream: super::runtime::DownstreamLimits {
                header_read_timeout: downstream.header_read_timeout,
                keepalive_timeout: downstream.keepalive_timeout,
                body_read_timeout: downstream.body_read_timeout,
                max_requests_per_connection: downstream.max_requests_per_connection,
                max_connections: downstream.max_connections,
                h2,
            },
            admin_listen,
            upstream_ca_file: ca_files.into_iter().next(),
            keepalive_pool_size: file.upstreams.values().map(|u| u.pool_size).sum(),
            cache_max_bytes: file.cache.max_bytes,
            purge_token,
            admin_token,
            admin_profiling: file.admin.profiling,
            upstreams,
            router: Router::new(routes),
            plugins,
            plugin_host,
            redis,
        }),
        _ => Err(problems.into_vec()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn problems(yaml: &str) -> Vec<String> {
        super::super::from_yaml(yaml, Path::new("/etc/edge"))
            .unwrap_err()
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const GOOD: &str = "upstreams:\n  catalog:\n    addresses: [127.0.0.1:8443]\nroutes:\n  - { name: catalog, path_prefix: /api/, upstream: catalog }\n";

    #[test]
    fn a_minimal_config_compiles() {
        let cfg = super::super::from_yaml(GOOD, Path::new("/etc/edge")).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.keepalive_pool_size, 128);
        assert_eq!(cfg.server.write_buffer, 16 * 1024);
        assert!(cfg.server_conf().work_stealing);
        assert!(cfg.router.route("/api/v1/products").is_some());
    }

    #[test]
    fn the_access_log_is_stdout_off_or_a_file_in_a_folder_that_exists() {
        use crate::access_log::Destination;
        let at = |value: &str| {
            let yaml = format!("access_log: {value}\n{GOOD}");
            super::super::from_yaml(&yaml, Path::new("/tmp")).map(|c| c.access_log)
        };
        assert_eq!(
            super::super::from_yaml(GOOD, Path::new("/tmp"))
                .unwrap()
                .access_log,
            Destination::Stdout
        );
        assert_eq!(at("off").unwrap(), Destination::Off);
        assert_eq!(
            at("edge-access.log").unwrap(),
            Destination::File("/tmp/edge-access.log".into())
        );
        let problems: Vec<String> = at("/no/such/folder/access.log")
            .unwrap_err()
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("access_log: folder /no/such/folder does not exist"),
            "{problems:?}"
        );
        assert!(at("/tmp").is_err(), "a folder is not a file");
    }

    #[test]
    fn a_shield_upstream_keeps_the_clients_host() {
        let shield = "upstreams:\n  catalog:\n    addresses: [127.0.0.1:8081]\n    shield: true\nroutes:\n  - { name: catalog, path_prefix: /api/, upstream: catalog }\n";
        let cfg = super::super::from_yaml(shield, Path::new("/tmp")).unwrap();
        assert!(cfg.upstreams["catalog"].shield);
        let found = problems(&shield.replace(
            "    shield: true\n",
            "    shield: true\n    host_header: origin.internal\n",
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("upstreams.catalog.host_header: is set on a shield upstream"),
            "{found:?}"
        );
    }

    #[test]
    fn profiling_needs_the_admin_token() {
        let found = problems(&format!("admin: {{ profiling: true }}\n{GOOD}"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("admin.profiling: needs admin.token"),
            "{found:?}"
        );
        let yaml = format!("admin: {{ profiling: true, token: 0123456789abcdef01 }}\n{GOOD}");
        let cfg = super::super::from_yaml(&yaml, Path::new("/etc/edge")).unwrap();
        assert!(cfg.admin_profiling);
    }

    #[test]
    fn work_stealing_reaches_pingora() {
        let yaml = format!("server: {{ work_stealing: false }}\n{GOOD}");
        let cfg = super::super::from_yaml(&yaml, Path::new("/etc/edge")).unwrap();
        assert!(!cfg.server_conf().work_stealing);
    }

    #[test]
    fn one_thread_runs_without_work_stealing() {
        let yaml = format!("server: {{ threads: 1, work_stealing: true }}\n{GOOD}");
        let cfg = super::super::from_yaml(&yaml, Path::new("/etc/edge")).unwrap();
        assert!(!cfg.server_conf().work_stealing);
        let yaml = format!("server: {{ threads: 3 }}\n{GOOD}");
        let cfg = super::super::from_yaml(&yaml, Path::new("/etc/edge")).unwrap();
        assert!(cfg.server_conf().work_stealing);
    }

    #[test]
    fn every_bad_config_case_names_its_key() {
        let found = problems(
            "listen: localhost\n\
             server: { write_buffer: 2000000 }\n\
             admin: { listen: 0.0.0.0:9090 }\n\
             upstreams:\n  catalog:\n    addresses: [127.0.0.1]\n    connect_timeout: 0s\n    tls: { sni: localhost, ca_file: missing-ca.pem }\n\
             routes:\n  - { name: catalog, path_prefix: /api/, upstream: catlog }\n  - { name: again, path_prefix: /api/, upstream: catalog }\n",
        );
        let expect = [
            "listen: `localhost` is not a socket address",
            "admin.listen: 0.0.0.0:9090 is not a loopback address",
            "server.write_buffer: 2000000 bytes is more than 1048576",
            "upstreams.catalog.addresses[0]: `127.0.0.1` is not a socket address",
            "upstreams.catalog.tls.ca_file: file /etc/edge/missing-ca.pem does not exist",
            "upstreams.catalog.connect_timeout: must be greater than zero",
            "routes[0].upstream: unknown upstream `catlog` (defined upstreams: catalog)",
            "routes[1].path_prefix: `/api/` is also routes[0]'s prefix",
        ];
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for e in expect {
            assert!(
                found.iter().any(|f| f.starts_with(e)),
                "missing {e:?} in {found:#?}"
            );
        }
    }
}
