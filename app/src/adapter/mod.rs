//! Everything trained on top of the frozen base: LoRA adapters ([`lora`]), their PEFT
//! on-disk layout ([`peft`]), merging several into one ([`merge`]), and the multi-head
//! strategy's per-task heads with their inference ([`heads`]).
//!
//! An adapter only knows the model's configuration (shapes, names); the decoder applies
//! it through [`crate::model::Forward`].

pub mod heads;
pub mod lora;
pub mod merge;
pub mod peft;

pub use lora::{parse_targets, LoraAdapter, LoraConfig, LoraPair, Target};
pub use merge::MergeMethod;
