//! Supervised fine-tuning: the loop ([`trainer`]) over any [`Objective`], AdamW with the
//! warm-up + cosine schedule and gradient clipping ([`optim`]), and step checkpoints
//! that resume bit-for-bit on the CPU.
//!
//! Progress goes out as [`TrainEvent`]s through a callback; the trainer knows nothing
//! of terminals or HTTP.

pub mod optim;
pub mod trainer;

pub use trainer::{
    batch_hidden, batch_indices, batch_loss, checkpoint_path, encode_all, train, train_objective, CheckpointPlan,
    Objective, StepStats, TrainConfig, TrainEvent, TrainSummary, GROUP_BUCKET, GROUP_WINDOW,
};
