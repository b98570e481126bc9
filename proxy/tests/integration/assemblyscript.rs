//! A plugin written with the AssemblyScript SDK (`@solo-io/proxy-runtime` 0.1.8, its pinned
//! assemblyscript 0.14, its README's build line), unmodified, through the real proxy: it imports
//! `wasi_unstable`, exports `malloc` rather than `proxy_on_memory_allocate`, treats any status
//! but Ok for its configuration as fatal (an empty one included), and registers its root
//! context under the root id `add_header`, which the host hands back as `plugin_root_id`.

use std::net::SocketAddr;

use crate::common::{assemblyscript_wasm, proxy_yaml, start_counting_echo, Proxy};

fn start(echo: SocketAddr) -> Proxy {
    let wasm = assemblyscript_wasm("add-header-as", "add_header_as");
    let routes =
        "  - { name: greeter, path_prefix: /greet/, upstream: echo, plugins: [greeter] }\n\
                  \x20 - { name: plain, path_prefix: /plain/, upstream: echo, plugins: [plain] }";
    Proxy::start(|dir| {
        proxy_yaml(dir, &format!("  echo: {{ addresses: [{echo}] }}"), routes)
            + &format!(
                "plugins:\n\
                 \x20 - {{ name: greeter, module: {wasm}, root_id: add_header, config: hi there }}\n\
                 \x20 - {{ name: plain, module: {wasm}, root_id: add_header }}\n",
                wasm = wasm.display(),
            )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assemblyscript_plugin_loads_and_runs_unmodified() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    let greeted = p.get("/greet/x").await;
    assert_eq!(greeted.status(), 200);
    assert_eq!(greeted.headers()["hello"], "hi there");
    // An empty configuration is an empty buffer, not NotFound (which this SDK treats as fatal).
    let plain = p.get("/plain/x").await;
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["hello"], "world!");
    let denied = p
        .http
        .get(p.url("/greet/secret"))
        .header("x-as-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.text().await.unwrap(), "denied");
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    p.stop().await;
}
