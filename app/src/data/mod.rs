//! Task data, from a user's file to the model's batches: the accepted row formats
//! ([`formats`]; files: JSON lines or arrays, [`csv`], [`parquet`]), whole-file validation, task kinds, limits and splits
//! ([`dataset`]), rendering with the chat template, tokenising and batching
//! ([`example`]; the packing is [`crate::kernels::pack`]), and the reproducible demo
//! suite ([`demo`]).

pub mod csv;
pub mod dataset;
pub mod demo;
pub mod example;
pub mod formats;
pub mod parquet;

pub use dataset::{
    infer_kind, load, overlap_warning, parse, split_indices, task_name, tokenize, Dataset, Issue, Limits, LoadOptions,
    OverlongPolicy, Rejection, Split, TaskKind, TaskSpec, TokenReport, MAX_LISTED,
};
pub use example::{encode, make_batch, prompt_ids, render_prompt, render_record_prompt, Example, Record};
pub use formats::Format;
