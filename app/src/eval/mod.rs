//! Scoring: a task's held-out examples with the metric that fits it ([`task`]: label
//! ranking by log-likelihood for classification, greedy decoding for generation, loss
//! everywhere), text generation with a KV cache ([`generate`]), the metrics with their
//! bootstrap intervals ([`metrics`]), and what a tuned model keeps of the base model
//! ([`retention`]).

pub mod generate;
pub mod metrics;
pub mod retention;
pub mod task;

pub use metrics::normalize_answer;
pub use task::{
    classification_metrics, completion_loss, completion_nll, evaluate_task, generation_batches, label_log_likelihoods,
    label_token_ids, token_batches, EvalOptions, Fill, Prediction, TaskEval, GENERATION_BATCH_TOKENS,
    SCORING_BATCH_TOKENS,
};
