//! Compare: the report — recommendation, per-task table with intervals, charts (drawn
//! by the server's plotters report code), forgetting matrices, task similarity, cost —
//! and exports.

use leptos::prelude::*;
use multitune_api::report::Report;
use multitune_api::ApiError;

use super::route_id;
use crate::report_view::{lr_search_text, pair_matrix, plain, score_rows, size_rows, task_standings};
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
                    {
                        let (sizes, size_table) = size_rows(&r);
                        let text = r.data_sizes.as_ref().map(|d| d.text.clone()).unwrap_or_default();
                        (!sizes.is_empty()).then(|| view! {
                            <h2>"When the winner changes (data size)"</h2>
                            <p id="data-sizes-text">{text}</p>
                            <p class="hint">"Macro average [95% interval] of every run trained on a share of each task's training data (nested subsets, the budget scaled with the share, the same held-out examples); the leader at each size in bold. The chart is under Charts (curves)."</p>
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
                    <h2>"Charts"</h2>
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
                        <thead><tr><th>"run"</th><th>"learning rate"</th><th>"lr search"</th><th>"tokens"</th><th>"wall"</th><th>"trainable"</th><th>"exported"</th><th>"adapter"</th><th>"peak memory"</th></tr></thead>
                        <tbody>{r.runs.iter().filter(|x| !x.is_base()).map(|x| view! {
                            <tr>
                                <td>{x.name.clone()}</td>
                                <td>{format::learning_rate(x.learning_rate)}</td>
                                <td>{lr_search_text(x.lr_search.as_ref())}</td>
                                <td>{x.tokens}</td>
                                <td>{format::duration(x.wall_s)}</td>
                                <td>{format::count(x.trainable_params as u64)}</td>
                                <td>{format::count(x.exported_params as u64)}</td>
                                <td>{format::bytes(x.adapter_bytes)}</td>
                                <td>{x.peak_rss_mib.map(|m| format!("{m:.0} MiB")).unwrap_or_default()}</td>
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
