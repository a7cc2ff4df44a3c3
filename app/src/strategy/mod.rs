//! The four answers to "how do I train one model for many tasks?", run under one token
//! budget and compared: combined (one adapter on a mixture), sequential (task after
//! task, continuing one adapter or merging into the base between tasks, with optional
//! replay), separate (one adapter per task, scored routed and merged) and multi-head (a
//! shared adapter plus a head per task). The report says which wins, per task and
//! overall, at what cost.
//!
//! [`request`] turns what users ask for (the `multitune_api` contract, for the CLI and
//! the server alike) into [`StrategySpec`]s and a [`CompareConfig`], [`compare()`] runs
//! them, one module per strategy ([`lr_search`] first picks each one's learning rate
//! when asked — and, on the same successive halving, a mixture's task mixing —;
//! [`merge_search`] tunes the separate strategy's merges when asked; [`heads`] is the multi-head strategy's model: its per-task heads, their
//! training objective, inference and files; [`sizes`] cuts the training sets for the
//! data-size curves), and [`report`] and [`charts`] present the result.

pub mod charts;
mod combined;
pub mod compare;
mod context;
pub mod heads;
pub mod lr_search;
pub mod merge_search;
pub mod mixing;
mod multi_head;
pub mod report;
pub mod request;
pub mod separate;
mod sequential;
pub mod sizes;
pub mod spec;
pub mod task;

pub use compare::{compare, compare_part, part_records, Part};
pub use context::{slug, Base, CompareEvent, Control, KEEP_STAGE};
pub use mixing::Mixing;
pub use report::{Report, RunCost, RunResult, TaskScore};
pub use request::compare_config;
pub use spec::{strategy_problems, CompareConfig, SequentialVariant, StrategySpec};
pub use task::{HeldOut, TaskData};
