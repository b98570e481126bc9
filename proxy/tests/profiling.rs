//! On-demand CPU profiles on the admin listener: only when `admin.profiling` is on, only with
//! the admin token, one at a time, and taken while the proxy (with a plugin) serves on.
//!
//! A test binary of its own: a profile samples every thread of the process (SIGPROF), and
//! would perturb the timing of whatever other tests ran beside it in the shared binary.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "integration/common.rs"]
#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pprof::protos::Message;

use common::{catalog_upstream, plugin_wasm, proxy_yaml, Origin, Proxy};

const TOKEN: &str = "profile-token-0123456789abcdef";

/// `GET /debug/pprof/profile?{query}` on the admin listener, with the admin token when
/// `authorized`.
async fn get_profile(p: &Proxy, query: &str, authorized: bool) -> reqwest::Response {
    let request = p
        .http
        .get(format!("{}/debug/pprof/profile?{query}", p.admin));
    let request = if authorized {
        request.bearer_auth(TOKEN)
    } else {
        request
    };
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_taken_behind_the_token_while_requests_flow() {
    let o = Origin::start(2_000, "").await;
    let addr = o.origin.local_addr();
    let noop = plugin_wasm("noop");
    let p = Proxy::start(|dir| {
        let yaml = proxy_yaml(
            dir,
            &catalog_upstream(addr, &o.ca, ""),
            "  - { name: catalog, path_prefix: /api/, upstream: catalog, plugins: [noop], cache: { enabled: true } }",
        )
        .replace(
            "admin: { listen:",
            &format!("admin: {{ token: {TOKEN}, profiling: true, listen:"),
        );
        format!(
            "{yaml}plugins:\n  - {{ name: noop, module: {} }}\n",
            noop.display()
        )
    });
    let unauthorized = get_profile(&p, "seconds=1", false).await;
    assert_eq!(unauthorized.status(), 401);
    let bad = get_profile(&p, "seconds=0", true).await;
    assert_eq!(bad.status(), 400);

    // Load on a plugin route for as long as the profiles run.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (http, target) = (
            p.http.clone(),
            p.url("/api/v1/products?category=polo&limit=5"),
        );
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.get(&target).send().await {
                    Ok(r) if r.status() == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    // Two at once: one is taken, the other told to come back.
    let (first, second) = tokio::join!(
        get_profile(&p, "seconds=1", true),
        get_profile(&p, "seconds=1", true),
    );
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    let taken = if first.status() == 200 { first } else { second };
    assert_eq!(taken.headers()["content-type"], "application/octet-stream");
    let profile = pprof::protos::Profile::parse_from_bytes(&taken.bytes().await.unwrap()).unwrap();
    assert!(!profile.sample.is_empty(), "no samples");
    assert!(
        profile.string_table.iter().any(|s| s.contains("pingora")),
        "no Pingora frame among {} strings",
        profile.string_table.len()
    );
    let svg = get_profile(&p, "seconds=1&format=svg", true).await;
    assert_eq!(svg.status(), 200);
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().contains("<svg"));
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_refused_unless_enabled() {
    let o = Origin::start(2_000, "").await;
    let addr = o.origin.local_addr();
    let p = Proxy::start(|dir| {
        proxy_yaml(
            dir,
            &catalog_upstream(addr, &o.ca, ""),
            "  - { name: catalog, path_prefix: /api/, upstream: catalog }",
        )
        .replace(
            "admin: { listen:",
            &format!("admin: {{ token: {TOKEN}, listen:"),
        )
    });
    let refused = get_profile(&p, "seconds=1", true).await;
    assert_eq!(refused.status(), 403);
    p.stop().await;
}
