//! The load harness: keep-alive HTTPS load at a fixed concurrency against one URL, with latency
//! percentiles from an HDR histogram. Benchmarks in `src/bin/` run targets side by side in one
//! process and one run, so ratios are measured under the same machine noise; each round also
//! records where the process's CPU went, by thread.

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
