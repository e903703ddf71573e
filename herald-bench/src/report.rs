//! Results: histograms, the metrics each scenario reports, tables on
//! stdout and JSON files.

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

/// A histogram of microseconds, from 1 µs to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Adds `other` into `into` (same bounds: cannot fail).
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    let _ = into.add(other);
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self {
                count: 0,
                min_ms: 0.0,
                mean_ms: 0.0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        Self {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// `(label, value)` pairs for tables and plots, p50 → max.
    pub fn points(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50_ms),
            ("p90", self.p90_ms),
            ("p99", self.p99_ms),
            ("p99.9", self.p999_ms),
            ("max", self.max_ms),
        ]
    }

    /// The per-point median of several runs.
    pub fn median_of(runs: &[&Percentiles]) -> Option<Self> {
        if runs.is_empty() {
            return None;
        }
        let m = |f: fn(&Percentiles) -> f64| median(runs.iter().map(|p| f(p)).collect());
        Some(Self {
            count: median(runs.iter().map(|p| p.count as f64).collect()) as u64,
            min_ms: m(|p| p.min_ms),
            mean_ms: m(|p| p.mean_ms),
            p50_ms: m(|p| p.p50_ms),
            p90_ms: m(|p| p.p90_ms),
            p99_ms: m(|p| p.p99_ms),
            p999_ms: m(|p| p.p999_ms),
            max_ms: m(|p| p.max_ms),
        })
    }
}

/// The median (mean of the middle two for an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Which direction of a metric is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// Informational (counts, parameters).
    Neither,
}

/// One number a scenario reports.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub key: String,
    pub label: String,
    pub unit: String,
    pub value: f64,
    pub better: Better,
}

/// Builds metric lists tersely.
#[derive(Debug, Default)]
pub struct Metrics(pub Vec<Metric>);

impl Metrics {
    pub fn add(&mut self, key: &str, label: &str, unit: &str, value: f64, better: Better) {
        self.0.push(Metric {
            key: key.to_owned(),
            label: label.to_owned(),
            unit: unit.to_owned(),
            value,
            better,
        });
    }

    /// Adds p50/p99/p99.9/max (ms, lower is better) under `prefix`.
    pub fn add_percentiles(&mut self, prefix: &str, label: &str, p: &Percentiles) {
        for (name, value) in [
            ("p50", p.p50_ms),
            ("p99", p.p99_ms),
            ("p999", p.p999_ms),
            ("max", p.max_ms),
        ] {
            let shown = if name == "p999" { "p99.9" } else { name };
            self.add(
                &format!("{prefix}_{name}_ms"),
                &format!("{label} {shown}"),
                "ms",
                value,
                Better::Lower,
            );
        }
    }
}

/// What one scenario run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub url: String,
    /// The scenario's parameters.
    pub params: Value,
    pub metrics: Vec<Metric>,
    /// The distribution plotted by `compare` (latency, connect or backfill time).
    pub percentiles_title: String,
    pub percentiles: Option<Percentiles>,
    /// Metric key plotted per round by `compare` (a rate).
    pub throughput_key: String,
    /// Anything that makes the figures suspect (loss, errors, failures).
    pub warnings: Vec<String>,
    /// Scenario-specific details.
    pub details: Value,
}

impl Report {
    pub fn metric(&self, key: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.key == key)
    }
}

/// Formats a number for tables: integers plainly, others with 2–3 digits.
pub fn fmt_num(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    if value == value.trunc() && value.abs() < 1e15 {
        let int = value as i64;
        let s = int.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return if int < 0 { format!("-{out}") } else { out };
    }
    if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// Prints rows as an aligned table (first row is the header).
pub fn print_table(title: &str, rows: &[Vec<String>]) {
    println!("\n{title}");
    if rows.is_empty() {
        return;
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c == 0 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        println!("  {}", line.join("  ").trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            println!("  {}", "-".repeat(total));
        }
    }
}

/// Prints one run's metrics and warnings.
pub fn print_report(report: &Report) {
    let mut rows = vec![vec![
        "metric".to_owned(),
        report.target.clone(),
        "unit".to_owned(),
    ]];
    for m in &report.metrics {
        rows.push(vec![m.label.clone(), fmt_num(m.value), m.unit.clone()]);
    }
    print_table(
        &format!("{} — {} at {}", report.scenario, report.target, report.url),
        &rows,
    );
    for w in &report.warnings {
        println!("  WARNING: {w}");
    }
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    create_parent(path)?;
    std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))
}

/// Creates the folder a file goes into.
pub fn create_parent(path: &Path) -> Result<(), String> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}
