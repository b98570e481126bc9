//! Side-by-side reporting: one row per (target, round), then medians and ratios.

use crate::cpu::Usage;
use crate::load::LoadResult;

/// Results of several rounds for one target.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub rounds: Vec<LoadResult>,
    /// The process's CPU over each round's measured window (same order as `rounds`).
    pub cpu: Vec<Usage>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A distribution-free 95% confidence interval for the median of `values` (the order statistics
/// at ranks n/2 -+ 1.96 sqrt(n)/2, normal approximation of the binomial); `None` below 6 values,
/// where no pair of ranks covers 95%.
fn median_interval(mut values: Vec<f64>) -> Option<(f64, f64)> {
    let n = values.len();
    if n < 6 {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let half_width = 1.96 * (n as f64).sqrt() / 2.0;
    // 1-based ranks j and k, so the 0-based indexes are j - 1 and k - 1.
    let j = ((n as f64 / 2.0 - half_width).floor() as usize).max(1);
    let k = ((n as f64 / 2.0 + 1.0 + half_width).ceil() as usize).min(n);
    Some((values[j - 1], values[k - 1]))
}

impl Series {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            rounds: Vec::new(),
            cpu: Vec::new(),
        }
    }

    pub fn median_throughput(&self) -> f64 {
        median(self.rounds.iter().map(LoadResult::throughput).collect())
    }

    pub fn median_percentile_ms(&self, q: f64) -> f64 {
        median(self.rounds.iter().map(|r| r.percentile_ms(q)).collect())
    }

    pub fn errors(&self) -> u64 {
        self.rounds.iter().map(|r| r.errors).sum()
    }

    /// Median over rounds of `pick(usage)` microseconds of CPU per request served.
    fn median_cpu_us(&self, pick: impl Fn(&Usage) -> f64) -> f64 {
        median(
            self.rounds
                .iter()
                .zip(&self.cpu)
                .map(|(r, u)| pick(u) * 1e6 / r.ok.max(1) as f64)
                .collect(),
        )
    }
}

/// Thread names that used at least this much CPU per request for some target get a row.
const CPU_ROW_MIN_US: f64 = 0.5;

/// CPU per request by thread name, each target a column (medians over rounds), and the share
/// of the machine's cores the process used. Empty without CPU figures.
pub fn cpu_table(series: &[Series]) -> String {
    if series.iter().all(|s| s.cpu.is_empty()) {
        return String::new();
    }
    let mut names: Vec<&String> = series
        .iter()
        .flat_map(|s| s.cpu.iter().flat_map(|u| u.by_name.keys()))
        .collect();
    names.sort();
    names.dedup();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut out =
        String::from("\nCPU per request, microseconds (median over rounds), by thread:\n");
    out.push_str(&format!("  {:<24}", "thread"));
    for s in series {
        out.push_str(&format!(" {:>24}", s.name));
    }
    out.push('\n');
    let mut line = |label: &str, pick: &dyn Fn(&Usage) -> f64| {
        let values: Vec<f64> = series.iter().map(|s| s.median_cpu_us(pick)).collect();
        if values.iter().any(|v| *v >= CPU_ROW_MIN_US) {
            out.push_str(&format!("  {label:<24}"));
            for v in values {
                out.push_str(&format!(" {v:>24.2}"));
            }
            out.push('\n');
        }
    };
    for name in names {
        line(name, &|u: &Usage| {
            u.by_name.get(name).copied().unwrap_or(0.0)
        });
    }
    line("all threads", &|u: &Usage| u.total());
    out.push_str(&format!("  {:<24}", "process CPU, % of cores"));
    for s in series {
        let shares: Vec<f64> = s
            .cpu
            .iter()
            .map(|u| 100.0 * u.total() / (u.wall * cores))
            .collect();
        out.push_str(&format!(" {:>24.1}", median(shares)));
    }
    out.push('\n');
    out
}

pub fn row(name: &str, round: usize, r: &LoadResult) -> String {
    format!(
        "| {name:<28} | {round:>5} | {:>10.0} | {:>8.3} | {:>8.3} | {:>8.3} | {:>6} |",
        r.throughput(),
        r.percentile_ms(0.50),
        r.percentile_ms(0.95),
        r.percentile_ms(0.99),
        r.errors
    )
}

pub fn header() -> String {
    format!(
        "| {:<28} | {:>5} | {:>10} | {:>8} | {:>8} | {:>8} | {:>6} |\n|{}|{}|{}|{}|{}|{}|{}|",
        "target",
        "round",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "-".repeat(30),
        "-".repeat(7),
        "-".repeat(12),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(8)
    )
}

/// Medians of every series, and each series' throughput and p95 relative to `baseline`.
pub fn summary(series: &[Series], baseline: &Series) -> String {
    let mut out = String::from("\nmedians over rounds:\n");
    for s in series {
        out.push_str(&format!(
            "  {:<28} {:>10.0} req/s  p50 {:>7.3} ms  p95 {:>7.3} ms  errors {}\n",
            s.name,
            s.median_throughput(),
            s.median_percentile_ms(0.50),
            s.median_percentile_ms(0.95),
            s.errors()
        ));
    }
    for s in series.iter().filter(|s| s.name != baseline.name) {
        out.push_str(&format!(
            "  {} / {}: throughput x{:.3}, p95 x{:.3}\n",
            s.name,
            baseline.name,
            s.median_throughput() / baseline.median_throughput(),
            s.median_percentile_ms(0.95) / baseline.median_percentile_ms(0.95)
        ));
        let (throughput, p95) = paired_ratios(s, baseline);
        let interval = median_interval(throughput.clone()).map_or(String::new(), |(lo, hi)| {
            format!("95% CI of the median x{lo:.3}..x{hi:.3}, ")
        });
        out.push_str(&format!(
            "      paired by round: throughput x{:.3} ({interval}rounds x{:.3}..x{:.3}), p95 x{:.3}\n",
            median(throughput.clone()),
            throughput.iter().copied().fold(f64::INFINITY, f64::min),
            throughput.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median(p95),
        ));
    }
    out.push_str(&cpu_table(series));
    out
}

/// Each round's ratio of `s` to `baseline` (throughput, p95). Both ran within seconds of each
/// other in a round, so the machine's slow drifts cancel in the pair: the median of these is
/// the steadier estimate on a shared, noisy host.
fn paired_ratios(s: &Series, baseline: &Series) -> (Vec<f64>, Vec<f64>) {
    s.rounds
        .iter()
        .zip(&baseline.rounds)
        .map(|(r, b)| {
            (
                r.throughput() / b.throughput(),
                r.percentile_ms(0.95) / b.percentile_ms(0.95),
            )
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_interval_brackets_the_median_by_rank() {
        assert_eq!(median_interval(vec![1.0, 2.0, 3.0, 4.0, 5.0]), None);
        // n = 30: ranks 9 and 22 (1-based) of 1..=30, given in reverse.
        let values: Vec<f64> = (1..=30).rev().map(f64::from).collect();
        assert_eq!(median_interval(values), Some((9.0, 22.0)));
        // n = 6: the extremes, ranks 1 and 6.
        let six = vec![6.0, 1.0, 5.0, 2.0, 4.0, 3.0];
        assert_eq!(median_interval(six), Some((1.0, 6.0)));
    }
}
