//! The load harness: keep-alive HTTP(S) load at a fixed concurrency against one URL or a mix of
//! them, closed or open loop, with latency percentiles from an HDR histogram. Benchmarks in
//! `src/bin/` run targets side by side in one run, so ratios are measured under the same machine
//! noise; each round also records where the CPU went: by thread for in-process proxies
//! (`cpu`), by process tree for the peers (edge-proxy, NGINX, Varnish) that `bench-peers` runs
//! as processes of their own (`peers`, `proc_cpu`, `chart`).

pub mod chart;
pub mod cpu;
pub mod load;
pub mod peers;
pub mod proc_cpu;
pub mod report;
pub mod rig;
pub mod wire;

/// The shipped binaries' allocator, so what is measured here is what runs in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
