//! Models: the default model, the tiny test model, models found in the models folder,
//! and registering a local GGUF file or Hugging Face folder.

use leptos::prelude::*;
use multitune_api::{ApiError, Model, RegisterModel};

use crate::{api, ErrorView};

#[component]
pub fn ModelsPage() -> impl IntoView {
    let list = RwSignal::new(None::<Result<Vec<Model>, ApiError>>);
    let reload = move || leptos::task::spawn_local(async move { list.set(Some(api::get("/api/models").await)) });
    reload();
    let path = RwSignal::new(String::new());
    let name = RwSignal::new(String::new());
    let error = RwSignal::new(None::<ApiError>);
    let register = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let req = RegisterModel { path: path.get(), name: Some(name.get()).filter(|n| !n.is_empty()) };
        leptos::task::spawn_local(async move {
            match api::post::<_, Model>("/api/models", &req).await {
                Ok(_) => {
                    error.set(None);
                    path.set(String::new());
                    name.set(String::new());
                    reload();
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <h1>"Models"</h1>
        {move || match list.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            Some(Ok(v)) => view! {
                <table>
                    <thead><tr><th>"name"</th><th>"kind"</th><th>"where"</th><th>"found"</th><th>"ready"</th></tr></thead>
                    <tbody>{v.into_iter().map(|m| view! {
                        <tr>
                            <td>{m.name}</td><td>{m.kind}</td><td class="text">{m.path.unwrap_or_else(|| "built in".into())}</td>
                            <td>{m.source}</td><td>{if m.available { "yes" } else { "not yet fetched" }}</td>
                        </tr>
                    }).collect_view()}</tbody>
                </table>
            }.into_any(),
        }}
        <h2>"Add a local model"</h2>
        <form on:submit=register>
            <label for="model-path">"Absolute path of a .gguf file or a Hugging Face folder"</label>
            <input id="model-path" required prop:value=move || path.get() on:input=move |ev| path.set(event_target_value(&ev)) />
            <label for="model-name">"Name (optional)"</label>
            <input id="model-name" prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev)) />
            <button type="submit">"Add"</button>
        </form>
        {move || error.get().map(|e| view! { <ErrorView error=e/> })}
    }
}
