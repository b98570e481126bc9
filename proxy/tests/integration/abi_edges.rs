//! ABI edges no SDK plugin of ours reaches, probed with small hand-written modules (wasm text)
//! through the real proxy: calls other hosts link (`proxy_get_header_map_size`,
//! `proxy_get_buffer_status`), the names AssemblyScript modules import (`wasi_unstable`,
//! `env.abort`), an empty configuration read as an empty buffer, and guest arguments that
//! would make the host allocate without bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::common::{proxy_yaml, start_counting_echo, Proxy};

/// A module exporting the ABI marker, memory, an allocator (a fixed scratch area) and a
/// `proxy_on_request_headers` running `body` (which traps with `unreachable` on a failed
/// check), importing `imports`.
fn module(dir: &Path, name: &str, imports: &str, body: &str) -> PathBuf {
    let text = format!(
        r#"(module
          {imports}
          (memory (export "memory") 2)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 65536))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            {body}
            (i32.const 0)))"#
    );
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(text).unwrap()).unwrap();
    path
}

/// Traps unless `$call` (an i32 expression) is 0 (Ok).
fn ok(call: &str) -> String {
    format!("(if (i32.ne {call} (i32.const 0)) (then unreachable))")
}

/// Traps unless the i32 at `address` equals `expected` (an i32 expression).
fn stored(address: u32, expected: &str) -> String {
    format!("(if (i32.ne (i32.load (i32.const {address})) {expected}) (then unreachable))")
}

const IMPORTS: &str = r#"
  (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $map_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
  (import "wasi_unstable" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
"#;

const RANDOM_IMPORT: &str = r#"
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
"#;

/// Each route runs one module: `/sizes/` (header map size = the serialized pairs' size; the
/// configuration's buffer status = its length), `/empty-config/` (an empty configuration is an
/// empty buffer, Ok), and the hostile `/random-bomb/` and `/iovec-bomb/`.
fn start(echo: SocketAddr) -> Proxy {
    Proxy::start(|dir| {
        let sizes = module(
            dir,
            "sizes",
            IMPORTS,
            &[
                ok("(call $map_size (i32.const 0) (i32.const 256))"),
                ok("(call $map_pairs (i32.const 0) (i32.const 260) (i32.const 264))"),
                stored(256, "(i32.load (i32.const 264))"),
                "(if (i32.eqz (i32.load (i32.const 256))) (then unreachable))".into(),
                ok("(call $buffer_status (i32.const 7) (i32.const 268) (i32.const 272))"),
                stored(268, "(i32.const 5)"),
            ]
            .join("\n"),
        );
        let empty = module(
            dir,
            "empty",
            IMPORTS,
            &[
                ok("(call $buffer_bytes (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 276) (i32.const 280))"),
                stored(280, "(i32.const 0)"),
                ok("(call $buffer_status (i32.const 7) (i32.const 284) (i32.const 288))"),
                stored(284, "(i32.const 0)"),
            ]
            .join("\n"),
        );
        // 4 GiB - 64 KiB of randomness into a 128 KiB memory.
        let random = module(
            dir,
            "random",
            RANDOM_IMPORT,
            "(drop (call $random_get (i32.const 0) (i32.const 0xFFFF0000)))",
        );
        // 2^32 - 1 iovecs, each naming the whole memory.
        let iovec = module(
            dir,
            "iovec",
            IMPORTS,
            "(i32.store (i32.const 0) (i32.const 0))
             (i32.store (i32.const 4) (i32.const 131072))
             (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 0xFFFFFFFF) (i32.const 8)))",
        );
        let plugin = |name: &str, module: &Path, config: &str| {
            format!(
                "  - {{ name: {name}, module: {}, config: {config}, limits: {{ memory_bytes: 1048576 }} }}\n",
                module.display()
            )
        };
        let route = |name: &str| {
            format!("  - {{ name: {name}, path_prefix: /{name}/, upstream: echo, plugins: [{name}] }}\n")
        };
        let plugins = [
            plugin("sizes", &sizes, "hello"),
            plugin("empty-config", &empty, "''"),
            plugin("random-bomb", &random, "''"),
            plugin("iovec-bomb", &iovec, "''"),
        ]
        .concat();
        let routes = ["sizes", "empty-config", "random-bomb", "iovec-bomb"]
            .map(route)
            .concat();
        proxy_yaml(
            dir,
            &format!("  echo: {{ addresses: [{echo}] }}"),
            routes.trim_end(),
        ) + "plugins:\n"
            + &plugins
    })
}

/// This process's peak resident memory, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Regression: `proxy_get_header_map_size` and `proxy_get_buffer_status` were not linked (a
/// module importing them did not load), nor were `wasi_unstable` and `env.abort`; an empty
/// plugin configuration read as NotFound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_statuses_and_assemblyscript_imports_are_linked() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    assert_eq!(p.get("/sizes/x").await.status(), 200);
    assert_eq!(p.get("/empty-config/x").await.status(), 200);
    p.stop().await;
}

/// Regression: `random_get` allocated (and filled) the guest's length on the host before
/// checking it against the guest's memory: a 128 KiB plugin made the host touch 4 GiB. A
/// guest's call now costs the host at most the guest's own memory, and a bad range traps
/// that VM only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_lengths_never_make_the_host_allocate_beyond_the_guest() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    let before = peak_rss();
    for path in ["/random-bomb/x", "/iovec-bomb/x"] {
        let response = p.get(path).await;
        assert_eq!(response.status(), 503, "{path}");
    }
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 256 << 20, "peak memory grew by {grown} bytes");
    assert_eq!(p.get("/sizes/x").await.status(), 200, "the proxy serves on");
    p.stop().await;
}
