//! Multi-head: one shared adapter trained on the mixture of every task, plus a head per
//! task (a classifier over the label set, or a low-rank delta on the LM head), trained
//! together; each task is scored through its own head.

use std::time::Instant;

use crate::data::{Record, TaskKind, TaskSpec};
use crate::model::lora::LoraAdapter;
use crate::strategy::context::{slug, Ctx};
use crate::strategy::heads::{self, MultiHead};
use crate::strategy::mixing::Mixing;
use crate::strategy::report::{run_result, RunCost, RunResult};
use crate::train::TrainConfig;
use crate::Result;

/// Trains and scores the multi-head run `name`; exports the shared adapter with the
/// heads beside it.
pub(super) fn run(ctx: &mut Ctx, name: &str, mixing: Mixing, head_rank: usize) -> Result<RunResult> {
    let (model, tok, tasks, cfg) = (ctx.base.model, ctx.base.tokenizer, ctx.tasks, ctx.cfg);
    let t0 = Instant::now();
    let (draws, mix) = ctx.mixture(mixing, false)?;
    let system = cfg.eval.system.as_deref();
    let label_tokens: Vec<Vec<u32>> = tasks
        .iter()
        .map(|t| match t.kind {
            TaskKind::Classification => heads::label_first_tokens(tok, &t.labels, system),
            TaskKind::Generation => Ok(vec![]),
        })
        .collect::<Result<_>>()?;
    let specs: Vec<TaskSpec> = tasks.iter().map(|t| t.spec()).collect();
    let adapter = LoraAdapter::for_model(model, cfg.train.lora.clone(), cfg.train.seed)?;
    let mut mh = MultiHead::new(model, adapter, &specs, &label_tokens, head_rank, cfg.train.seed)?;
    let labels: Vec<Vec<String>> =
        tasks.iter().map(|t| if t.kind == TaskKind::Classification { t.labels.clone() } else { vec![] }).collect();
    let train_recs: Vec<Vec<Record>> = tasks.iter().map(|t| t.train.clone()).collect();
    mh.routes = heads::routes(&draws, &mix, &labels, &train_recs)?;
    let tc = TrainConfig { token_budget: Some(cfg.budget_tokens), ..cfg.train.clone() };
    let s = ctx.train(name, "all", model, &mut mh, &mix, &tc)?;
    let task_tokens = ctx.tokens_per_task(&draws, &s.tokens_per_example);
    let wall_s = t0.elapsed().as_secs_f64();
    let mut scores = Vec::new();
    for (ti, t) in tasks.iter().enumerate() {
        ctx.check_cancel()?;
        let e = heads::evaluate_task(&mh, model, tok, ti, &t.eval, &cfg.eval)?;
        ctx.scored(name, "final", &e);
        scores.push(e);
    }
    let (dir, bytes) = ctx.export(&slug(name), &mh.adapter)?;
    mh.save_heads(&dir, model, ctx.base.name)?;
    let head_bytes = std::fs::metadata(dir.join(heads::HEADS_FILE)).map(|m| m.len()).unwrap_or(0);
    let cost = RunCost {
        tokens: s.tokens,
        task_tokens,
        wall_s,
        trainable_params: mh.num_parameters(),
        adapter_bytes: bytes + head_bytes,
    };
    let mut r = run_result(name, "multi_head", &scores, cost);
    r.task_losses = ctx.task_losses(&s);
    // General ability and the keep sets go through the shared adapter (the heads answer
    // their tasks).
    ctx.keep(&mut r, model, Some(&mh.adapter))?;
    r.losses = s.losses;
    r.adapter_dirs.push(dir.display().to_string());
    Ok(r)
}
