//! End-to-end tests of the engine, the `multitune` CLI and the `multitune-server`
//! service, in one test binary.
//! Tests that need the default model expect it in `models/` (`make model`) or in
//! `$MULTITUNE_MODELS`; they fail, not skip, when it is missing.

// The module graph of the engine and the server has no cycle.
mod architecture;

// Shared helpers: locating the model and the binary, building small tasks, a small disk.
mod util;

// The HTTP service as a process: start, upload, follow events.
mod http;

// LoRA against its definition: zero B, merge/unmerge, finite-difference gradients.
mod lora_math;

// The default model against candle-transformers' implementation, its chat answer, and
// the Hugging Face folder loader.
mod reference;

// Hugging Face folders of other architectures against candle-transformers: Llama 3
// rope scaling, Qwen2 biases; sharded checkpoints.
mod hf_models;

// Datasets: the malformed corpus in tests/fixtures, limits.
mod datasets;

// Training: overfitting, exact resume, accumulation, a real fine-tune of the default model.
mod training;

// The retention probe against a direct computation of its KL and real greedy decoding.
mod retention;

// Strategies: every strategy end to end on the tiny model, budgets, report sections,
// forgetting.
mod strategies;

// One comparison as CLI flags and as the server's JSON: equal strategies and configs.
mod specs;

// PEFT export: names, shapes, config keys, exact round trip, rope-layout permutation.
mod peft_export;

// GGUF export (f16, q8_0, LoRA) against our loader and quantized_llama.
mod gguf_export;

// The command line, as a user runs it.
mod cli;

// The HTTP service as a process: the whole journey, SSE reconnects, kill -9 and resume,
// path traversal, malformed and oversize uploads.
mod server;

// The dashboard in headless Chromium (WebDriver from Rust): upload, train, watch,
// compare, download; screenshots of every page into target/screenshots.
mod browser;

// A private PostgreSQL cluster for the distributed mode's tests.
mod pg;

// The distributed mode: the queue's leases and fencing; server and workers as processes,
// killed and stopped mid-run.
mod cluster;
