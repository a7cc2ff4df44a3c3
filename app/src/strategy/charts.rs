//! Report charts drawn with plotters, each as SVG and PNG: loss curves of every run (and
//! of every task inside a mixed run),
//! grouped bars of per-task scores with their 95% intervals, a forest plot of the paired
//! differences to the best run and to the base model, the data-size curves, forgetting
//! heatmaps and cost bars. Text uses the bundled DejaVu Sans, so nothing depends on system fonts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::eval::metrics::Estimate;
use crate::strategy::report::{Comparison, Forgetting};
use crate::strategy::Report;
use crate::{persist, Error, Result};

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 540);

fn register_font() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes: &'static [u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
        // The font is a committed, known-good file: registration cannot fail.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, bytes);
    });
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("chart: {e}"))
}

type Drawn = std::result::Result<(), String>;

/// A point of the backend, in pixels.
type BackendCoord = (i32, i32);

thread_local! {
    /// The values to show on hover, collected while a chart is drawn into SVG (`None`
    /// otherwise): where (pixels) and what.
    static HOVERS: std::cell::RefCell<Option<Vec<(BackendCoord, String)>>> = const { std::cell::RefCell::new(None) };
}

/// Shows `text` when the pointer is over pixel `at` of the SVG being drawn (a tooltip:
/// the chart opened in a browser shows each value on hover); nothing in a PNG.
fn hover(at: BackendCoord, text: String) {
    HOVERS.with(|h| {
        if let Some(v) = h.borrow_mut().as_mut() {
            v.push((at, text));
        }
    });
}

/// `svg` with a transparent target and a `<title>` at every hover point, on top of the
/// chart (just before the closing tag).
fn with_hovers(svg: String, hovers: Vec<(BackendCoord, String)>) -> String {
    let Some(end) = svg.rfind("</svg>") else { return svg };
    let escape = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let targets: String = hovers
        .iter()
        .map(|((x, y), t)| {
            format!(
                r#"<circle cx="{x}" cy="{y}" r="7" fill="transparent" pointer-events="all"><title>{}</title></circle>"#,
                escape(t)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!("{}<g class=\"hover\">\n{targets}\n</g>\n{}", &svg[..end], &svg[end..])
}

/// Draws one chart into SVG text and PNG bytes.
fn render(
    draw: &dyn Fn(&DrawingArea<SVGBackend, Shift>) -> Drawn,
    draw_png: &dyn Fn(&DrawingArea<BitMapBackend, Shift>) -> Drawn,
) -> Result<(String, Vec<u8>)> {
    register_font();
    let mut svg = String::new();
    HOVERS.with(|h| *h.borrow_mut() = Some(Vec::new()));
    let drawn = (|| {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root).map_err(err)?;
        root.present().map_err(err)
    })();
    let hovers = HOVERS.with(|h| h.borrow_mut().take()).unwrap_or_default();
    drawn?;
    let svg = with_hovers(svg, hovers);
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw_png(&root).map_err(err)?;
        root.present().map_err(err)?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, SIZE.0, SIZE.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&rgb).map_err(err)?;
    }
    Ok((svg, png_bytes))
}

macro_rules! both {
    ($f:expr) => {
        render(&|a| $f(a), &|a| $f(a))
    };
}

/// A fraction as a percentage with one decimal.
fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// Distinct colours for up to 16 runs (a comparison of every strategy has 11 rows and
/// the base model): the ten of matplotlib's `tab10`, then six darker ones.
fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 16] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(0, 0, 128),
        RGBColor(128, 0, 0),
        RGBColor(0, 100, 0),
        RGBColor(85, 26, 139),
        RGBColor(139, 90, 0),
        RGBColor(0, 0, 0),
    ];
    C[i % C.len()]
}

/// A legend of coloured swatches down `area` (beside a chart, so it never covers it), in
/// a smaller font where a long name would not fit the quarter of the width it has.
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, names: &[String]) -> Drawn {
    let step = 22.min((SIZE.1 as i32 - 40) / names.len().max(1) as i32);
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let font = match longest {
        0..=28 => 13,
        29..=33 => 11,
        _ => 10,
    };
    for (i, name) in names.iter().enumerate() {
        let y = 50 + i as i32 * step;
        area.draw(&Rectangle::new([(4, y - 6), (18, y + 6)], color(i).filled())).map_err(|e| e.to_string())?;
        area.draw(&Text::new(name.clone(), (24, y - 7), (FONT, font))).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A chart's area and, beside it, its legend's ([`legend`]): a legend inside the plot
/// covered lines once a comparison had ten runs.
fn with_side_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    area.split_horizontally(SIZE.0 * 3 / 4)
}

/// The name of the category whose cell is centred at `v` (cells are `[i, i+1)`), empty
/// elsewhere; `top_down` counts from the top of a vertical axis.
fn category(v: f64, names: &[String], top_down: bool) -> String {
    let i = (v - 0.5).round();
    if (v - 0.5 - i).abs() > 1e-6 || i < 0.0 || i as usize >= names.len() {
        return String::new();
    }
    let i = i as usize;
    names[if top_down { names.len() - 1 - i } else { i }].clone()
}

/// A run's loss curve: its name, its (step, loss) points (1-based steps; a mixed run's
/// task has none at steps without its examples), and where each stage after the first
/// begins (an index into the steps).
pub type LossCurve = (String, Vec<(f64, f64)>, Vec<usize>);

/// Every point of a loss per step (1-based).
fn steps(losses: &[f64]) -> Vec<(f64, f64)> {
    losses.iter().enumerate().map(|(s, &l)| ((s + 1) as f64, l)).collect()
}

/// Loss per step of every run, captioned `title`, a faint line in the run's colour where
/// each of its stages begins.
pub fn loss_curves<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, runs: &[LossCurve]) -> Drawn {
    let max_x = runs.iter().flat_map(|r| r.1.iter().map(|p| p.0)).fold(2.0, f64::max);
    let max_y =
        runs.iter().flat_map(|r| r.1.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-3)
            * 1.05;
    let (plot, side) = with_side_legend(area);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(
            "optimizer step (stages of sequential and separate runs follow each other; a faint line where one begins)",
        )
        .y_desc("loss")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (_, points, starts)) in runs.iter().enumerate() {
        let c = color(i);
        // Between the last step of a stage and the first of the next.
        let marks = starts.iter().map(|&s| {
            PathElement::new(vec![(s as f64 + 0.5, 0.0), (s as f64 + 0.5, max_y)], c.mix(0.45).stroke_width(1))
        });
        chart.draw_series(marks).map_err(|e| e.to_string())?;
        chart.draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2))).map_err(|e| e.to_string())?;
    }
    legend(&side, &runs.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
}

/// Learning curves: each run's macro average (its 95% interval as a band) against the
/// training examples per task, on a logarithmic axis (the sizes are shares of the data).
pub fn learning_curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    examples: &[f64],
    runs: &[(String, Vec<Option<Estimate>>)],
) -> Drawn {
    let lo = examples.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = examples.iter().copied().fold(0.0, f64::max).max(lo * 1.5);
    let (plot, side) = with_side_legend(area);
    let mut chart = ChartBuilder::on(&plot)
        .caption("Score by data size", (FONT, 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((lo / 1.15..hi * 1.15).log_scale(), 0.0..100.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("training examples per task (mean over tasks)")
        .y_desc("macro average, % (band: 95% interval)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, points)) in runs.iter().enumerate() {
        let c = color(i);
        // The sizes it ran at (a merge other than the best runs at the full data only).
        let at: Vec<(f64, Estimate)> = examples.iter().zip(points).filter_map(|(&x, e)| Some((x, (*e)?))).collect();
        let upper = at.iter().map(|(x, e)| (*x, 100.0 * e.hi));
        let lower = at.iter().rev().map(|(x, e)| (*x, 100.0 * e.lo));
        chart
            .draw_series(std::iter::once(Polygon::new(upper.chain(lower).collect::<Vec<_>>(), c.mix(0.15).filled())))
            .map_err(|e| e.to_string())?;
        let line: Vec<(f64, f64)> = at.iter().map(|(x, e)| (*x, 100.0 * e.value)).collect();
        for (x, e) in &at {
            let text = format!("{name}: {}% [{}, {}] at ~{x:.0} examples per task", pct(e.value), pct(e.lo), pct(e.hi));
            hover(chart.backend_coord(&(*x, 100.0 * e.value)), text);
        }
        chart.draw_series(LineSeries::new(line.clone(), c.stroke_width(2))).map_err(|e| e.to_string())?;
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 4, c.filled()))).map_err(|e| e.to_string())?;
    }
    legend(&side, &runs.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
}

/// Grouped bars: for each task, one bar per run (each run its own colour) with its 95%
/// interval; the axis ends at 100% and the legend sits beside the chart.
pub fn metric_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    tasks: &[String],
    runs: &[(String, Vec<Estimate>)],
) -> Drawn {
    let n = tasks.len().max(1) as f64;
    let k = runs.len().max(1) as f64;
    let labels = tasks.to_vec();
    let (plot, side) = with_side_legend(area);
    let mut chart = ChartBuilder::on(&plot)
        .caption("Held-out score per task (headline metric, 95% CI)", (FONT, 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..n, 0.0..100.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(tasks.len() * 2 + 1)
        .x_label_formatter(&|x| category(*x, &labels, false))
        .y_desc("%")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    let width = 0.8 / k;
    for (ri, (name, scores)) in runs.iter().enumerate() {
        let c = color(ri);
        for (ti, e) in scores.iter().enumerate() {
            let xm = ti as f64 + 0.1 + ri as f64 * width + width * 0.45;
            let text = format!("{name} · {}: {}% [{}, {}]", tasks[ti], pct(e.value), pct(e.lo), pct(e.hi));
            hover(chart.backend_coord(&(xm, 100.0 * e.value)), text);
        }
        let bars = scores.iter().enumerate().map(|(ti, e)| {
            let x0 = ti as f64 + 0.1 + ri as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 0.9, 100.0 * e.value)], c.filled())
        });
        chart.draw_series(bars).map_err(|e| e.to_string())?;
        let whiskers = scores.iter().enumerate().map(|(ti, e)| {
            let xm = ti as f64 + 0.1 + ri as f64 * width + width * 0.45;
            PathElement::new(vec![(xm, 100.0 * e.lo), (xm, 100.0 * e.hi)], BLACK.stroke_width(1))
        });
        chart.draw_series(whiskers).map_err(|e| e.to_string())?;
    }
    legend(&side, &runs.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
}

/// One row of a forest plot: a run, its paired difference (fraction) with its interval,
/// whether it is significant after adjustment, and the run's index in the report (its
/// colour, the same as in the score bars).
pub type ForestRow = (String, Estimate, bool, usize);

/// Forest plot: every run's paired difference of the macro average to the best run
/// (left) and to the base model (right), in points with 95% intervals; the grey band is
/// the ±5-point zone where an interval means "tied"; filled dots are significant.
pub fn forest<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panels: &[(&str, Vec<ForestRow>)]) -> Drawn {
    let parts = area.split_evenly((1, panels.len().max(1)));
    for (part, (title, rows)) in parts.iter().zip(panels) {
        let n = rows.len().max(1);
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let reach = rows.iter().flat_map(|r| [r.1.lo.abs(), r.1.hi.abs()]).fold(0.06, f64::max) * 100.0 * 1.1;
        let mut chart = ChartBuilder::on(part)
            .caption(*title, (FONT, 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(215)
            .build_cartesian_2d(-reach..reach, 0.0..n as f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| category(*y, &names, true))
            // A panel is a fraction of the chart's width: few whole-point labels, not ten
            // that run into each other.
            .x_labels(7)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("difference, points (paired 95% CI)")
            .label_style((FONT, 12))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(-100.0 * super::report::TIE_MARGIN, 0.0), (100.0 * super::report::TIE_MARGIN, n as f64)],
                RGBColor(225, 225, 225).filled(),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(0.0, 0.0), (0.0, n as f64)], BLACK.stroke_width(1))))
            .map_err(|e| e.to_string())?;
        for (i, (name, d, significant, run)) in rows.iter().enumerate() {
            let y = (n - 1 - i) as f64 + 0.5;
            let c = color(*run);
            let p = |x: f64| 100.0 * x + 0.0;
            let text = format!(
                "{name}: {:+.1} points [{:.1}, {:.1}]{}",
                p(d.value),
                p(d.lo),
                p(d.hi),
                if *significant { ", significant" } else { "" }
            );
            hover(chart.backend_coord(&(100.0 * d.value, y)), text);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(100.0 * d.lo, y), (100.0 * d.hi, y)],
                    c.stroke_width(2),
                )))
                .map_err(|e| e.to_string())?;
            let style = if *significant { c.filled() } else { c.stroke_width(2) };
            chart
                .draw_series(std::iter::once(Circle::new((100.0 * d.value, y), 5, style)))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Heatmap of a forgetting matrix (rows: after stage, columns: task).
pub fn forgetting_heatmap<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, f: &Forgetting) -> Drawn {
    let (rows, cols) = (f.stages.len(), f.tasks.len());
    let (stages, tasks): (Vec<String>, Vec<String>) =
        (f.stages.iter().map(|s| format!("after {s}")).collect(), f.tasks.clone());
    let mut chart = ChartBuilder::on(area)
        .caption(format!("Forgetting: {title}"), (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(120)
        .build_cartesian_2d(0.0..cols as f64, 0.0..rows as f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(cols * 2 + 1)
        .y_labels(rows * 2 + 1)
        .x_label_formatter(&|x| category(*x, &tasks, false))
        .y_label_formatter(&|y| category(*y, &stages, true))
        .x_desc("task scored")
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (r, row) in f.matrix.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let y = (rows - 1 - r) as f64;
            let shade = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(c as f64, y), (c as f64 + 1.0, y + 1.0)],
                    RGBColor(shade, shade / 2 + 127, 255).filled(),
                )))
                .map_err(|e| e.to_string())?;
            let text_color = if v > 0.6 { WHITE } else { BLACK };
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{:.1}", 100.0 * v),
                    (c as f64 + 0.42, y + 0.55),
                    (FONT, 18).into_font().color(&text_color),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Horizontal bars of training wall time per run.
pub fn cost_bars<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[(String, f64)]) -> Drawn {
    bars(area, "Training wall time per run (s)", "seconds", runs)
}

/// Horizontal bars, one per run in its colour, captioned `title`, the axis in `unit`.
pub fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    unit: &str,
    runs: &[(String, f64)],
) -> Drawn {
    let n = runs.len().max(1);
    let max = runs.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-3) * 1.1;
    let names: Vec<String> = runs.iter().map(|r| r.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..max, 0.0..n as f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| category(*y, &names, true))
        .x_desc(unit)
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(runs.iter().enumerate().map(|(i, (_, w))| {
            let y = (n - 1 - i) as f64;
            Rectangle::new([(0.0, y + 0.15), (*w, y + 0.85)], color(i).filled())
        }))
        .map_err(|e| e.to_string())?;
    for (i, (name, w)) in runs.iter().enumerate() {
        hover(chart.backend_coord(&(*w, (n - 1 - i) as f64 + 0.5)), format!("{name}: {w:.1} {unit}"));
    }
    Ok(())
}

/// Writes every chart of `report` into `dir` as SVG and PNG; returns the files.
pub fn write_charts(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    let trained: Vec<_> = report.runs.iter().filter(|r| !r.is_base()).collect();
    let tasks: Vec<String> = report.tasks.iter().map(|t| t.0.clone()).collect();
    let mut out = Vec::new();
    let mut save = |name: &str, (svg, png): (String, Vec<u8>)| -> Result<()> {
        let s = dir.join(format!("{name}.svg"));
        let p = dir.join(format!("{name}.png"));
        persist::write_atomic(&s, svg.as_bytes())?;
        persist::write_atomic(&p, &png)?;
        out.push(s);
        out.push(p);
        Ok(())
    };
    let losses: Vec<LossCurve> = trained
        .iter()
        .filter(|r| !r.losses.is_empty())
        .map(|r| (r.name.clone(), steps(&r.losses), r.stage_starts.clone()))
        .collect();
    save("loss", both!(|a| loss_curves(a, "Training loss", &losses))?)?;
    // Mixed runs: each task's loss inside the run, at the steps it was trained in.
    let per_task: Vec<LossCurve> = trained
        .iter()
        .flat_map(|r| {
            r.task_losses.iter().map(move |(task, at)| {
                let points = at.iter().enumerate().filter_map(|(s, l)| Some(((s + 1) as f64, (*l)?))).collect();
                (format!("{} · {task}", r.name), points, vec![])
            })
        })
        .collect();
    if !per_task.is_empty() {
        save("task-loss", both!(|a| loss_curves(a, "Training loss per task inside mixed runs", &per_task))?)?;
    }
    let scores: Vec<(String, Vec<Estimate>)> =
        report.runs.iter().map(|r| (r.name.clone(), r.scores.iter().map(|s| s.value).collect())).collect();
    save("scores", both!(|a| metric_bars(a, &tasks, &scores))?)?;
    // Comparisons as forest rows, coloured by their run.
    let forest_rows = |cs: &mut dyn Iterator<Item = &Comparison>| -> Vec<ForestRow> {
        cs.map(|c| {
            let run = report.runs.iter().position(|r| r.name == c.run).unwrap_or(0);
            (c.run.clone(), c.difference, c.p_adjusted < 0.05, run)
        })
        .collect()
    };
    let rows = |against: &str| -> Vec<ForestRow> {
        forest_rows(&mut report.comparisons.iter().filter(|c| c.task.is_none() && c.against == against))
    };
    let best = report.recommendation.best.clone();
    let base = report.runs.iter().find(|r| r.is_base()).map(|r| r.name.clone()).unwrap_or_default();
    let (to_best, to_base) = (rows(&best), rows(&base));
    if !to_best.is_empty() || !to_base.is_empty() {
        let panels = [(format!("against the best ({best})"), to_best), ("against the base model".to_string(), to_base)];
        let panels: Vec<(&str, Vec<ForestRow>)> = panels.iter().map(|(t, r)| (t.as_str(), r.clone())).collect();
        save("differences", both!(|a| forest(a, &panels))?)?;
    }
    if let Some(d) = &report.data_sizes {
        let examples: Vec<f64> = d.sizes.iter().map(|s| s.mean_examples()).collect();
        let curves: Vec<(String, Vec<Option<Estimate>>)> = trained
            .iter()
            .map(|r| {
                let at = |k: usize| report.runs_at(k).into_iter().find(|x| x.name == r.name).map(|x| x.macro_average());
                (r.name.clone(), (0..d.sizes.len()).map(at).collect())
            })
            .collect();
        save("curves", both!(|a| learning_curves(a, &examples, &curves))?)?;
    }
    let kept: Vec<(String, f64)> =
        report.runs.iter().filter_map(|r| Some((r.name.clone(), 100.0 * r.retention?.same_answer))).collect();
    if !kept.is_empty() {
        let title = "Kept of the base model: probe prompts answered as the base model does (%)";
        save("retention", both!(|a| bars(a, title, "% of the probe's prompts", &kept))?)?;
    }
    if let Some(k) = &report.keep {
        let panels: Vec<(String, Vec<ForestRow>)> = k
            .sets
            .iter()
            .map(|(set, _, _)| {
                let rows = forest_rows(&mut k.comparisons.iter().filter(|c| c.task.as_deref() == Some(set)));
                (format!("keep set {set}: change from the base model"), rows)
            })
            .collect();
        let panels: Vec<(&str, Vec<ForestRow>)> = panels.iter().map(|(t, r)| (t.as_str(), r.clone())).collect();
        if panels.iter().any(|p| !p.1.is_empty()) {
            save("keep", both!(|a| forest(a, &panels))?)?;
        }
    }
    if let Some(m) = &report.methods {
        let rows = forest_rows(&mut m.comparisons.iter().filter(|c| c.task.is_none()));
        if !rows.is_empty() {
            let first = m.methods.first().map_or("", |x| x.name());
            let title = format!("each method against {first}, the same row (macro average)");
            save("methods", both!(|a| forest(a, &[(title.as_str(), rows.clone())]))?)?;
        }
    }
    let costs: Vec<(String, f64)> = trained.iter().map(|r| (r.name.clone(), r.wall_s)).collect();
    save("cost", both!(|a| cost_bars(a, &costs))?)?;
    for r in &trained {
        if let Some(f) = &r.forgetting {
            let slug: String = r.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            save(&format!("forgetting-{}", slug.trim_matches('-')), both!(|a| forgetting_heatmap(a, &r.name, f))?)?;
        }
    }
    Ok(out)
}
