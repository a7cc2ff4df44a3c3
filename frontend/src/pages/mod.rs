//! One module per page.

pub mod compare;
pub mod datasets;
pub mod downloads;
pub mod experiment;
pub mod experiments;
pub mod models;
pub mod new_experiment;
pub mod playground;

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

/// The `:id` of the current route.
pub fn route_id() -> Memo<String> {
    let params = use_params_map();
    Memo::new(move |_| params.read().get("id").unwrap_or_default())
}
