//! Playground: prompt any finished run for any task, base model and tuned side by side.

use leptos::prelude::*;
use multitune_api::{ApiError, Experiment, PlaygroundChunk, PlaygroundRequest, Status};

use crate::api::answer_of;
use crate::{api, ErrorView};

#[component]
pub fn PlaygroundPage() -> impl IntoView {
    let exps = RwSignal::new(Vec::<Experiment>::new());
    leptos::task::spawn_local(async move {
        if let Ok(v) = api::get::<Vec<Experiment>>("/api/experiments").await {
            exps.set(v.into_iter().filter(|e| e.status == Status::Done).collect());
        }
    });
    let exp_id = RwSignal::new(String::new());
    let run_id = RwSignal::new(String::new());
    let task = RwSignal::new(String::new());
    let prompt = RwSignal::new(String::new());
    let base_out = RwSignal::new(None::<Result<PlaygroundChunk, ApiError>>);
    let tuned_out = RwSignal::new(None::<Result<PlaygroundChunk, ApiError>>);
    let current = move || exps.get().into_iter().find(|e| e.id == exp_id.get());
    let ask = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let req = PlaygroundRequest {
            experiment: exp_id.get(),
            run: None,
            task: Some(task.get()).filter(|t| !t.is_empty()),
            prompt: prompt.get(),
            max_new_tokens: 64,
            temperature: 0.0,
        };
        let tuned = PlaygroundRequest { run: run_id.get().parse().ok(), ..req.clone() };
        base_out.set(None);
        tuned_out.set(None);
        leptos::task::spawn_local(async move {
            for (r, out) in [(req, base_out), (tuned, tuned_out)] {
                let got = api::post_text("/api/playground", &r).await.and_then(|t| {
                    answer_of(&t).ok_or_else(|| ApiError {
                        code: "empty".into(),
                        message: "no answer".into(),
                        details: vec![],
                    })
                });
                out.set(Some(got));
            }
        });
    };
    let show = |out: RwSignal<Option<Result<PlaygroundChunk, ApiError>>>| {
        move || {
            match out.get() {
            None => view! { <p class="empty">"—"</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            Some(Ok(c)) => view! {
                <pre class="answer">{c.text.clone()}</pre>
                <ul>{c.labels.iter().map(|(l, p)| view! { <li>{format!("{l}: {:.1}%", 100.0 * p)}</li> }).collect_view()}</ul>
            }.into_any(),
        }
        }
    };
    view! {
        <h1>"Playground"</h1>
        <form on:submit=ask>
            <label for="pg-exp">"Experiment"</label>
            <select id="pg-exp" on:change=move |ev| { exp_id.set(event_target_value(&ev)); run_id.set(String::new()); }>
                <option value="">"choose a finished experiment"</option>
                {move || exps.get().into_iter().map(|e| view! { <option value=e.id.clone()>{e.name.clone()}</option> }).collect_view()}
            </select>
            <label for="pg-run">"Run"</label>
            <select id="pg-run" on:change=move |ev| run_id.set(event_target_value(&ev))>
                <option value="">"choose a run"</option>
                {move || current().map(|e| e.runs.into_iter().filter(|r| r.has_adapter).map(|r| view! {
                    <option value=r.id.to_string()>{r.name.clone()}</option>
                }).collect_view())}
            </select>
            <label for="pg-task">"Task (picks a routed adapter or a multi-head head)"</label>
            <input id="pg-task" prop:value=move || task.get() on:input=move |ev| task.set(event_target_value(&ev)) />
            <label for="pg-prompt">"Prompt"</label>
            <textarea id="pg-prompt" rows="4" prop:value=move || prompt.get() on:input=move |ev| prompt.set(event_target_value(&ev))></textarea>
            <button type="submit" disabled=move || exp_id.get().is_empty() || prompt.get().trim().is_empty()>"Ask both"</button>
        </form>
        <div class="side-by-side">
            <section><h2>"Base model"</h2>{show(base_out)}</section>
            <section><h2>"Tuned"</h2>{show(tuned_out)}</section>
        </div>
    }
}
