//! Separate: one adapter per task from the same base, each on an equal share of the
//! budget, scored *routed* (each task with its own adapter: the specialist bound) and
//! *merged* into one adapter by every requested method — at its defaults and, with
//! `tune_merges`, also with its parameters tuned on validation ([`merge_search`]).

use std::time::Instant;

use crate::adapter::merge::{self, MergeMethod};
use crate::eval::{self, EvalOptions};
use crate::model::lora::LoraAdapter;
use crate::strategy::context::{slug, CompareEvent, Ctx};
use crate::strategy::merge_search;
use crate::strategy::report::{run_result, MergeCandidate, MergeTuning, Retention, RunCost, RunResult};
use crate::strategy::{CompareConfig, StrategySpec, TaskData};
use crate::train::TrainConfig;
use crate::Result;

/// The folder (under `adapters/`, in a comparison of methods under `adapters/<method>/`)
/// of the separate run's adapter for `task`.
pub fn adapter_dir_name(task: &str) -> String {
    format!("separate-{}", slug(task))
}

/// The method a run of a comparison of methods trains with (`None` outside one).
fn method_of(ctx: &Ctx) -> Option<multitune_api::AdapterMethod> {
    (!ctx.cfg.methods.is_empty()).then(|| ctx.cfg.train.lora.method())
}

/// The training of one task's adapter: the run's settings on a share of the budget.
fn stage_config(cfg: &CompareConfig, stage_budget: usize) -> TrainConfig {
    TrainConfig { token_budget: Some(stage_budget), ..cfg.train.clone() }
}

/// Trains one adapter per task and scores them routed and merged: the routed row first,
/// then one row per merge method; also returns the per-task adapters.
pub(super) fn run(
    ctx: &mut Ctx,
    name: &str,
    merges: &[MergeMethod],
    merge_rank: usize,
) -> Result<(Vec<RunResult>, Vec<LoraAdapter>)> {
    let (model, tasks, cfg) = (ctx.base.model, ctx.tasks, ctx.cfg);
    let stage_budget = cfg.budget_tokens / tasks.len();
    let (mut tokens, mut task_tokens, mut losses) = (0usize, vec![0usize; tasks.len()], Vec::new());
    let mut stage_starts = Vec::new();
    let (mut routed, mut dirs, mut adapters) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes_all = 0;
    let mut train_s = 0.0;
    for (ti, t) in tasks.iter().enumerate() {
        let tc = stage_config(cfg, stage_budget);
        // The first stage of a sequential run on this task is the same training: done once.
        let ts = Instant::now();
        let first = ctx.first_stage(name, ti, &tc)?;
        train_s += if first.reused { first.summary.wall_s } else { ts.elapsed().as_secs_f64() };
        let (adapter, s) = (first.adapter, first.summary);
        tokens += s.tokens;
        task_tokens[ti] = s.tokens;
        if !losses.is_empty() {
            stage_starts.push(losses.len());
        }
        losses.extend(s.losses);
        ctx.check_cancel()?;
        let known = ctx.shared_scores(ti, &tc)?.map(|mut all| all.swap_remove(ti));
        let e = match known {
            Some(e) => e,
            None => eval::evaluate_task(
                model,
                ctx.base.tokenizer,
                Some(&adapter),
                &t.spec(),
                &t.eval,
                &cfg.eval,
                &mut |_, _| {},
            )?,
        };
        ctx.scored(name, &t.name, &e);
        routed.push(e);
        // In a comparison of methods each method's per-task adapters have their own folder.
        let dir_name = match method_of(ctx) {
            None => adapter_dir_name(&t.name),
            Some(m) => format!("{}/{}", m.name(), adapter_dir_name(&t.name)),
        };
        let (dir, bytes) = ctx.export(&dir_name, &adapter)?;
        bytes_all += bytes;
        dirs.push(dir.display().to_string());
        adapters.push(adapter);
    }
    let params: usize = adapters.iter().map(LoraAdapter::num_parameters).sum();
    let cost = RunCost { tokens, task_tokens, wall_s: train_s, trainable_params: params, adapter_bytes: bytes_all };
    let mut r = run_result(name, "separate", &routed, cost.clone());
    // Routed, a general prompt (or a keep set's) has no task of its own: the mean over
    // the per-task adapters says what any one of them keeps of the base model. Each is
    // a shared first stage: its retention is measured once for every run that has it.
    let kept: Vec<Retention> = (0..tasks.len())
        .map(|ti| ctx.first_stage_retention(ti, &stage_config(cfg, stage_budget)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    if kept.len() == tasks.len() {
        r.retention = Retention::mean(&kept);
    }
    r.keep = ctx.keep_scores(name, model, &adapters.iter().map(Some).collect::<Vec<_>>())?;
    r.losses = losses;
    r.stage_starts = stage_starts;
    r.adapter_dirs = dirs;
    let mut rows = vec![r];
    let refs: Vec<&LoraAdapter> = adapters.iter().collect();
    // Each merge at its defaults, kept for its tuning (which starts from it).
    let mut built: Vec<(MergeMethod, LoraAdapter)> = Vec::new();
    for m in merges {
        let mname = format!("{}{}", StrategySpec::merge_run_name(*m), ctx.suffix);
        let tm = Instant::now();
        let merged = merge::merge(&refs, *m, merge_rank)?;
        let merge_s = tm.elapsed().as_secs_f64();
        let scores = ctx.eval_all(&mname, "merged", model, Some(&merged), false)?;
        let (dir, bytes) = ctx.export(&slug(&mname), &merged)?;
        let cost = RunCost { wall_s: train_s + merge_s, adapter_bytes: bytes, ..cost.clone() };
        let mut r = run_result(&mname, "separate+merge", &scores, cost);
        ctx.keep(&mut r, model, Some(&merged))?;
        r.exported_params = merged.num_parameters();
        r.adapter_dirs.push(dir.display().to_string());
        rows.push(r);
        if cfg.tune_merges {
            built.push((*m, merged));
        }
    }
    if cfg.tune_merges {
        let val = merge_search::validation(tasks, cfg.train.seed)?;
        for &m in merges.iter().filter(|m| merge_search::tunable(**m)) {
            let defaults = rows.iter().find(|r| r.name == format!("{}{}", StrategySpec::merge_run_name(m), ctx.suffix));
            let defaults = defaults.cloned();
            let merged = built.iter().find(|(b, _)| *b == m).map(|(_, a)| a);
            let at = Defaults { row: defaults.as_ref(), adapter: merged };
            rows.push(tuned_merge(ctx, &refs, m, merge_rank, &val, &cost, at)?);
        }
    }
    Ok((rows, adapters))
}

/// A merge at its default parameters, as the separate run scored it: its row and its
/// adapter (either missing where the merge was not among the run's).
struct Defaults<'a> {
    row: Option<&'a RunResult>,
    adapter: Option<&'a LoraAdapter>,
}

/// The row of merge `m` with its parameters tuned on the validation split `val`
/// ([`merge_search`]): scored on the held-out examples like every merge (where the
/// defaults won, it is the same merge: the defaults' row `defaults` is not scored again),
/// its search in its cost and its record (`merge_tuning`; the paired comparison with the
/// same merge at its defaults is added when the report is assembled).
fn tuned_merge(
    ctx: &mut Ctx,
    adapters: &[&LoraAdapter],
    m: MergeMethod,
    merge_rank: usize,
    val: &[TaskData],
    cost: &RunCost,
    defaults: Defaults,
) -> Result<RunResult> {
    let model = ctx.base.model;
    let name = format!("{}{}", StrategySpec::tuned_merge_run_name(m), ctx.suffix);
    let t0 = Instant::now();
    let opts = EvalOptions { bootstrap: 0, follow_only: true, ..ctx.cfg.eval.clone() };
    let rungs = merge_search::rungs(val);
    let seed = ctx.cfg.train.seed;
    let tuned = merge_search::tune(adapters, m, merge_rank, seed, defaults.adapter, &mut |ad, rung| {
        ctx.check_cancel()?;
        rungs[rung]
            .iter()
            .map(|t| {
                let e = eval::evaluate_task(
                    model,
                    ctx.base.tokenizer,
                    Some(ad),
                    &t.spec(),
                    &t.eval,
                    &opts,
                    &mut |_, _| {},
                )?;
                Ok(merge_search::TaskResult { score: e.headline().1.value, loss: e.loss.value, examples: t.eval.len() })
            })
            .collect()
    })?;
    let defaults = defaults.row;
    let search_s = t0.elapsed().as_secs_f64();
    let (dir, bytes) = ctx.export(&slug(&name), &tuned.adapter)?;
    let cost = RunCost { wall_s: cost.wall_s + search_s, adapter_bytes: bytes, ..cost.clone() };
    let mut r = match defaults.filter(|_| tuned.chosen == 0) {
        Some(d) => {
            let mut r = RunResult { name: name.clone(), adapter_dirs: vec![], ..d.clone() };
            (r.wall_s, r.adapter_bytes) = (cost.wall_s, cost.adapter_bytes);
            for s in &r.scores {
                (ctx.on_event)(&CompareEvent::Evaluated {
                    run: name.clone(),
                    stage: "merged".into(),
                    task: s.task.clone(),
                    value: s.value.value,
                });
            }
            r
        }
        None => {
            let scores = ctx.eval_all(&name, "merged", model, Some(&tuned.adapter), false)?;
            let mut r = run_result(&name, "separate+merge", &scores, cost);
            ctx.keep(&mut r, model, Some(&tuned.adapter))?;
            r
        }
    };
    r.exported_params = tuned.adapter.num_parameters();
    r.adapter_dirs.push(dir.display().to_string());
    r.merge_tuning = Some(MergeTuning {
        method: m.name().into(),
        default_params: tuned.tried[0].candidate.describe(m),
        chosen_params: tuned.tried[tuned.chosen].candidate.describe(m),
        validation: val.iter().map(|t| t.eval.len()).collect(),
        candidates: tuned
            .tried
            .iter()
            .map(|c| MergeCandidate {
                params: c.candidate.describe(m),
                score: c.score,
                loss: c.loss,
                examples: c.examples,
            })
            .collect(),
        wall_s: search_s,
        default_run: format!(
            "{}{}",
            StrategySpec::merge_run_name(m),
            method_of(ctx).map(multitune_api::AdapterMethod::tag).unwrap_or_default()
        ),
        vs_default: None,
    });
    Ok(r)
}
