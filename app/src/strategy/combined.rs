//! Combined: one adapter trained on a seeded mixture of every task (proportional,
//! uniform or temperature-scaled sampling; optionally each prompt tagged with its task).

use std::time::Instant;

use crate::model::lora::LoraAdapter;
use crate::strategy::context::{slug, Ctx};
use crate::strategy::mixing::Mixing;
use crate::strategy::report::{run_result, RunCost, RunResult};
use crate::train::TrainConfig;
use crate::Result;

/// Trains and scores the combined run `name`.
pub(super) fn run(ctx: &mut Ctx, name: &str, mixing: Mixing, task_tag: bool) -> Result<RunResult> {
    let (model, cfg) = (ctx.base.model, ctx.cfg);
    let t0 = Instant::now();
    let (draws, mix) = ctx.mixture(mixing, task_tag)?;
    let tc = TrainConfig { token_budget: Some(cfg.budget_tokens), ..cfg.train.clone() };
    let mut adapter = LoraAdapter::for_model(model, cfg.train.lora.clone(), cfg.train.seed)?;
    let s = ctx.train(name, "all", model, &mut adapter, &mix, &tc)?;
    let task_tokens = ctx.tokens_per_task(&draws, &s.tokens_per_example);
    let wall_s = t0.elapsed().as_secs_f64();
    let scores = ctx.eval_all(name, "final", model, Some(&adapter), task_tag)?;
    let (dir, bytes) = ctx.export(&slug(name), &adapter)?;
    let cost = RunCost {
        tokens: s.tokens,
        task_tokens,
        wall_s,
        trainable_params: adapter.num_parameters(),
        adapter_bytes: bytes,
    };
    let mut r = run_result(name, "combined", &scores, cost);
    r.task_losses = ctx.task_losses(&s);
    ctx.keep(&mut r, model, Some(&adapter))?;
    r.losses = s.losses;
    r.adapter_dirs.push(dir.display().to_string());
    Ok(r)
}
