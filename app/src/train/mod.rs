//! Supervised fine-tuning: the loop ([`trainer`]) over any [`Objective`] ([`objective`]),
//! its configuration ([`config`]), which examples form each batch ([`batches`]), AdamW
//! with the warm-up + cosine schedule and gradient clipping ([`optim`]), step checkpoints
//! that resume bit-for-bit on the CPU ([`checkpoint`]), what a run reports
//! ([`events`]), and its curves as TensorBoard event files ([`tensorboard`]).
//!
//! Progress goes out as [`TrainEvent`]s through a callback; the trainer knows nothing
//! of terminals or HTTP.

pub mod batches;
pub mod checkpoint;
pub mod config;
pub mod events;
pub mod objective;
pub mod optim;
pub mod tensorboard;
pub mod trainer;

pub use batches::{batch_indices, GROUP_BUCKET, GROUP_WINDOW};
pub use checkpoint::{checkpoint_path, CheckpointPlan};
pub use config::TrainConfig;
pub use events::{StepStats, TrainEvent, TrainSummary};
pub use objective::{batch_loss, BatchLoss, GroupTerms, Objective};
pub use trainer::{encode_all, train, train_objective};
