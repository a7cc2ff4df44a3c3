//! The experiments list (also the home page).

use leptos::prelude::*;
use multitune_api::{ApiError, Experiment};

use crate::{api, ErrorView};

#[component]
pub fn ExperimentsPage() -> impl IntoView {
    let list = RwSignal::new(None::<Result<Vec<Experiment>, ApiError>>);
    leptos::task::spawn_local(async move { list.set(Some(api::get("/api/experiments").await)) });
    view! {
        <h1>"Experiments"</h1>
        <p><a class="button" href="/new">"New experiment"</a></p>
        {move || match list.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e/> }.into_any(),
            Some(Ok(v)) if v.is_empty() => view! {
                <p class="empty">"No experiments yet. Upload task datasets, then start one."</p>
            }.into_any(),
            Some(Ok(v)) => view! {
                <table>
                    <thead><tr><th>"name"</th><th>"status"</th><th>"model"</th><th>"tasks"</th><th>"strategies"</th><th>"created"</th><th></th></tr></thead>
                    <tbody>{v.into_iter().map(|e| view! {
                        <tr>
                            <td><a href=format!("/experiments/{}", e.id)>{e.name.clone()}</a></td>
                            <td class=format!("status {}", e.status.as_str())>{e.status.as_str()}</td>
                            <td>{e.spec.model.clone()}</td>
                            <td>{e.spec.tasks.len()}</td>
                            <td>{e.spec.strategies.len()}</td>
                            <td>{e.created_at.clone()}</td>
                            <td>{e.has_report.then(|| view! { <a href=format!("/experiments/{}/compare", e.id)>"compare"</a> })}</td>
                        </tr>
                    }).collect_view()}</tbody>
                </table>
            }.into_any(),
        }}
    }
}
