//! An experiment, live: loss curves of every run updating over server-sent events, a
//! progress bar, ETA and throughput per run, the queue position, cancel and resume.

use leptos::prelude::*;
use multitune_api::{ApiError, Event, Experiment, Run, Status};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::route_id;
use crate::chart::{legend, loss_svg, Curves};
use crate::{api, format, ErrorView};

/// Applies a live event to the experiment's runs (progress without a round trip).
pub fn apply(e: &mut Experiment, ev: &Event) {
    match ev {
        Event::Status { status, message } => {
            e.status = *status;
            e.error = message.clone();
        }
        Event::RunStarted { run, index, .. } => {
            if !e.runs.iter().any(|r| &r.name == run) {
                e.runs.push(Run::started(&e.id, run, *index));
            }
        }
        Event::Step { run, stage, step, total_steps, loss, tokens_per_s, elapsed_s, .. } => {
            if let Some(r) = e.runs.iter_mut().find(|r| &r.name == run) {
                r.status = Status::Running;
                r.stage = Some(stage.clone());
                r.step = *step;
                r.total_steps = *total_steps;
                r.loss = Some(*loss);
                r.tokens_per_s = Some(*tokens_per_s);
                r.elapsed_s = *elapsed_s;
                r.eta_s =
                    (*step > 0 && total_steps > step).then(|| elapsed_s / *step as f64 * (total_steps - step) as f64);
            }
        }
        Event::RunFinished { run, .. } => {
            if let Some(r) = e.runs.iter_mut().find(|r| &r.name == run) {
                r.status = Status::Done;
                r.eta_s = None;
            }
        }
        Event::TrainStarted { .. } | Event::Notice { .. } | Event::Evaluated { .. } => {}
    }
}

/// The live Experiment page. One component on purpose: the event stream, the curves and
/// the run table share its signals, and most of its length is `view!` markup; the
/// stream parsing and chart shaping live in `api.rs` and `chart.rs`, tested natively.
#[component]
pub fn ExperimentPage() -> impl IntoView {
    let id = route_id();
    let exp = RwSignal::new(None::<Result<Experiment, ApiError>>);
    let curves = RwSignal::new(Curves::default());
    let scores = RwSignal::new(Vec::<(String, String, String, f64)>::new());
    // Notices of the runs (out of GPU memory: continuing with smaller passes).
    let notices = RwSignal::new(Vec::<String>::new());
    let action_error = RwSignal::new(None::<ApiError>);
    // The runs the experiment trains in all (every strategy at every data size and
    // seed), from its events.
    let planned = RwSignal::new(None::<usize>);
    let source = StoredValue::new_local(None::<web_sys::EventSource>);
    let refresh = move || {
        let id = id.get_untracked();
        leptos::task::spawn_local(async move { exp.set(Some(api::get(&format!("/api/experiments/{id}")).await)) });
    };
    Effect::new(move |_| {
        let id = id.get();
        curves.set(Curves::default());
        planned.set(None);
        scores.set(vec![]);
        notices.set(vec![]);
        exp.set(None);
        leptos::task::spawn_local(async move {
            let loaded = api::get::<Experiment>(&format!("/api/experiments/{id}")).await;
            let ok = loaded.is_ok();
            exp.set(Some(loaded));
            if !ok {
                return;
            }
            let Ok(es) = web_sys::EventSource::new(&api::url(&format!("/api/experiments/{id}/events"))) else { return };
            let es2 = es.clone();
            let on_event = Closure::<dyn Fn(web_sys::MessageEvent)>::new(move |m: web_sys::MessageEvent| {
                let Some(data) = m.data().as_string() else { return };
                let Ok(ev) = serde_json::from_str::<Event>(&data) else { return };
                curves.update(|c| c.push(&ev));
                if let Event::Evaluated { run, stage, task, value } = &ev {
                    scores.update(|s| s.push((run.clone(), stage.clone(), task.clone(), *value)));
                }
                if let Event::Notice { run, stage, message } = &ev {
                    notices.update(|n| n.push(format!("{run} ({stage}): {message}")));
                }
                exp.update(|e| {
                    if let Some(Ok(e)) = e {
                        apply(e, &ev);
                    }
                });
                if let Event::RunStarted { of, .. } = ev {
                    planned.set(Some(of));
                    // The server's row names the run's worker (distributed mode).
                    refresh();
                }
                if let Event::Status { status, .. } = ev {
                    if status.is_final() {
                        // The server ends the stream here; do not let the browser reconnect.
                        es2.close();
                        refresh();
                    }
                }
            });
            for kind in Event::KINDS {
                let _ = es.add_event_listener_with_callback(kind, on_event.as_ref().unchecked_ref());
            }
            on_event.forget();
            source.update_value(|s| {
                if let Some(old) = s.replace(es) {
                    old.close();
                }
            });
        });
    });
    on_cleanup(move || {
        source.update_value(|s| {
            if let Some(es) = s.take() {
                es.close();
            }
        })
    });
    let act = move |what: &'static str| {
        let id = id.get_untracked();
        leptos::task::spawn_local(async move {
            match api::post_empty::<Experiment>(&format!("/api/experiments/{id}/{what}")).await {
                Ok(e) => {
                    action_error.set(None);
                    exp.set(Some(Ok(e)));
                    if what == "resume" {
                        let _ = web_sys::window().map(|w| w.location().reload());
                    }
                }
                Err(e) => action_error.set(Some(e)),
            }
        });
    };
    view! {
        {move || match exp.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            Some(Ok(e)) => {
                let running = matches!(e.status, Status::Queued | Status::Running);
                let resumable = matches!(e.status, Status::Interrupted | Status::Cancelled | Status::Failed);
                // The distributed mode names the worker (and attempt) of each run.
                let workers = e.runs.iter().any(|r| r.worker.is_some());
                let e_runs = e.runs.clone();
                view! {
                    <h1>{e.name.clone()}</h1>
                    <p>
                        <span class=format!("status {}", e.status.as_str()) id="status">{e.status.as_str()}</span>
                        {e.queue_position.map(|q| format!(" — {q} experiment(s) ahead in the queue"))}
                        {format!(" · model {} · {} tasks · {} tokens per strategy", e.spec.model, e.spec.tasks.len(), e.spec.budget_tokens)}
                        {move || planned.get().map(|n| view! { " · " <span id="runs-trained">{format::runs_trained(&e_runs, n)}</span> })}
                    </p>
                    {e.error.clone().map(|m| view! { <p class="error">{m}</p> })}
                    <p class="actions">
                        <Show when=move || running><button class="danger" on:click=move |_| act("cancel")>"Cancel"</button></Show>
                        <Show when=move || resumable><button on:click=move |_| act("resume")>"Resume"</button></Show>
                        <Show when={let r = e.has_report; move || r}>
                            <a class="button" href=format!("/experiments/{}/compare", e.id)>"Compare results"</a>
                            <a class="button" href=format!("/experiments/{}/downloads", e.id)>"Downloads"</a>
                        </Show>
                    </p>
                    <table class="runs">
                        <thead><tr><th>"run"</th><th>"status"</th><th>"stage"</th><th>"progress"</th><th>"loss"</th><th>"tokens/s"</th><th>"ETA"</th>{workers.then(|| view! { <th>"worker"</th> })}</tr></thead>
                        <tbody>{e.runs.iter().filter(|r| r.index < multitune_api::REPORT_ONLY_RUN_INDEX).map(|r| view! {
                            <tr>
                                <td>{r.name.clone()}</td>
                                <td>{r.status.as_str()}</td>
                                <td>{r.stage.clone().unwrap_or_default()}</td>
                                <td><progress max=r.total_steps.max(1).to_string() value=r.step.to_string()></progress>
                                    {format!(" {}/{}", r.step, r.total_steps)}</td>
                                <td>{r.loss.map(|l| format!("{l:.3}")).unwrap_or_default()}</td>
                                <td>{r.tokens_per_s.map(|t| format!("{t:.0}")).unwrap_or_default()}</td>
                                <td>{r.eta_s.map(format::duration).unwrap_or_default()}</td>
                                {workers.then(|| view! { <td class="worker">{r.worker.as_ref().map(|w| {
                                    if w.attempt > 1 { format!("{} (attempt {})", w.name, w.attempt) } else { w.name.clone() }
                                })}</td> })}
                            </tr>
                        }).collect_view()}</tbody>
                    </table>
                }.into_any()
            }
        }}
        {move || action_error.get().map(|e| view! { <ErrorView error=e/> })}
        {move || (!notices.get().is_empty()).then(|| view! {
            <ul class="notices">{notices.get().into_iter().map(|n| view! { <li>{n}</li> }).collect_view()}</ul>
        })}
        <h2>"Training loss"</h2>
        <div class="chart" id="loss-chart" data-points=move || curves.get().len().to_string()
            inner_html=move || {
                let c = curves.get();
                if c.is_empty() { "<p class=\"empty\">No steps yet.</p>".to_string() } else { loss_svg("training loss", &c.series(), &c.stage_starts(), (900, 360)) }
            }>
        </div>
        <Legend entries=Signal::derive(move || legend(&curves.get().series()))/>
        {move || (!curves.get().tasks.is_empty()).then(|| view! {
            <h2>"Loss per task inside mixed runs"</h2>
            <p class="hint">"Combined and multi-head runs train on a mixture: each step's loss split by task, from the same forward pass (a task without an example in a step has no point there)."</p>
            <div class="chart" id="task-loss-chart" data-points=move || curves.get().task_len().to_string()
                inner_html=move || loss_svg("training loss per task", &curves.get().task_series(), &[], (900, 360))>
            </div>
            <Legend entries=Signal::derive(move || legend(&curves.get().task_series()))/>
        })}
        <h2>"Scores so far"</h2>
        <table class="scores">
            <thead><tr><th>"run"</th><th>"after"</th><th>"task"</th><th>"score"</th></tr></thead>
            <tbody>{move || scores.get().into_iter().map(|(r, s, t, v)| view! {
                <tr><td>{r}</td><td>{s}</td><td>{t}</td><td>{format::percent(v)}</td></tr>
            }).collect_view()}</tbody>
        </table>
    }
}

/// A chart's legend, beside it: each series' name after a swatch of its colour.
#[component]
fn Legend(entries: Signal<Vec<(String, String)>>) -> impl IntoView {
    view! {
        <ul class="legend">{move || entries.get().into_iter().map(|(name, color)| view! {
            <li><span class="swatch" style=format!("background: {color}")></span>{name}</li>
        }).collect_view()}</ul>
    }
}
