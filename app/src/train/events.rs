//! What a training run reports as it goes ([`TrainEvent`], [`StepStats`]) and when it
//! ends ([`TrainSummary`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// 1-based step just finished.
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Mean completion-token loss of the step.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) tokens processed in the step.
    pub tokens: usize,
    /// Throughput since the run (or its resumption) started: real tokens per second over
    /// its steps so far. Not this step's own: a run's last step trains what is left of
    /// its budget, often a few dozen tokens, at a fraction of the rate of the others.
    pub tokens_per_s: f64,
    /// Seconds since the run (or its resumption) started.
    pub elapsed_s: f64,
    /// When the run's examples span several groups (a mixture's tasks): each group's
    /// mean loss in this step, from the same forward pass (groups without an example in
    /// the step are left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_losses: Vec<(usize, f64)>,
    /// The same, named: a comparison names each group by its task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_losses: Vec<(String, f64)>,
}

/// Progress of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    /// The run starts (or resumes at `start_step`).
    Started {
        /// Steps in the run.
        total_steps: usize,
        /// First step to run (0 unless resumed).
        start_step: usize,
        /// Trainable parameters.
        trainable_params: usize,
        /// Training examples.
        examples: usize,
    },
    /// A step finished.
    Step(StepStats),
    /// Something the user should know that changes how the run goes, not its result
    /// (running out of GPU memory and continuing with smaller forward passes).
    Notice {
        /// The step it happened in (1-based).
        step: usize,
        /// What happened and what was done.
        message: String,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Steps done at the checkpoint.
        step: usize,
        /// Where.
        path: PathBuf,
    },
}

/// The outcome of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Steps taken in all.
    pub steps: usize,
    /// Loss of every step.
    pub losses: Vec<f64>,
    /// Real tokens trained on.
    pub tokens: usize,
    /// Tokens that carried loss.
    pub loss_tokens: usize,
    /// Wall time of this invocation.
    pub wall_s: f64,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Tokens trained on from each example (by index), over all passes.
    pub tokens_per_example: Vec<usize>,
    /// Each step's loss per group (see [`StepStats::group_losses`]); empty when the
    /// examples were of one group.
    pub group_losses: Vec<Vec<(usize, f64)>>,
}
