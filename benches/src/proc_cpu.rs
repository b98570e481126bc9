//! CPU of a server running as another process: the on-CPU nanoseconds of every thread of a
//! process and of its descendants (NGINX's worker under its master, Varnish's cache child under
//! its manager), from `/proc/<pid>/task/<tid>/schedstat`; and how busy one core was, from
//! `/proc/stat`, which tells a server-bound round from a client-bound one.

use std::collections::HashMap;

/// The parent pid in the text of `/proc/<pid>/stat` (after the command name, which may hold
/// spaces and parentheses, so the last `)` is the anchor).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and every process descending from it, now.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, u32> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(parent_of)
            {
                parents.insert(pid, ppid);
            }
        }
    }
    let mut tree = vec![root];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        tree.extend(
            parents
                .iter()
                .filter(|(_, ppid)| **ppid == parent)
                .map(|(pid, _)| *pid),
        );
        index += 1;
    }
    tree
}

/// On-CPU nanoseconds so far of every thread of `root` and its descendants. Threads that ended
/// are not counted, so take both snapshots of a window while the server runs steadily.
pub fn tree_cpu_ns(root: u32) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .flat_map(|tasks| tasks.flatten())
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Busy and total clock ticks of core `core` so far (`/proc/stat`); zero when unreadable.
pub fn core_ticks(core: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let label = format!("cpu{core}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
    else {
        return (0, 0);
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle.min(total), total)
}

/// Percent of the time core `core` was busy between two `core_ticks` readings.
pub fn busy_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total == 0.0 {
        0.0
    } else {
        100.0 * busy / total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pids_survive_odd_command_names() {
        assert_eq!(parent_of("42 (nginx) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("43 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn this_process_and_a_child_are_one_tree_that_uses_cpu() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = process_tree(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains(&std::process::id()));
        assert!(tree.contains(&child.id()), "{tree:?}");
        assert!(tree_cpu_ns(std::process::id()) > 0);
        let (busy, total) = core_ticks(0);
        assert!(total > 0 && busy <= total);
    }
}
