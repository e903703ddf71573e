//! The SVG plot of a comparison: the distribution (latency percentiles or
//! the scenario's equivalent) on the left, the throughput metric of every
//! round on the right, one coloured line per side (herald, Nchan, Pushpin;
//! or one node and a cluster).

use std::path::Path;

use plotters::prelude::*;

use crate::report::{fmt_num, median, Percentiles, Report};

/// Colours of the sides, in order (herald's first).
const COLORS: [RGBColor; 4] = [
    RGBColor(0xd9, 0x48, 0x1c),
    RGBColor(0x1f, 0x6f, 0xb4),
    RGBColor(0x2c, 0x9a, 0x3c),
    RGBColor(0x7b, 0x4a, 0xa8),
];
/// A named, coloured line.
type Series<'a> = (&'a str, RGBColor, Vec<(i32, f64)>);

const LABELS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

/// One side of a plot: its runs and the median of their percentiles.
pub struct Side<'a> {
    pub name: &'a str,
    pub runs: &'a [Report],
    pub percentiles: Option<&'a Percentiles>,
}

/// The plot of a `compare` run, one side per target.
pub fn render(path: &Path, scenario: &str, sides: &[Side<'_>]) -> Result<(), String> {
    crate::report::create_parent(path)?;
    let title = sides
        .iter()
        .map(|s| display_name(s.name))
        .collect::<Vec<_>>()
        .join(" vs ");
    draw(path, &format!("{title} — {scenario}"), sides)
        .map_err(|e| format!("plot {}: {e}", path.display()))
}

/// How a target is named in a title.
fn display_name(name: &str) -> &str {
    match name {
        "nchan" => "Nchan",
        "pushpin" => "Pushpin",
        other => other,
    }
}

/// The same plot for any two sides (e.g. one node and a cluster), each
/// side's percentiles the median of its runs.
pub fn render_sides(
    path: &Path,
    title: &str,
    names: [&str; 2],
    first: &[Report],
    second: &[Report],
) -> Result<(), String> {
    crate::report::create_parent(path)?;
    let of = |runs: &[Report]| {
        Percentiles::median_of(
            &runs
                .iter()
                .filter_map(|r| r.percentiles.as_ref())
                .collect::<Vec<_>>(),
        )
    };
    let (first_p, second_p) = (of(first), of(second));
    let sides = [
        Side {
            name: names[0],
            runs: first,
            percentiles: first_p.as_ref(),
        },
        Side {
            name: names[1],
            runs: second,
            percentiles: second_p.as_ref(),
        },
    ];
    draw(path, title, &sides).map_err(|e| format!("plot {}: {e}", path.display()))
}

fn draw(path: &Path, title: &str, sides: &[Side<'_>]) -> Result<(), Box<dyn std::error::Error>> {
    let color = |i: usize| COLORS[i % COLORS.len()];
    let sample = sides.iter().find_map(|s| s.runs.first());
    let percentiles_title = sample.map_or("", |r| r.percentiles_title.as_str());
    let throughput_key = sample.map_or("", |r| r.throughput_key.as_str());
    let throughput = sample.and_then(|r| r.metric(throughput_key));
    let throughput_label = throughput.map_or_else(String::new, |m| {
        if m.unit.is_empty() {
            m.label.clone()
        } else {
            format!("{} ({})", m.label, m.unit)
        }
    });
    let params = sample.map_or_else(String::new, |r| compact_params(&r.params));

    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("{title} ({params})"), ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(600);

    // Left: percentiles (medians over rounds), log scale.
    let series: Vec<Series<'_>> = sides
        .iter()
        .enumerate()
        .filter_map(|(i, side)| {
            side.percentiles.map(|p| {
                let points = p
                    .points()
                    .iter()
                    .enumerate()
                    .map(|(i, (_, v))| (i as i32, v.max(0.001)))
                    .collect();
                (side.name, color(i), points)
            })
        })
        .collect();
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, pts)| pts.iter().map(|(_, v)| *v))
        .collect();
    let low = all.iter().copied().fold(f64::INFINITY, f64::min);
    let high = all.iter().copied().fold(0.0, f64::max);
    let (low, high) = if all.is_empty() {
        (0.01, 1.0)
    } else {
        ((low / 2.0).max(0.001), (high * 2.0).max(low * 4.0))
    };
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("{percentiles_title} (ms, median of rounds, log scale)"),
            ("sans-serif", 15),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(-1i32..5i32, (low..high).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_label_formatter(&|x| {
            usize::try_from(*x)
                .ok()
                .and_then(|i| LABELS.get(i))
                .map_or_else(String::new, |s| (*s).to_owned())
        })
        .y_label_formatter(&|v| fmt_num(*v))
        .y_desc("ms")
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .draw()?;
    for (name, color, points) in &series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
        chart.draw_series(points.iter().map(|&(x, y)| {
            Text::new(
                fmt_num(y),
                (x, y),
                ("sans-serif", 11).into_font().color(&color),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    // Right: the throughput metric per round.
    let rounds = sides.iter().map(|s| s.runs.len()).max().unwrap_or(0).max(1) as i32;
    let per_round = |runs: &[Report]| -> Vec<(i32, f64)> {
        runs.iter()
            .enumerate()
            .filter_map(|(i, r)| r.metric(throughput_key).map(|m| (i as i32 + 1, m.value)))
            .collect()
    };
    let tput: Vec<Series<'_>> = sides
        .iter()
        .enumerate()
        .map(|(i, side)| (side.name, color(i), per_round(side.runs)))
        .collect();
    let top = tput
        .iter()
        .flat_map(|(_, _, pts)| pts.iter().map(|(_, v)| *v))
        .fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.4 } else { 1.0 };
    let mut chart = ChartBuilder::on(&right)
        .caption(format!("{throughput_label} per round"), ("sans-serif", 15))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d(0i32..rounds + 1, 0.0..top)?;
    chart
        .configure_mesh()
        .x_labels((rounds + 2) as usize)
        .x_label_formatter(&|x| {
            if *x >= 1 && *x <= rounds {
                format!("round {x}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| fmt_num(v.round()))
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .draw()?;
    for (name, color, points) in &tput {
        if points.is_empty() {
            continue;
        }
        let color = *color;
        let med = median(points.iter().map(|(_, v)| *v).collect());
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!(
                "{name} (median {})",
                fmt_num(if med >= 100.0 { med.round() } else { med })
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
        chart.draw_series(LineSeries::new(
            [(0, med), (rounds + 1, med)],
            color.mix(0.4).stroke_width(1),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `key=value` pairs of a scenario's parameters, for the title.
fn compact_params(params: &serde_json::Value) -> String {
    params
        .as_object()
        .map(|o| {
            o.iter()
                // Bookkeeping, not load (the nodes of a cluster run are
                // in the legend).
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "client_threads"
                            | "herald_database"
                            | "case"
                            | "nodes"
                            | "cluster_nodes"
                            | "subscribe_nodes"
                            | "publish_nodes"
                    )
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
