//! `compare`: the same scenario against herald and Nchan alternately
//! (A B A B ...), medians per target, herald/Nchan ratios, an SVG plot.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{run_single, secs, Ctx};
use crate::cli::CompareArgs;
use crate::plot;
use crate::report::{fmt_num, median, print_report, print_table, Better, Percentiles, Report};
use crate::target::Target;

/// Medians of one metric.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub key: String,
    pub label: String,
    pub unit: String,
    pub better: Better,
    pub herald: f64,
    pub nchan: f64,
    /// herald / Nchan.
    pub ratio: Option<f64>,
    /// Which side the medians favour (when the metric has a direction).
    pub winner: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub rounds: usize,
    pub order: Vec<String>,
    pub medians: Vec<Row>,
    pub herald_percentiles: Option<Percentiles>,
    pub nchan_percentiles: Option<Percentiles>,
    pub plot: String,
    pub herald: Vec<Report>,
    pub nchan: Vec<Report>,
}

pub async fn run(
    ctx: &Ctx,
    herald: &Target,
    nchan: &Target,
    args: &CompareArgs,
    plot_path: &Path,
) -> Result<Comparison, String> {
    if args.rounds == 0 || args.rounds > 50 {
        return Err("--rounds must be 1..=50".to_owned());
    }
    if args.rounds < 3 {
        println!("note: fewer than 3 rounds: medians are not reportable figures");
    }
    let pause = secs(args.pause, "--pause")?;
    let mut herald_runs = Vec::new();
    let mut nchan_runs = Vec::new();
    let mut order = Vec::new();
    for round in 1..=args.rounds {
        for target in [herald, nchan] {
            println!(
                "\n== round {round}/{}: {} on {} ==",
                args.rounds,
                args.scenario.name(),
                target.kind.name()
            );
            let report = run_single(ctx, target, &args.scenario).await?;
            print_report(&report);
            order.push(target.kind.name().to_owned());
            if target.kind == herald.kind {
                herald_runs.push(report);
            } else {
                nchan_runs.push(report);
            }
            tokio::time::sleep(pause.max(Duration::from_millis(100))).await;
        }
    }

    let medians = medians(&herald_runs, &nchan_runs);
    let herald_p = Percentiles::median_of(
        &herald_runs
            .iter()
            .filter_map(|r| r.percentiles.as_ref())
            .collect::<Vec<_>>(),
    );
    let nchan_p = Percentiles::median_of(
        &nchan_runs
            .iter()
            .filter_map(|r| r.percentiles.as_ref())
            .collect::<Vec<_>>(),
    );

    let mut rows = vec![vec![
        "metric (median)".to_owned(),
        "herald".to_owned(),
        "nchan".to_owned(),
        "herald/nchan".to_owned(),
        "better".to_owned(),
    ]];
    for row in &medians {
        let unit = if row.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", row.unit)
        };
        rows.push(vec![
            row.label.clone(),
            format!("{}{unit}", fmt_num(row.herald)),
            format!("{}{unit}", fmt_num(row.nchan)),
            row.ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
            row.winner.clone().unwrap_or_default(),
        ]);
    }
    print_table(
        &format!(
            "compare {} — medians of {} rounds (A B A B ...)",
            args.scenario.name(),
            args.rounds
        ),
        &rows,
    );
    for report in herald_runs.iter().chain(&nchan_runs) {
        for warning in &report.warnings {
            println!("  WARNING ({}): {warning}", report.target);
        }
    }

    plot::render(
        plot_path,
        args.scenario.name(),
        &herald_runs,
        &nchan_runs,
        herald_p.as_ref(),
        nchan_p.as_ref(),
    )?;
    println!("\nplot: {}", plot_path.display());

    Ok(Comparison {
        scenario: args.scenario.name().to_owned(),
        rounds: args.rounds,
        order,
        medians,
        herald_percentiles: herald_p,
        nchan_percentiles: nchan_p,
        plot: plot_path.display().to_string(),
        herald: herald_runs,
        nchan: nchan_runs,
    })
}

fn medians(herald: &[Report], nchan: &[Report]) -> Vec<Row> {
    let Some(first) = herald.first().or(nchan.first()) else {
        return Vec::new();
    };
    first
        .metrics
        .iter()
        .map(|metric| {
            let of = |runs: &[Report]| {
                median(
                    runs.iter()
                        .filter_map(|r| r.metric(&metric.key).map(|m| m.value))
                        .collect(),
                )
            };
            let (h, n) = (of(herald), of(nchan));
            let ratio = (n != 0.0).then(|| h / n);
            // Differences under 2% are noise, not a winner.
            let apart = (h - n).abs() > 0.02 * h.abs().max(n.abs());
            let winner = match metric.better {
                Better::Higher if apart && h > n => Some("herald"),
                Better::Higher if apart && n > h => Some("nchan"),
                Better::Lower if apart && h < n => Some("herald"),
                Better::Lower if apart && n < h => Some("nchan"),
                _ => None,
            };
            Row {
                key: metric.key.clone(),
                label: metric.label.clone(),
                unit: metric.unit.clone(),
                better: metric.better,
                herald: h,
                nchan: n,
                ratio,
                winner: winner.map(str::to_owned),
            }
        })
        .collect()
}
