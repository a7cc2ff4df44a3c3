//! What is done with trained LoRA adapters (the adapter itself, the layer the decoder
//! applies, is [`crate::model::lora`]): their PEFT on-disk layout ([`peft`]) and merging
//! several into one ([`merge`]).

pub mod merge;
pub mod peft;

pub use merge::MergeMethod;
