//! On-demand CPU profiles for the admin listener (`GET /debug/pprof/profile`), the pprof habit
//! of Go services: pprof-rs samples every thread of the process with SIGPROF for the requested
//! seconds, then the samples are encoded as a pprof protobuf profile (`pprof -top FILE`,
//! `go tool pprof`) or drawn as a flame graph SVG. One profile at a time. Stacks are unwound
//! through wasm frames too (wasmtime registers its compiled code's unwind tables).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pprof::protos::Message;

/// Longest profile one request may ask for.
pub const MAX_SECONDS: u64 = 60;
/// Samples per second per thread (99, not 100: not in step with timers that tick at 100 Hz).
const FREQUENCY: i32 = 99;

/// What the profile is returned as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// pprof's protobuf `Profile` (uncompressed).
    Protobuf,
    /// A flame graph.
    Svg,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("a profile is already being taken")]
    Busy,
    #[error("the profiler failed: {0}")]
    Profiler(String),
}

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Clears [`RUNNING`] however the profile ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Profiles the whole process for `duration` (blocking: call it off the async runtime).
pub fn profile(duration: Duration, format: Format) -> Result<Vec<u8>, ProfileError> {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ProfileError::Busy);
    }
    let _running = Running;
    let failed = |e: pprof::Error| ProfileError::Profiler(e.to_string());
    // Samples whose innermost frame is in these libraries are dropped: unwinding from inside
    // them can deadlock (the unwinder's own locks) or read bad unwind tables (vdso).
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(failed)?;
    std::thread::sleep(duration);
    let report = guard.report().build().map_err(failed)?;
    drop(guard);
    match format {
        Format::Svg => {
            let mut svg = Vec::new();
            report.flamegraph(&mut svg).map_err(failed)?;
            Ok(svg)
        }
        Format::Protobuf => report
            .pprof()
            .map_err(failed)?
            .write_to_bytes()
            .map_err(|e| ProfileError::Profiler(e.to_string())),
    }
}
