//! The `edge-proxy` binary: `check` and `print-default-config`.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-proxy"))
}

#[test]
fn invalid_config_lists_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:80800\n\
         upstreams:\n  catalog:\n    addresses: [127.0.0.1:8443]\n    read_timeout: 0s\n    tls: { sni: localhost, ca_file: nope.pem }\n\
         routes:\n  - { name: catalog, path_prefix: api, upstream: origin }\n",
    )
    .unwrap();
    let out = bin().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "5 problem(s)",
        "listen: `127.0.0.1:80800` is not a socket address",
        "upstreams.catalog.tls.ca_file: file ",
        "upstreams.catalog.read_timeout: must be greater than zero",
        "routes[0].path_prefix: `api` does not start with /",
        "routes[0].upstream: unknown upstream `origin` (defined upstreams: catalog)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in\n{stderr}"
        );
    }

    // Every unknown key, not only the first (serde stops at the first).
    std::fs::write(
        &path,
        "listn: x\nupstreams:\n  catalog:\n    pool: 3\nroutes:\n  - { name: r, path_prefix: /, upstream: catalog, plugin: [] }\n",
    )
    .unwrap();
    let out = bin().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["listn", "upstreams.catalog.pool", "routes[0].plugin"] {
        assert!(
            stderr.contains(&format!("{key}: unknown key")),
            "{key} not named in\n{stderr}"
        );
    }

    std::fs::write(
        &path,
        "upstreams:\n  catalog:\n    connect_timeout: 5 fortnights\n",
    )
    .unwrap();
    let out = bin().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstreams.catalog.connect_timeout:"));
}

#[test]
fn print_default_config_is_the_shipped_file() {
    let out = bin().arg("print-default-config").output().unwrap();
    assert!(out.status.success());
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/edge.yaml"))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), shipped);
}

#[test]
fn check_runs_every_plugin_and_names_the_one_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.yaml");
    let wasm = crate::common::plugin_wasm("conformance");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm but not really").unwrap();
    let config = |plugins: &str| {
        format!(
            "upstreams:\n  echo: {{ addresses: [127.0.0.1:9] }}\n\
             plugins:\n{plugins}\
             routes:\n  - {{ name: r, path_prefix: /, upstream: echo, plugins: [good] }}\n"
        )
    };
    let good = format!(
        "  - {{ name: good, module: {}, config: {{ greeting: hi }} }}\n",
        wasm.display()
    );
    std::fs::write(&path, config(&good)).unwrap();
    let out = bin().args(["check", "-c"]).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 plugin(s)"));

    let bad = format!(
        "{good}  - {{ name: picky, module: {}, config: {{ reject: true }} }}\n  - {{ name: junk, module: {} }}\n",
        wasm.display(),
        junk.display()
    );
    std::fs::write(&path, config(&bad)).unwrap();
    let out = bin().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 plugin problem(s)"), "{stderr}");
    assert!(
        stderr.contains("plugin `picky`: proxy_on_configure rejected the configuration"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plugin `junk`: not a valid wasm module"),
        "{stderr}"
    );
}
