//! Entry point: mounts the dashboard.

fn main() {
    console_error_panic_hook::set_once();
    multitune_ui::api::adopt_url_token();
    leptos::mount::mount_to_body(multitune_ui::App);
}
