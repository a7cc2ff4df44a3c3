//! The dashboard's shell: the router, the token banner, the device badge, the shared
//! error view (built with the `app` feature).

use leptos::prelude::*;
use leptos_router::components::{Route, Router, Routes, A};
use leptos_router::path;

use crate::{api, pages};

/// Shows an API error with its details (e.g. one line per bad dataset line).
#[component]
pub fn ErrorView(error: multitune_api::ApiError) -> impl IntoView {
    view! {
        <div class="error" role="alert">
            <strong>{error.message.clone()}</strong>
            <ul>{error.details.iter().map(|d| view! { <li>{d.clone()}</li> }).collect_view()}</ul>
        </div>
    }
}

/// Asks once for the access token when the server wants one (`version`: the server's
/// `/api/version`, once read).
#[component]
fn TokenBanner(version: RwSignal<Option<multitune_api::Version>>) -> impl IntoView {
    let needed = RwSignal::new(false);
    Effect::new(move |_| {
        if version.get().is_some_and(|v| v.auth) && api::token().is_none() {
            needed.set(true);
        }
    });
    let value = RwSignal::new(String::new());
    view! {
        <Show when=move || needed.get()>
            <form class="token" on:submit=move |ev| {
                ev.prevent_default();
                api::set_token(&value.get());
                needed.set(false);
                let _ = web_sys::window().map(|w| w.location().reload());
            }>
                <label for="token">"This server needs an access token: "</label>
                <input id="token" type="password" prop:value=move || value.get()
                    on:input=move |ev| value.set(event_target_value(&ev)) />
                <button type="submit">"Save"</button>
            </form>
        </Show>
    }
}

/// The device that runs the jobs (`GPU cuda:0: NVIDIA H200, 140.4 GiB` or the CPU's
/// model, threads and memory), from the server's `/api/version`.
#[component]
fn DeviceBadge(version: RwSignal<Option<multitune_api::Version>>) -> impl IntoView {
    move || {
        version.get().and_then(|v| v.device_info).map(|d| {
            let kind = if d.threads.is_some() { "device cpu" } else { "device gpu" };
            view! { <span class=kind title="the device that trains and scores">{d.summary}</span> }
        })
    }
}

/// The application: navigation and pages.
#[component]
pub fn App() -> impl IntoView {
    // Read once for the header and the token banner.
    let version = RwSignal::new(None::<multitune_api::Version>);
    leptos::task::spawn_local(async move {
        if let Ok(v) = api::get::<multitune_api::Version>("/api/version").await {
            version.set(Some(v));
        }
    });
    view! {
        <Router>
            <header>
                <a class="brand" href="/">"Multitune"</a>
                <nav aria-label="main">
                    <A href="/datasets">"Datasets"</A>
                    <A href="/models">"Models"</A>
                    <A href="/new">"New experiment"</A>
                    <A href="/experiments">"Experiments"</A>
                    <A href="/playground">"Playground"</A>
                </nav>
                <DeviceBadge version/>
            </header>
            <TokenBanner version/>
            <main>
                <Routes fallback=|| view! { <p>"No such page."</p> }>
                    <Route path=path!("/") view=pages::experiments::ExperimentsPage/>
                    <Route path=path!("/datasets") view=pages::datasets::DatasetsPage/>
                    <Route path=path!("/datasets/:id") view=pages::datasets::DatasetPage/>
                    <Route path=path!("/models") view=pages::models::ModelsPage/>
                    <Route path=path!("/new") view=pages::new_experiment::NewExperimentPage/>
                    <Route path=path!("/experiments") view=pages::experiments::ExperimentsPage/>
                    <Route path=path!("/experiments/:id") view=pages::experiment::ExperimentPage/>
                    <Route path=path!("/experiments/:id/compare") view=pages::compare::ComparePage/>
                    <Route path=path!("/experiments/:id/downloads") view=pages::downloads::DownloadsPage/>
                    <Route path=path!("/playground") view=pages::playground::PlaygroundPage/>
                </Routes>
            </main>
        </Router>
    }
}
