//! Downloads: each run's adapter (PEFT), a multi-head run's heads, the merged model (a
//! Hugging Face folder, or GGUF for llama.cpp and Ollama when the base is a GGUF model),
//! and the whole experiment.

use leptos::prelude::*;
use multitune_api::{ApiError, Experiment, Model};

use super::route_id;
use crate::{api, ErrorView};

#[component]
pub fn DownloadsPage() -> impl IntoView {
    let id = route_id();
    let exp = RwSignal::new(None::<Result<Experiment, ApiError>>);
    Effect::new(move |_| {
        let id = id.get();
        leptos::task::spawn_local(async move { exp.set(Some(api::get(&format!("/api/experiments/{id}")).await)) });
    });
    let models = RwSignal::new(Vec::<Model>::new());
    leptos::task::spawn_local(async move {
        if let Ok(m) = api::get::<Vec<Model>>("/api/models").await {
            models.set(m);
        }
    });
    view! {
        <h1>"Downloads"</h1>
        <p>"Adapters are PEFT folders: load them with "<code>"PeftModel.from_pretrained(base, folder)"</code>
           " on HuggingFaceTB/SmolLM2-135M-Instruct (or your base). Merged models are Hugging Face folders; "
           "the GGUF zips hold the merged model for llama.cpp, Ollama and LM Studio, the adapter as a llama.cpp LoRA, and an Ollama Modelfile for each."</p>
        {move || match exp.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            Some(Ok(e)) => {
                let runs: Vec<_> = e.runs.iter().filter(|r| r.has_adapter).cloned().collect();
                // GGUF files carry the base GGUF's tokenizer: only for GGUF base models.
                let gguf_base = models
                    .with(|ms| ms.iter().any(|m| m.id == e.spec.model && (m.kind == "default" || m.kind == "gguf")));
                view! {
                    <p><a class="button" href=api::url(&format!("/api/experiments/{}/download", e.id))>"The whole experiment (zip)"</a></p>
                    {if runs.is_empty() {
                        view! { <p class="empty">"No adapters yet: they appear when the experiment finishes."</p> }.into_any()
                    } else {
                        view! {
                            <table class="downloads">
                                <thead><tr><th>"run"</th><th>"adapter"</th><th>"heads"</th><th>"merged model"</th>
                                    {gguf_base.then(|| view! { <th>"GGUF (llama.cpp, Ollama)"</th> })}</tr></thead>
                                <tbody>{runs.into_iter().map(|r| view! {
                                    <tr>
                                        <td>{r.name.clone()}</td>
                                        <td><a class="adapter" href=api::url(&format!("/api/runs/{}/adapter", r.id))>"PEFT adapter (zip)"</a></td>
                                        <td>{r.has_heads.then(|| view! { <a href=api::url(&format!("/api/runs/{}/heads", r.id))>"heads (zip)"</a> })}</td>
                                        <td>{(r.name != "separate (routed)").then(|| view! {
                                            <a href=api::url(&format!("/api/runs/{}/merged", r.id))>"merged (zip)"</a>
                                        })}</td>
                                        {gguf_base.then(|| view! { <td>{(r.name != "separate (routed)").then(|| view! {
                                            <a href=api::url(&format!("/api/runs/{}/gguf?type=f16", r.id))>"f16"</a>" · "
                                            <a href=api::url(&format!("/api/runs/{}/gguf?type=q8_0", r.id))>"q8_0"</a>
                                        })}</td> })}
                                    </tr>
                                }).collect_view()}</tbody>
                            </table>
                            {(!gguf_base).then(|| view! {
                                <p class="note">"GGUF: this experiment's base model is not a GGUF file, whose tokenizer and chat template a GGUF export carries; "
                                   "turn a merged model into GGUF with llama.cpp's "<code>"convert_hf_to_gguf.py"</code>"."</p>
                            })}
                        }.into_any()
                    }}
                }.into_any()
            }
        }}
    }
}
