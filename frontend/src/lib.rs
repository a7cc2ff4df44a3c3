//! Multitune's dashboard: bring task datasets, choose strategies, train, watch, compare,
//! and take the adapters home — without a terminal. Client-side rendered with Leptos;
//! every request goes through [`api`].

pub mod api;
pub mod chart;
pub mod format;
pub mod forms;
#[cfg(feature = "app")]
pub mod pages;
pub mod report_view;

#[cfg(feature = "app")]
mod app;
#[cfg(feature = "app")]
pub use app::*;
