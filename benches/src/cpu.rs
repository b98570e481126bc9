//! Where a round's CPU went: nanoseconds on CPU of every thread of this process, from
//! `/proc/self/task/<tid>/schedstat` (the scheduler's own exact count, not tick samples), summed
//! by thread name. Every target of a benchmark runs in this one process, and only the proxy
//! under load is busy in a round, so "CPU per request by thread name" tells the proxy's workers
//! from the load client's.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// On-CPU nanoseconds of each thread (by id, with its name) at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    threads: HashMap<u32, (String, u64)>,
}

/// The threads' CPU now; threads that vanish while being read are left out. Empty where
/// `/proc` is unavailable.
pub fn snapshot() -> Snapshot {
    let mut threads = HashMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let path = task.path();
            let on_cpu = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            let name = std::fs::read_to_string(path.join("comm"))
                .map(|n| n.trim().to_string())
                .ok();
            if let (Some(on_cpu), Some(name)) = (on_cpu, name) {
                threads.insert(tid, (name, on_cpu));
            }
        }
    }
    Snapshot {
        at: Instant::now(),
        threads,
    }
}

/// CPU used between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// On-CPU seconds by thread name.
    pub by_name: BTreeMap<String, f64>,
    /// Wall-clock seconds between the snapshots.
    pub wall: f64,
}

impl Usage {
    pub fn between(before: &Snapshot, after: &Snapshot) -> Self {
        let mut by_name = BTreeMap::new();
        for (tid, (name, now)) in &after.threads {
            let then = before.threads.get(tid).map_or(0, |(_, ns)| *ns);
            *by_name.entry(name.clone()).or_insert(0.0) += now.saturating_sub(then) as f64 / 1e9;
        }
        Self {
            by_name,
            wall: after.at.duration_since(before.at).as_secs_f64(),
        }
    }

    pub fn total(&self) -> f64 {
        self.by_name.values().sum()
    }
}
