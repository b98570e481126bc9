//! The `origin-service` binary: `check` on every shipped config, config errors (exit 78), `seed`.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_origin-service"))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn shipped_config_passes_check() {
    let out = bin()
        .args(["check", "-c"])
        .arg(repo_root().join("config/origin.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn invalid_config_lists_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1\ncatalog: { max_limit: 10, default_limit: 20 }\n",
    )
    .unwrap();
    let out = bin().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("listen: `127.0.0.1` is not a socket address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("catalog.default_limit: 20 is outside 1..=10"),
        "{stderr}"
    );

    std::fs::write(&path, "database:\n  pool:\n    max_conns: 3\n").unwrap();
    let out = bin().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("database.pool.max_conns: unknown key"),
        "{stderr}"
    );

    let out = bin()
        .args(["check", "-c", "/nonexistent/origin.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn seed_replaces_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("origin.yaml");
    std::fs::write(&path, "state_dir: state\n").unwrap();
    let out = bin()
        .args(["seed", "--products", "1234", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("seeded 1234 products"));
    assert!(dir.path().join("state/catalog.sqlite3").is_file());
}
