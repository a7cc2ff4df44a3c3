//! Step checkpoints: the objective's variables, the optimizer's moments and the run's
//! progress in one safetensors file, written atomically, so a resumed run continues
//! bit-for-bit on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};

use crate::persist;
use crate::train::config::TrainConfig;
use crate::train::objective::Objective;
use crate::train::optim::AdamW;
use crate::{Error, Result};

/// Where a run keeps its checkpoint, and whether to continue from it.
#[derive(Debug, Clone)]
pub struct CheckpointPlan {
    /// The checkpoint file.
    pub path: PathBuf,
    /// Continue from it if it exists.
    pub resume: bool,
}

const CKPT_LORA: &str = "lora.";
const CKPT_OPTIM: &str = "optim.";

/// The default checkpoint location inside an output folder.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

/// How far a run has come: what a checkpoint records besides the tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    /// Loss of every step done.
    pub losses: Vec<f64>,
    /// Real tokens trained on.
    pub tokens: usize,
    /// Tokens that carried loss.
    pub loss_tokens: usize,
    /// Tokens trained on from each example (by index).
    pub per_example: Vec<usize>,
    /// The token budget is met as far as whole examples allow: the last step took every
    /// example that still fitted, and training ends here (a resume too).
    pub budget_met: bool,
    /// Each step's loss per group (when the examples span several).
    pub group_losses: Vec<Vec<(usize, f64)>>,
}

/// Restores `objective`'s variables and the optimizer from `plan`'s checkpoint and
/// returns the progress it records. Refused when the checkpoint was written with other
/// training settings.
pub fn restore(
    plan: &CheckpointPlan,
    cfg: &TrainConfig,
    objective: &dyn Objective,
    vars: &[Var],
    opt: &mut AdamW,
    device: &Device,
) -> Result<Progress> {
    let (tensors, meta) = persist::read_safetensors(&plan.path, device)?;
    let saved: TrainConfig = serde_json::from_str(meta.get("train_config").map(String::as_str).unwrap_or("null"))
        .map_err(|e| Error::Adapter(format!("{}: no usable train_config: {e}", plan.path.display())))?;
    if &saved != cfg {
        return Err(Error::Invalid(format!(
            "{} was written with different training settings; resume with the same ones or start afresh",
            plan.path.display()
        )));
    }
    for ((name, _), var) in objective.named_tensors().iter().zip(vars) {
        let t = tensors
            .get(&format!("{CKPT_LORA}{name}"))
            .ok_or_else(|| Error::Adapter(format!("checkpoint lacks `{name}`")))?;
        var.set(t)?;
    }
    let step = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(0);
    opt.load_state(|n| tensors.get(&format!("{CKPT_OPTIM}{n}")).cloned(), step)?;
    Ok(Progress {
        step,
        losses: meta.get("losses").and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default(),
        tokens: meta.get("tokens").and_then(|s| s.parse().ok()).unwrap_or(0),
        loss_tokens: meta.get("loss_tokens").and_then(|s| s.parse().ok()).unwrap_or(0),
        per_example: meta.get("per_example").and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default(),
        budget_met: meta.get("budget_met").is_some_and(|s| s == "true"),
        group_losses: meta.get("group_losses").and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default(),
    })
}

/// Writes `objective`'s variables, the optimizer state and `progress` to `plan`'s file
/// (atomically).
pub fn save(
    plan: &CheckpointPlan,
    cfg: &TrainConfig,
    progress: &Progress,
    opt: &AdamW,
    objective: &dyn Objective,
) -> Result<()> {
    let mut all: Vec<(String, Tensor)> =
        objective.named_tensors().into_iter().map(|(n, t)| (format!("{CKPT_LORA}{n}"), t)).collect();
    all.extend(opt.state().into_iter().map(|(n, t)| (format!("{CKPT_OPTIM}{n}"), t)));
    let meta = HashMap::from([
        ("step".to_string(), progress.step.to_string()),
        ("train_config".to_string(), serde_json::to_string(cfg)?),
        ("losses".to_string(), serde_json::to_string(&progress.losses)?),
        ("tokens".to_string(), progress.tokens.to_string()),
        ("loss_tokens".to_string(), progress.loss_tokens.to_string()),
        ("per_example".to_string(), serde_json::to_string(&progress.per_example)?),
        ("budget_met".to_string(), progress.budget_met.to_string()),
        ("group_losses".to_string(), serde_json::to_string(&progress.group_losses)?),
    ]);
    persist::write_safetensors(&plan.path, &all, Some(meta))
}
