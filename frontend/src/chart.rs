//! Live charts drawn with plotters into SVG: the loss curve of every run and, for mixed
//! runs, of every task inside it, fed by the experiment's event stream.

use multitune_api::Event;
use plotters::prelude::*;

/// One loss point: (stage, step within the stage, loss).
pub type Point = (String, usize, f64);

/// Loss points per run, in arrival order; a step repeated after a resume replaces the
/// earlier one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// Run name → (stage, step within stage, loss), ordered by first appearance.
    pub runs: Vec<(String, Vec<Point>)>,
    /// Mixed runs: (run, task) → that task's loss at the run's steps, ordered by first
    /// appearance.
    pub tasks: Vec<(String, String, Vec<Point>)>,
}

impl Curves {
    /// Adds a step event (other events are ignored).
    pub fn push(&mut self, e: &Event) {
        let Event::Step { run, stage, step, loss, task_losses, .. } = e else { return };
        for (task, l) in task_losses {
            let i = match self.tasks.iter().position(|(r, t, _)| r == run && t == task) {
                Some(i) => i,
                None => {
                    self.tasks.push((run.clone(), task.clone(), vec![]));
                    self.tasks.len() - 1
                }
            };
            let pts = &mut self.tasks[i].2;
            match pts.iter().position(|(s, k, _)| s == stage && k == step) {
                Some(j) => pts[j].2 = *l,
                None => pts.push((stage.clone(), *step, *l)),
            }
        }
        let i = match self.runs.iter().position(|(r, _)| r == run) {
            Some(i) => i,
            None => {
                self.runs.push((run.clone(), vec![]));
                self.runs.len() - 1
            }
        };
        let pts = &mut self.runs[i].1;
        match pts.iter().position(|(s, k, _)| s == stage && k == step) {
            Some(j) => pts[j].2 = *loss,
            None => pts.push((stage.clone(), *step, *loss)),
        }
    }

    /// Each run's curve as (global step, loss): stages follow each other.
    pub fn series(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        self.runs
            .iter()
            .map(|(name, pts)| (name.clone(), pts.iter().enumerate().map(|(i, p)| ((i + 1) as f64, p.2)).collect()))
            .collect()
    }

    /// Each mixed run's tasks' curves, `run · task`, as (the run's global step, loss): a
    /// task's point sits at the run's step it was trained in.
    pub fn task_series(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        self.tasks
            .iter()
            .map(|(run, task, pts)| {
                let steps = self.runs.iter().find(|r| &r.0 == run).map(|r| r.1.as_slice()).unwrap_or_default();
                let at = |p: &Point| steps.iter().position(|q| q.0 == p.0 && q.1 == p.1).map(|i| (i + 1) as f64);
                (format!("{run} · {task}"), pts.iter().filter_map(|p| Some((at(p)?, p.2))).collect())
            })
            .collect()
    }

    /// Each run's stage starts: the x (between two steps) where a stage after its first
    /// begins, for the chart's marks.
    pub fn stage_starts(&self) -> Vec<Vec<f64>> {
        self.runs
            .iter()
            .map(|(_, pts)| {
                pts.windows(2).enumerate().filter(|(_, w)| w[0].0 != w[1].0).map(|(i, _)| i as f64 + 1.5).collect()
            })
            .collect()
    }

    /// Points in all.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.1.len()).sum()
    }

    /// Per-task points in all (mixed runs).
    pub fn task_len(&self) -> usize {
        self.tasks.iter().map(|t| t.2.len()).sum()
    }

    /// Whether there is nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// A colour per series: one hue per name with its bracketed parts taken off (a run at a
/// smaller data size, `combined [50% data]`, or a later seed is a variant of `combined`),
/// each later variant lighter; hues in order of first appearance.
pub fn series_colors(names: &[&str]) -> Vec<RGBAColor> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    names
        .iter()
        .map(|n| {
            let key = without_brackets(n);
            let (hue, variant) = match keys.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    keys[i].1 += 1;
                    (i, keys[i].1)
                }
                None => {
                    keys.push((key, 0));
                    (keys.len() - 1, 0)
                }
            };
            PALETTE[hue % PALETTE.len()].mix((1.0 - 0.3 * variant as f64).max(0.25))
        })
        .collect()
}

/// `name` without its `[…]` parts, spaces collapsed.
fn without_brackets(name: &str) -> String {
    let mut depth = 0usize;
    let kept: String = name
        .chars()
        .filter(|&c| match c {
            '[' => {
                depth += 1;
                false
            }
            ']' => {
                depth = depth.saturating_sub(1);
                false
            }
            _ => depth == 0,
        })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The legend of a chart of `series`, drawn beside it by the page (a legend inside the
/// plot covered its lines once a comparison had a dozen runs): each name with its
/// colour as CSS.
pub fn legend(series: &[(String, Vec<(f64, f64)>)]) -> Vec<(String, String)> {
    let names: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
    series_colors(&names)
        .into_iter()
        .zip(&names)
        .map(|(c, n)| {
            let RGBAColor(r, g, b, a) = c;
            (n.to_string(), format!("rgba({r}, {g}, {b}, {a:.2})"))
        })
        .collect()
}

/// Natively (tests), text is measured with the same bundled font as the server's report
/// charts; in the browser plotters measures text with the page's own font.
#[cfg(not(target_arch = "wasm32"))]
fn register_font() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        // A committed, known-good font file: registration cannot fail.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

#[cfg(target_arch = "wasm32")]
fn register_font() {}

/// The loss chart as SVG text, captioned `caption`; `marks[i]` are the x where run `i`'s
/// stages begin (a faint vertical line in its colour). Its legend is [`legend`].
pub fn loss_svg(caption: &str, series: &[(String, Vec<(f64, f64)>)], marks: &[Vec<f64>], size: (u32, u32)) -> String {
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let _ = root.fill(&WHITE);
        let max_x = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(1.0, f64::max);
        let max_y = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(0.1, f64::max);
        let chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .caption(caption, ("sans-serif", 16))
            .build_cartesian_2d(0.0..max_x * 1.02, 0.0..max_y * 1.05);
        let Ok(mut chart) = chart else { return svg_fallback() };
        // Steps are whole numbers: at most one tick per step, each labelled as one.
        let _ = chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_labels((max_x as usize + 1).clamp(2, 10))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 12))
            .draw();
        let names: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
        for (i, ((_, pts), color)) in series.iter().zip(series_colors(&names)).enumerate() {
            let at = marks.get(i).map(Vec::as_slice).unwrap_or_default();
            let mark = RGBAColor(color.0, color.1, color.2, color.3 * 0.45);
            let _ = chart.draw_series(
                at.iter().map(|&x| PathElement::new(vec![(x, 0.0), (x, max_y * 1.05)], mark.stroke_width(1))),
            );
            let _ = chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)));
        }
        let _ = root.present();
    }
    svg
}

fn svg_fallback() -> String {
    "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(run: &str, stage: &str, step: usize, loss: f64) -> Event {
        mixed_step(run, stage, step, loss, &[])
    }

    /// A step with each task's loss (a mixed run's).
    fn mixed_step(run: &str, stage: &str, step: usize, loss: f64, tasks: &[(&str, f64)]) -> Event {
        Event::Step {
            run: run.into(),
            stage: stage.into(),
            step,
            total_steps: 10,
            loss,
            lr: 1e-3,
            tokens: 100,
            tokens_per_s: 50.0,
            elapsed_s: 1.0,
            task_losses: tasks.iter().map(|(t, l)| (t.to_string(), *l)).collect(),
        }
    }

    #[test]
    fn curves_follow_stages_and_replace_repeats() {
        let mut c = Curves::default();
        for e in [step("a", "t1", 1, 3.0), step("a", "t1", 2, 2.0), step("b", "all", 1, 5.0), step("a", "t2", 1, 1.5)] {
            c.push(&e);
        }
        c.push(&step("a", "t1", 2, 1.9)); // resumed: same step again
        c.push(&Event::RunFinished { run: "a".into(), wall_s: 1.0 });
        let s = c.series();
        assert_eq!(s[0], ("a".to_string(), vec![(1.0, 3.0), (2.0, 1.9), (3.0, 1.5)]));
        assert_eq!(s[1], ("b".to_string(), vec![(1.0, 5.0)]));
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn the_chart_has_a_line_per_run() {
        let series = [("a".to_string(), vec![(1.0, 2.0), (2.0, 1.0)]), ("b".to_string(), vec![(1.0, 3.0)])];
        let svg = loss_svg("training loss", &series, &[], (600, 300));
        assert!(svg.starts_with("<svg"));
        // Each run is a line in its own colour; the legend, beside the chart, says which.
        assert_eq!(svg.matches("stroke=\"#1F77B4\"").count(), 1, "{svg}");
        assert_eq!(svg.matches("stroke=\"#FF7F0E\"").count(), 1, "{svg}");
        assert!(!svg.contains(">\na\n</text>"), "no legend inside the plot: {svg}");
        assert_eq!(
            legend(&series),
            [
                ("a".to_string(), "rgba(31, 119, 180, 1.00)".to_string()),
                ("b".into(), "rgba(255, 127, 14, 1.00)".into())
            ]
        );
        // Whole steps on the x axis.
        assert_eq!(svg.matches(">\n1\n</text>").count(), 1, "step labels: {svg}");
    }

    #[test]
    fn a_mixed_runs_tasks_get_their_own_curves_at_the_runs_steps() {
        let mixed = |step: usize, loss: f64, tasks: &[(&str, f64)]| mixed_step("combined", "all", step, loss, tasks);
        let mut c = Curves::default();
        c.push(&mixed(1, 2.0, &[("a", 3.0), ("b", 1.0)]));
        c.push(&mixed(2, 1.5, &[("b", 1.5)])); // no example of a in step 2
        c.push(&mixed(3, 1.0, &[("a", 1.2), ("b", 0.8)]));
        c.push(&step("plain", "t1", 1, 4.0));
        assert_eq!(
            c.task_series(),
            vec![
                ("combined · a".to_string(), vec![(1.0, 3.0), (3.0, 1.2)]),
                ("combined · b".to_string(), vec![(1.0, 1.0), (2.0, 1.5), (3.0, 0.8)]),
            ]
        );
        assert_eq!(c.series().len(), 2, "the runs' own curves are unchanged");
        let svg = loss_svg("loss per task", &c.task_series(), &[], (600, 300));
        assert!(svg.contains("loss per task"), "{svg}");
        let names: Vec<String> = legend(&c.task_series()).into_iter().map(|l| l.0).collect();
        assert_eq!(names, ["combined · a", "combined · b"]);
    }

    /// A strategy's runs at smaller data sizes (and a task's curve in them) share its hue,
    /// lighter; other strategies get hues of their own.
    #[test]
    fn a_runs_smaller_sizes_share_its_colour_lighter() {
        let names = ["combined", "multi-head", "combined [50% data]", "combined [25% data]", "multi-head [50% data]"];
        let c = series_colors(&names);
        let rgb = |i: usize| (c[i].0, c[i].1, c[i].2);
        assert_eq!((rgb(0), rgb(2), rgb(3)), (rgb(0), rgb(0), rgb(0)));
        assert_ne!(rgb(0), rgb(1));
        assert_eq!(rgb(4), rgb(1));
        assert_eq!((c[0].3, c[2].3, c[4].3), (1.0, 0.7, 0.7));
        assert!((c[3].3 - 0.4).abs() < 1e-12);
        let tasks = series_colors(&["combined · a", "combined · b", "combined [50% data] · a"]);
        assert_eq!((tasks[2].0, tasks[2].1, tasks[2].2), (tasks[0].0, tasks[0].1, tasks[0].2));
        assert_ne!((tasks[1].0, tasks[1].1, tasks[1].2), (tasks[0].0, tasks[0].1, tasks[0].2));
    }

    #[test]
    fn a_new_stage_is_marked_where_it_begins() {
        let mut c = Curves::default();
        for e in [step("a", "t1", 1, 3.0), step("a", "t1", 2, 2.0), step("a", "t2", 1, 1.5), step("b", "all", 1, 5.0)] {
            c.push(&e);
        }
        // Run a's second stage begins between its steps 2 and 3; b has one stage.
        assert_eq!(c.stage_starts(), vec![vec![2.5], vec![]]);
        let plain = loss_svg("training loss", &c.series(), &[], (600, 300));
        let marked = loss_svg("training loss", &c.series(), &c.stage_starts(), (600, 300));
        let blue = |svg: &str| svg.matches("stroke=\"#1F77B4\"").count();
        assert_eq!(blue(&marked), blue(&plain) + 1, "one mark in run a's colour: {marked}");
    }
}
