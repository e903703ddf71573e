//! `compare`: the same scenario against herald, Nchan and Pushpin
//! alternately (A B C A B C ...), medians per target, ratios of the first
//! target (herald) over each other, an SVG plot.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{backfill, run_single, secs, Ctx};
use crate::cli::{CompareArgs, Single};
use crate::plot::{self, Side};
use crate::report::{fmt_num, median, print_report, print_table, Better, Percentiles, Report};
use crate::target::{Target, TargetKind};

/// Medians of one metric.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub key: String,
    pub label: String,
    pub unit: String,
    pub better: Better,
    /// The median per target, by name (`"herald": 1.0, "nchan": 2.0, ...`).
    #[serde(flatten)]
    pub medians: BTreeMap<String, f64>,
    /// The first target's median over each other's, by the other's name.
    pub ratios: BTreeMap<String, f64>,
    /// Which target the medians favour (when the metric has a direction
    /// and the best is more than 2 % ahead of the next).
    pub winner: Option<String>,
}

/// A target `compare` left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub target: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub rounds: usize,
    /// The targets of each round, in order.
    pub targets: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub order: Vec<String>,
    pub medians: Vec<Row>,
    /// `"<target>_percentiles"`: the per-point median of its runs.
    #[serde(flatten)]
    pub percentiles: BTreeMap<String, Option<Percentiles>>,
    pub plot: String,
    /// Every run, by target name.
    #[serde(flatten)]
    pub runs: BTreeMap<String, Vec<Report>>,
}

/// Whether `kind` can run `scenario`.
fn supports(kind: TargetKind, scenario: &Single) -> Result<(), String> {
    match scenario {
        Single::Backfill(_) => backfill::supported(kind),
        Single::Connections(_) | Single::Fanout(_) | Single::Ingest(_) => Ok(()),
    }
}

/// The targets of each round: --targets, without repeats and without those
/// that cannot run the scenario (said on stdout).
pub fn plan(args: &CompareArgs) -> Result<Vec<TargetKind>, String> {
    let mut kinds: Vec<TargetKind> = Vec::new();
    for &kind in &args.targets {
        if kinds.contains(&kind) {
            continue;
        }
        match supports(kind, &args.scenario) {
            Ok(()) => kinds.push(kind),
            Err(why) => println!("note: {} left out: {why}", kind.name()),
        }
    }
    if kinds.len() < 2 {
        return Err(format!(
            "compare {} needs two targets that can run it",
            args.scenario.name()
        ));
    }
    Ok(kinds)
}

/// Runs `args.scenario` on every target of `targets` (in that order) per
/// round. `targets` come from [`plan`].
pub async fn run(
    ctx: &Ctx,
    targets: &[Target],
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
    let names: Vec<&'static str> = targets.iter().map(|t| t.kind.name()).collect();
    let skipped = args
        .targets
        .iter()
        .filter_map(|&kind| {
            supports(kind, &args.scenario).err().map(|reason| Skipped {
                target: kind.name().to_owned(),
                reason,
            })
        })
        .collect();
    let mut runs: Vec<Vec<Report>> = vec![Vec::new(); targets.len()];
    let mut order = Vec::new();
    for round in 1..=args.rounds {
        for (target, target_runs) in targets.iter().zip(&mut runs) {
            println!(
                "\n== round {round}/{}: {} on {} ==",
                args.rounds,
                args.scenario.name(),
                target.kind.name()
            );
            let report = run_single(ctx, target, &args.scenario).await?;
            print_report(&report);
            order.push(target.kind.name().to_owned());
            target_runs.push(report);
            tokio::time::sleep(pause.max(Duration::from_millis(100))).await;
        }
    }

    let medians = medians(&names, &runs);
    let percentiles: Vec<Option<Percentiles>> = runs
        .iter()
        .map(|r| {
            Percentiles::median_of(
                &r.iter()
                    .filter_map(|r| r.percentiles.as_ref())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();

    let reference = names[0];
    let mut header = vec!["metric (median)".to_owned()];
    header.extend(names.iter().map(|n| (*n).to_owned()));
    header.extend(names[1..].iter().map(|n| format!("{reference}/{n}")));
    header.push("better".to_owned());
    let mut rows = vec![header];
    for row in &medians {
        let unit = if row.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", row.unit)
        };
        let mut cells = vec![row.label.clone()];
        cells.extend(
            names
                .iter()
                .map(|n| format!("{}{unit}", fmt_num(row.medians[*n]))),
        );
        cells.extend(names[1..].iter().map(|n| {
            row.ratios
                .get(*n)
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
        }));
        cells.push(row.winner.clone().unwrap_or_default());
        rows.push(cells);
    }
    print_table(
        &format!(
            "compare {} — medians of {} rounds ({} ...)",
            args.scenario.name(),
            args.rounds,
            names.join(" ")
        ),
        &rows,
    );
    for report in runs.iter().flatten() {
        for warning in &report.warnings {
            println!("  WARNING ({}): {warning}", report.target);
        }
    }

    let sides: Vec<Side<'_>> = names
        .iter()
        .zip(&runs)
        .zip(&percentiles)
        .map(|((name, runs), p)| Side {
            name,
            runs,
            percentiles: p.as_ref(),
        })
        .collect();
    plot::render(plot_path, args.scenario.name(), &sides)?;
    println!("\nplot: {}", plot_path.display());

    Ok(Comparison {
        scenario: args.scenario.name().to_owned(),
        rounds: args.rounds,
        targets: names.iter().map(|n| (*n).to_owned()).collect(),
        skipped,
        order,
        medians,
        percentiles: names
            .iter()
            .zip(percentiles)
            .map(|(n, p)| (format!("{n}_percentiles"), p))
            .collect(),
        plot: plot_path.display().to_string(),
        runs: names.iter().map(|n| (*n).to_owned()).zip(runs).collect(),
    })
}

/// The median of every metric per target (`names[i]` ran `runs[i]`).
fn medians(names: &[&str], runs: &[Vec<Report>]) -> Vec<Row> {
    let Some(first) = runs.iter().find_map(|r| r.first()) else {
        return Vec::new();
    };
    first
        .metrics
        .iter()
        .map(|metric| {
            let values: Vec<f64> = runs
                .iter()
                .map(|runs| {
                    median(
                        runs.iter()
                            .filter_map(|r| r.metric(&metric.key).map(|m| m.value))
                            .collect(),
                    )
                })
                .collect();
            let reference = values[0];
            let ratios = names[1..]
                .iter()
                .zip(&values[1..])
                .filter(|(_, v)| **v != 0.0)
                .map(|(n, v)| ((*n).to_owned(), reference / v))
                .collect();
            Row {
                key: metric.key.clone(),
                label: metric.label.clone(),
                unit: metric.unit.clone(),
                better: metric.better,
                medians: names
                    .iter()
                    .map(|n| (*n).to_owned())
                    .zip(values.iter().copied())
                    .collect(),
                ratios,
                winner: winner(metric.better, names, &values).map(str::to_owned),
            }
        })
        .collect()
}

/// The best of `values` by `better`, when it is more than 2 % ahead of the
/// next best (closer is noise, not a winner).
fn winner<'a>(better: Better, names: &[&'a str], values: &[f64]) -> Option<&'a str> {
    let mut ranked: Vec<(&str, f64)> = names.iter().copied().zip(values.iter().copied()).collect();
    match better {
        Better::Higher => ranked.sort_by(|a, b| b.1.total_cmp(&a.1)),
        Better::Lower => ranked.sort_by(|a, b| a.1.total_cmp(&b.1)),
        Better::Neither => return None,
    }
    let (best, first) = *ranked.first()?;
    let second = ranked.get(1).map_or(first, |r| r.1);
    ((first - second).abs() > 0.02 * first.abs().max(second.abs())).then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_winner_is_ahead_of_every_other_target() {
        let names = ["herald", "nchan", "pushpin"];
        assert_eq!(
            winner(Better::Higher, &names, &[5.0, 1.0, 2.0]),
            Some("herald")
        );
        assert_eq!(
            winner(Better::Lower, &names, &[5.0, 1.0, 2.0]),
            Some("nchan")
        );
        // The best two within 2 %: no winner.
        assert_eq!(winner(Better::Lower, &names, &[5.0, 1.0, 1.01]), None);
        assert_eq!(winner(Better::Neither, &names, &[5.0, 1.0, 2.0]), None);
    }
}
