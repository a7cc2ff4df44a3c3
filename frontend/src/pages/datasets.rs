//! Datasets: drag-and-drop or pick a file to upload (with progress), see validation
//! errors by line, list, inspect (summary, labels, preview) and delete.

use leptos::prelude::*;
use multitune_api::{ApiError, Dataset, DatasetDetail};

use super::route_id;
use crate::{api, format, ErrorView};

#[component]
pub fn DatasetsPage() -> impl IntoView {
    let list = RwSignal::new(None::<Result<Vec<Dataset>, ApiError>>);
    let reload = move || leptos::task::spawn_local(async move { list.set(Some(api::get("/api/datasets").await)) });
    reload();
    let progress = RwSignal::new(None::<f64>);
    let outcome = RwSignal::new(None::<Result<Dataset, ApiError>>);
    let send = move |file: web_sys::File| {
        progress.set(Some(0.0));
        outcome.set(None);
        api::upload(
            file,
            move |p| progress.set(Some(p)),
            move |r| {
                progress.set(None);
                outcome.set(Some(r));
                reload();
            },
        );
    };
    let on_pick = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        if let Some(f) = input.files().and_then(|l| l.get(0)) {
            send(f);
        }
        input.set_value("");
    };
    let dragging = RwSignal::new(false);
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        dragging.set(false);
        if let Some(f) = ev.data_transfer().and_then(|d| d.files()).and_then(|l| l.get(0)) {
            send(f);
        }
    };
    let remove = move |id: String| {
        leptos::task::spawn_local(async move {
            if let Err(e) = api::delete(&format!("/api/datasets/{id}")).await {
                outcome.set(Some(Err(e)));
            }
            reload();
        })
    };
    view! {
        <h1>"Datasets"</h1>
        <p>"One file per task: JSONL, a JSON array, CSV or Parquet (what Hugging Face datasets write) in prompt/completion, Alpaca, chat, ShareGPT or text/label form."</p>
        <div class=move || if dragging.get() { "drop active" } else { "drop" }
            on:dragover=move |ev: leptos::ev::DragEvent| { ev.prevent_default(); dragging.set(true); }
            on:dragleave=move |_| dragging.set(false)
            on:drop=on_drop>
            <label for="file">"Drop a dataset here, or choose a file: "</label>
            <input id="file" type="file" accept=".jsonl,.json,.csv,.parquet" on:change=on_pick />
        </div>
        {move || progress.get().map(|p| view! {
            <div class="upload"><progress max="1" value=p.to_string()></progress>" uploading " {format::percent(p)}</div>
        })}
        {move || match outcome.get() {
            Some(Ok(d)) => view! {
                <p class="ok" role="status">{format!("Added “{}”: {} {} examples.", d.name, d.rows, d.kind)}</p>
            }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            None => ().into_any(),
        }}
        {move || match list.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            Some(Ok(v)) if v.is_empty() => view! { <p class="empty">"No datasets yet: upload one above."</p> }.into_any(),
            Some(Ok(v)) => view! {
                <table class="datasets">
                    <thead><tr><th>"task"</th><th>"kind"</th><th>"format"</th><th>"rows"</th><th>"labels"</th><th>"size"</th><th></th></tr></thead>
                    <tbody>
                    {v.into_iter().map(|d| {
                        let id = d.id.clone();
                        view! {
                            <tr>
                                <td><a href=format!("/datasets/{}", d.id)>{d.name.clone()}</a></td>
                                <td>{d.kind.clone()}</td>
                                <td>{d.format.clone()}</td>
                                <td>{d.rows}</td>
                                <td>{d.labels.join(", ")}</td>
                                <td>{format::bytes(d.bytes)}</td>
                                <td><button class="danger" aria-label=format!("delete {}", d.name)
                                    on:click=move |_| remove(id.clone())>"Delete"</button></td>
                            </tr>
                        }
                    }).collect_view()}
                    </tbody>
                </table>
            }.into_any(),
        }}
    }
}

#[component]
pub fn DatasetPage() -> impl IntoView {
    let id = route_id();
    let detail = RwSignal::new(None::<Result<DatasetDetail, ApiError>>);
    Effect::new(move |_| {
        let id = id.get();
        leptos::task::spawn_local(async move { detail.set(Some(api::get(&format!("/api/datasets/{id}")).await)) });
    });
    view! {
        {move || match detail.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            Some(Ok(d)) => view! {
                <h1>{d.dataset.name.clone()}</h1>
                <p>{format!("{} · {} · {} examples · {} · from {}", d.dataset.kind, d.dataset.format, d.dataset.rows,
                    format::bytes(d.dataset.bytes), d.dataset.filename)}</p>
                <p>{format!("Prompt length: mean {:.0}, max {} characters. Completion: mean {:.0}, max {}.",
                    d.prompt_chars.0, d.prompt_chars.1, d.completion_chars.0, d.completion_chars.1)}</p>
                <ul class="warnings">{d.dataset.warnings.iter().map(|w| view! { <li>{w.clone()}</li> }).collect_view()}</ul>
                <Show when={let n = d.label_counts.len(); move || n > 0}>
                    <h2>"Labels"</h2>
                </Show>
                <ul>{d.label_counts.iter().map(|(l, n)| view! { <li>{format!("{l}: {n}")}</li> }).collect_view()}</ul>
                <h2>"Preview"</h2>
                <table class="preview">
                    <thead><tr><th>"line"</th><th>"prompt"</th><th>"completion"</th></tr></thead>
                    <tbody>{d.preview.iter().map(|r| view! {
                        <tr><td>{r.line}</td><td class="text">{r.prompt.clone()}</td><td class="text">{r.completion.clone()}</td></tr>
                    }).collect_view()}</tbody>
                </table>
            }.into_any(),
        }}
    }
}
