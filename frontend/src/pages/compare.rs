//! Compare: the report, one screen first — the answer in one sentence, a compact
//! strategy × task table marked against the best run, the forest plot of every run's
//! paired difference to it (values on hover) — then the data-size curves, the adapter
//! methods compared (which method where), the details
//! folded (the recommendation in full, per-task scores with intervals, every pair of
//! runs, per-task standings), the charts at full width (drawn by the server's plotters
//! report code), task similarity, cost, and exports.

use leptos::prelude::*;
use multitune_api::report::Report;
use multitune_api::ApiError;

use super::route_id;
use crate::report_view::{
    answer, compact_rows, forest, keep_names, method_rows, pair_matrix, plain, score_rows, search_text, size_rows,
    task_standings,
};
use crate::{api, format, ErrorView};

#[component]
pub fn ComparePage() -> impl IntoView {
    let id = route_id();
    let report = RwSignal::new(None::<Result<Report, ApiError>>);
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
                let rec = plain(&r.recommendation.text);
                let sim = r.similarity.clone();
                let (compact_tasks, compact) = compact_rows(&r);
                let has_kept = compact.iter().any(|row| row.kept.is_some());
                let keep_sets = keep_names(&r);
                let keep_text = r.keep.as_ref().map(|k| k.text.clone());
                let (zero, bars) = forest(&r);
                view! {
                    <p class="answer" id="answer">{answer(&r)}</p>
                    <table class="compact" id="compact-table">
                        <thead><tr><th>"run"</th>{compact_tasks.iter().map(|t| view! { <th>{t.clone()}</th> }).collect_view()}<th>"macro avg"</th>{has_kept.then(|| view! { <th title="% of the retention probe's prompts answered exactly as the base model does">"kept of base"</th> })}{keep_sets.iter().map(|k| view! { <th class="keep" title="A keep set: must not get worse; scored, never trained on">{format!("keep: {k}")}</th> }).collect_view()}</tr></thead>
                        <tbody>{compact.into_iter().map(|row| view! {
                            <tr class=if row.best { "best" } else { "" }>
                                <td>{row.run.clone()}</td>
                                {row.cells.into_iter().map(|c| view! {
                                    <td title=c.title>{c.text}<span class=match c.mark { "▼" => "mark worse", "▲" => "mark better", _ => "mark" }>{c.mark}</span></td>
                                }).collect_view()}
                                {has_kept.then(|| match row.kept.clone() {
                                    Some(k) => view! { <td class="kept" title=k.title>{k.text}</td> }.into_any(),
                                    None => view! { <td>"—"</td> }.into_any(),
                                })}
                                {row.keep.into_iter().map(|c| view! {
                                    <td class="keep" title=c.title>{c.text}<span class=match c.mark { "▼" => "mark worse", "▲" => "mark better", _ => "mark" }>{c.mark}</span></td>
                                }).collect_view()}
                            </tr>
                        }).collect_view()}</tbody>
                    </table>
                    <p class="hint">"Headline metric, %. Against the best run (bold), paired on the same held-out examples: ▼ significantly below it, ▲ above it, ≈ tied (within ±5 points), no mark: the data cannot tell. Kept of base: % of the retention probe's prompts still answered exactly as the base model does. Keep columns: the keep sets' headline metric, marked against the base model (▼ significantly worse). Hover a cell for its interval and the comparison."</p>
                    {keep_text.map(|t| view! { <p class="keep-text" id="keep-text">{t}</p> })}
                    {(!bars.is_empty()).then(|| view! {
                        <h2>"Every run against the best (macro average, paired difference in points)"</h2>
                        <div class="forest" id="forest">
                            {bars.into_iter().map(|b| view! {
                                <div class="forest-row" title=format!("{}: {}", b.run, b.title)>
                                    <span class="forest-name">{b.run.clone()}</span>
                                    <span class="forest-axis">
                                        <span class="forest-zero" style=format!("left: {zero:.2}%")></span>
                                        <span class=format!("forest-bar {}", b.class) style=format!("left: {:.2}%; width: {:.2}%", b.left, b.width.max(0.3))></span>
                                        <span class=format!("forest-dot {}", b.class) style=format!("left: {:.2}%", b.at)></span>
                                    </span>
                                </div>
                            }).collect_view()}
                        </div>
                        <p class="hint">"Each bar is a run's 95% paired bootstrap interval of (run − best), the dot its difference; the line is zero. Red: significantly worse; grey: tied; blue: the data cannot tell. Hover a row for the figures."</p>
                    })}
                    <details id="details">
                    <summary>"Details: the recommendation in full, per-task scores with intervals, every pair of runs, each task's standings"</summary>
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
                    {
                        let (names, m) = pair_matrix(&r);
                        (!names.is_empty()).then(|| view! {
                            <h2>"Every pair of runs (paired on the same examples)"</h2>
                            <p class="hint">"Row minus column, macro average in points: difference [95% interval] and McNemar p, Holm-adjusted over all pairs. Green: the row's run is significantly better; red: worse; grey: tied (within ±5 points); plain: the data cannot tell."</p>
                            <div class="scroll">
                            <table class="pairs" id="pair-matrix">
                                <thead><tr><th></th>{names.iter().map(|n| view! { <th>{n.clone()}</th> }).collect_view()}</tr></thead>
                                <tbody>{names.iter().zip(m).map(|(n, row)| view! {
                                    <tr><th>{n.clone()}</th>{row.into_iter().map(|c| match c {
                                        Some(c) => view! { <td class=c.class>{c.text}</td> }.into_any(),
                                        None => view! { <td>"—"</td> }.into_any(),
                                    }).collect_view()}</tr>
                                }).collect_view()}</tbody>
                            </table>
                            </div>
                            <h2>"Per task: the best run against the others"</h2>
                            <ul class="standings">{task_standings(&r).into_iter().map(|(t, s)| view! {
                                <li><strong>{t}</strong>": "{s}</li>
                            }).collect_view()}</ul>
                        })
                    }
                    </details>
                    {
                        let (sizes, size_table) = size_rows(&r);
                        let text = r.data_sizes.as_ref().map(|d| d.text.clone()).unwrap_or_default();
                        (!sizes.is_empty()).then(|| view! {
                            <h2>"When the winner changes (data size)"</h2>
                            <p id="data-sizes-text">{text}</p>
                            <p class="hint">"Macro average [95% interval] of every run trained on a share of each task's training data (nested subsets, the budget scaled with the share, the same held-out examples); the leader at each size in bold; a dash where a merge did not run (of the merges, only the best on the full data runs at the smaller sizes). The chart is under Charts (curves)."</p>
                            <table class="compare" id="data-sizes">
                                <thead><tr><th>"run"</th>{sizes.iter().map(|h| view! { <th>{h.clone()}</th> }).collect_view()}</tr></thead>
                                <tbody>{size_table.into_iter().map(|(name, cells)| view! {
                                    <tr><td>{name}</td>{cells.into_iter().map(|c| match c {
                                        Some((text, lead)) => view! { <td class=if lead { "best" } else { "" }>{text}</td> }.into_any(),
                                        None => view! { <td>"—"</td> }.into_any(),
                                    }).collect_view()}</tr>
                                }).collect_view()}</tbody>
                            </table>
                        })
                    }
                    {
                        let (methods, method_table) = method_rows(&r);
                        let text = r.methods.as_ref().map(|m| m.text.clone()).unwrap_or_default();
                        (!methods.is_empty()).then(|| view! {
                            <h2>"Which adapter method where"</h2>
                            <p id="methods-text">{text}</p>
                            <p class="hint">{format!("Macro average of each row trained with each method under the same budget; after {}, the paired difference from it in points [95% interval] and its Holm-adjusted p. Green: significantly better than {0}; red: worse; grey: tied; plain: the data cannot tell. The chart is under Charts (methods).", methods[0])}</p>
                            <table class="compare" id="methods-table">
                                <thead><tr><th>"run"</th>{methods.iter().map(|h| view! { <th>{h.clone()}</th> }).collect_view()}<th>"use"</th></tr></thead>
                                <tbody>{method_table.into_iter().map(|row| view! {
                                    <tr><td>{row.run}</td>{row.cells.into_iter().map(|c| match c {
                                        Some((text, class)) => view! { <td class=class>{text}</td> }.into_any(),
                                        None => view! { <td>"—"</td> }.into_any(),
                                    }).collect_view()}<td title=row.reason><strong>{row.choice}</strong></td></tr>
                                }).collect_view()}</tbody>
                            </table>
                        })
                    }
                    <h2>"Charts"</h2>
                    <p class="hint">"Open a chart (its link) to read every value on hover."</p>
                    <div class="charts">
                        {charts.get().into_iter().filter(|c| c.ends_with(".svg")).map(|c| {
                            let src = api::url(&format!("/api/experiments/{id}/charts/{c}"));
                            view! { <figure><img src=src.clone() alt=c.trim_end_matches(".svg").replace('-', " ") /><figcaption><a href=src download>{c.clone()}</a></figcaption></figure> }
                        }).collect_view()}
                    </div>
                    {sim.map(|sim| {
                        let names = sim.tasks.clone();
                        view! {
                            <h2>"Task similarity"</h2>
                            <p>"Cosine of the per-task adapter deltas / TIES sign-conflict rate."</p>
                            <table class="similarity">
                                <thead><tr><th></th>{names.iter().map(|n| view! { <th>{n.clone()}</th> }).collect_view()}</tr></thead>
                                <tbody>{names.iter().enumerate().map(|(i, n)| view! {
                                    <tr><th>{n.clone()}</th>{(0..names.len()).map(|j| view! {
                                        <td>{format!("{:.3} / {:.2}", sim.cosine[i][j], sim.sign_conflict[i][j])}</td>
                                    }).collect_view()}</tr>
                                }).collect_view()}</tbody>
                            </table>
                        }
                    })}
                    <h2>"Cost"</h2>
                    <table class="cost">
                        <thead><tr><th>"run"</th><th>"learning rate"</th><th>"searches"</th><th>"tokens"</th><th>"wall"</th><th>"trainable"</th><th>"exported"</th><th>"adapter"</th><th>"peak memory"</th></tr></thead>
                        <tbody>{r.runs.iter().filter(|x| !x.is_base()).map(|x| view! {
                            <tr>
                                <td>{x.name.clone()}</td>
                                <td>{format::learning_rate(x.learning_rate)}</td>
                                <td>{search_text(x)}</td>
                                <td>{x.tokens}</td>
                                <td>{format::duration(x.wall_s)}</td>
                                <td>{format::count(x.trainable_params as u64)}</td>
                                <td>{format::count(x.exported_params as u64)}</td>
                                <td>{format::bytes(x.adapter_bytes)}</td>
                                <td>{x.peak_rss_mib.map(|m| format!("{m:.0} MiB")).unwrap_or_default()}</td>
                            </tr>
                        }).collect_view()}</tbody>
                    </table>
                    {r.retention_seconds().map(|s| view! {
                        <p class="hint">{format!("The retention probe took {} in all: the base model's answers and every run's measurement (once per sequential stage).", format::duration(s))}</p>
                    })}
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
