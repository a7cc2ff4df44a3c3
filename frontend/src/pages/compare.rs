//! Compare: the report — recommendation, per-task table with intervals, charts (drawn
//! by the server's plotters report code), forgetting matrices, task similarity, cost —
//! and exports.

use leptos::prelude::*;
use multitune_api::ApiError;
use serde_json::Value;

use super::route_id;
use crate::{api, format, ErrorView};

/// A row of the per-task table: run name, one cell per task, macro average.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    /// Run.
    pub run: String,
    /// `value [lo, hi]` per task (with `± spread` over seeds when repeated).
    pub cells: Vec<String>,
    /// Macro average.
    pub macro_avg: String,
    /// Index of the best run in each task column.
    pub best: Vec<bool>,
}

fn est(v: &Value) -> (f64, f64, f64) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    (f("value"), f("lo"), f("hi"))
}

/// The per-task table of a report, best value per task marked.
pub fn score_rows(report: &Value) -> (Vec<String>, Vec<ScoreRow>) {
    let tasks: Vec<String> = report["tasks"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x[0].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let runs = report["runs"].as_array().cloned().unwrap_or_default();
    let value = |r: &Value, i: usize| est(&r["scores"][i]["value"]).0;
    let best: Vec<f64> = (0..tasks.len())
        .map(|i| runs.iter().filter(|r| r["strategy"] != "base").map(|r| value(r, i)).fold(f64::NEG_INFINITY, f64::max))
        .collect();
    let rows = runs
        .iter()
        .map(|r| {
            let scores = r["scores"].as_array().cloned().unwrap_or_default();
            let cells = scores
                .iter()
                .map(|s| {
                    let (v, lo, hi) = est(&s["value"]);
                    let seeds: Vec<f64> = s["seed_values"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default();
                    let spread = if seeds.len() > 1 {
                        let m = seeds.iter().sum::<f64>() / seeds.len() as f64;
                        let sd = (seeds.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (seeds.len() - 1) as f64).sqrt();
                        format!(" ± {:.1}", 100.0 * sd)
                    } else {
                        String::new()
                    };
                    format!("{}{spread} [{:.1}, {:.1}]", format::percent(v), 100.0 * lo, 100.0 * hi)
                })
                .collect();
            let n = scores.len().max(1) as f64;
            let mean = |k: usize| {
                scores
                    .iter()
                    .map(|s| {
                        let e = est(&s["value"]);
                        [e.0, e.1, e.2][k]
                    })
                    .sum::<f64>()
                    / n
            };
            ScoreRow {
                run: r["name"].as_str().unwrap_or("").to_string(),
                cells,
                macro_avg: format::with_interval(mean(0), mean(1), mean(2)),
                best: (0..tasks.len()).map(|i| r["strategy"] != "base" && value(r, i) == best[i]).collect(),
            }
        })
        .collect();
    (tasks, rows)
}

/// Markdown emphasis removed for display.
pub fn plain(text: &str) -> String {
    text.replace("**", "")
}

#[component]
pub fn ComparePage() -> impl IntoView {
    let id = route_id();
    let report = RwSignal::new(None::<Result<Value, ApiError>>);
    let charts = RwSignal::new(Vec::<String>::new());
    Effect::new(move |_| {
        let id = id.get();
        leptos::task::spawn_local(async move {
            report.set(Some(api::get(&format!("/api/experiments/{id}/report")).await));
            if let Ok(c) = api::get::<Vec<String>>(&format!("/api/experiments/{id}/charts")).await {
                charts.set(c);
            }
        });
    });
    view! {
        <h1>"Compare"</h1>
        {move || match report.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            Some(Ok(r)) => {
                let id = id.get();
                let (tasks, rows) = score_rows(&r);
                let rec = plain(r["recommendation"]["text"].as_str().unwrap_or(""));
                let sim = r["similarity"].clone();
                view! {
                    <section class="recommendation">
                        <h2>"Recommendation"</h2>
                        {rec.lines().map(|l| view! { <p>{l.to_string()}</p> }).collect_view()}
                    </section>
                    <h2>"Per-task scores (95% intervals)"</h2>
                    <table class="compare" id="compare-table">
                        <thead><tr><th>"run"</th>{tasks.iter().map(|t| view! { <th>{t.clone()}</th> }).collect_view()}<th>"macro avg"</th></tr></thead>
                        <tbody>{rows.into_iter().map(|row| view! {
                            <tr>
                                <td>{row.run.clone()}</td>
                                {row.cells.iter().zip(&row.best).map(|(c, b)| view! {
                                    <td class=if *b { "best" } else { "" }>{c.clone()}</td>
                                }).collect_view()}
                                <td>{row.macro_avg.clone()}</td>
                            </tr>
                        }).collect_view()}</tbody>
                    </table>
                    <h2>"Charts"</h2>
                    <div class="charts">
                        {charts.get().into_iter().filter(|c| c.ends_with(".svg")).map(|c| {
                            let src = api::url(&format!("/api/experiments/{id}/charts/{c}"));
                            view! { <figure><img src=src.clone() alt=c.trim_end_matches(".svg").replace('-', " ") /><figcaption><a href=src download>{c.clone()}</a></figcaption></figure> }
                        }).collect_view()}
                    </div>
                    {(!sim.is_null()).then(|| {
                        let names: Vec<String> = sim["tasks"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
                        view! {
                            <h2>"Task similarity"</h2>
                            <p>"Cosine of the per-task adapter deltas / TIES sign-conflict rate."</p>
                            <table class="similarity">
                                <thead><tr><th></th>{names.iter().map(|n| view! { <th>{n.clone()}</th> }).collect_view()}</tr></thead>
                                <tbody>{names.iter().enumerate().map(|(i, n)| view! {
                                    <tr><th>{n.clone()}</th>{(0..names.len()).map(|j| view! {
                                        <td>{format!("{:.3} / {:.2}", sim["cosine"][i][j].as_f64().unwrap_or(f64::NAN), sim["sign_conflict"][i][j].as_f64().unwrap_or(f64::NAN))}</td>
                                    }).collect_view()}</tr>
                                }).collect_view()}</tbody>
                            </table>
                        }
                    })}
                    <h2>"Cost"</h2>
                    <table class="cost">
                        <thead><tr><th>"run"</th><th>"tokens"</th><th>"wall"</th><th>"trainable"</th><th>"exported"</th><th>"adapter"</th><th>"peak memory"</th></tr></thead>
                        <tbody>{r["runs"].as_array().cloned().unwrap_or_default().into_iter().filter(|x| x["strategy"] != "base").map(|x| view! {
                            <tr>
                                <td>{x["name"].as_str().unwrap_or("").to_string()}</td>
                                <td>{x["tokens"].as_u64().unwrap_or(0)}</td>
                                <td>{format::duration(x["wall_s"].as_f64().unwrap_or(f64::NAN))}</td>
                                <td>{format::count(x["trainable_params"].as_u64().unwrap_or(0))}</td>
                                <td>{format::count(x["exported_params"].as_u64().unwrap_or(0))}</td>
                                <td>{format::bytes(x["adapter_bytes"].as_u64().unwrap_or(0))}</td>
                                <td>{x["peak_rss_mib"].as_f64().map(|m| format!("{m:.0} MiB")).unwrap_or_default()}</td>
                            </tr>
                        }).collect_view()}</tbody>
                    </table>
                    <h2>"Export"</h2>
                    <ul>
                        <li><a href=api::url(&format!("/api/experiments/{id}/report.md")) download="report.md">"report.md"</a></li>
                        <li><a href=api::url(&format!("/api/experiments/{id}/report")) download="report.json">"report.json"</a></li>
                        <li><a href=api::url(&format!("/api/experiments/{id}/download"))>"everything (zip)"</a></li>
                        <li><a href=format!("/experiments/{id}/downloads")>"adapters and models"</a></li>
                    </ul>
                }.into_any()
            }
        }}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_marks_the_best_run_per_task() {
        let e = |v: f64| json!({"value": {"value": v, "lo": v - 0.1, "hi": v + 0.1}, "seed_values": []});
        let r = json!({
            "tasks": [["a", "classification", 10, 5], ["b", "generation", 10, 5]],
            "runs": [
                {"name": "base model", "strategy": "base", "scores": [e(0.9), e(0.1)]},
                {"name": "x", "strategy": "combined", "scores": [e(0.5), e(0.7)]},
                {"name": "y", "strategy": "separate", "scores": [e(0.6), e(0.3)]},
            ]
        });
        let (tasks, rows) = score_rows(&r);
        assert_eq!(tasks, ["a", "b"]);
        assert_eq!(rows[1].cells[0], "50.0% [40.0, 60.0]");
        assert_eq!(rows[1].macro_avg, "60.0% [50.0, 70.0]");
        // The base model is the reference, never "best".
        assert_eq!(
            (rows[0].best.clone(), rows[1].best.clone(), rows[2].best.clone()),
            (vec![false, false], vec![false, true], vec![true, false])
        );
    }

    #[test]
    fn seeds_show_their_spread() {
        let r = json!({"tasks": [["a", "c", 1, 1]], "runs": [{"name": "x", "strategy": "combined",
            "scores": [{"value": {"value": 0.6, "lo": 0.5, "hi": 0.7}, "seed_values": [0.5, 0.7]}]}]});
        assert_eq!(score_rows(&r).1[0].cells[0], "60.0% ± 14.1 [50.0, 70.0]");
        assert_eq!(plain("**x** is best"), "x is best");
    }
}
