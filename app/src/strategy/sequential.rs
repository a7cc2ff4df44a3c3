//! Sequential: tasks one after another under equal shares of the budget, either one
//! adapter that keeps training (*continue*) or merging the adapter into the base after
//! each task and starting a fresh one (*merge-then-new*), optionally replaying a share of
//! earlier tasks. Every task is scored after every stage: the forgetting matrix.

use std::time::Instant;

use crate::adapter::merge::{self, MergeMethod};
use crate::data::Record;
use crate::model::lora::LoraAdapter;
use crate::strategy::context::{slug, Ctx};
use crate::strategy::report::{run_result, Forgetting, RunCost, RunResult};
use crate::strategy::spec::SequentialVariant;
use crate::strategy::TaskData;
use crate::train::TrainConfig;
use crate::{Error, Result};

/// The training records of stage `k` (task `order[k]`): its own examples plus, with
/// `replay`, that share of them drawn (seeded by `seed`) from the tasks before it.
fn stage_records(tasks: &[TaskData], seed: u64, order: &[usize], k: usize, replay: f64) -> Vec<Record> {
    let mut recs = tasks[order[k]].train.clone();
    if replay > 0.0 && k > 0 {
        let extra = (recs.len() as f64 * replay).round() as usize;
        let earlier: Vec<&Record> = order[..k].iter().flat_map(|&j| tasks[j].train.iter()).collect();
        let mut r = crate::rng::stream(seed, 42, k as u64);
        let perm = crate::rng::permutation(&mut r, earlier.len());
        recs.extend(perm.iter().take(extra).map(|&i| earlier[i].clone()));
    }
    recs
}

/// Trains and scores the sequential run `name`.
pub(super) fn run(
    ctx: &mut Ctx,
    name: &str,
    variant: SequentialVariant,
    order: &[usize],
    replay: f64,
) -> Result<RunResult> {
    let (model, tasks, cfg) = (ctx.base.model, ctx.tasks, ctx.cfg);
    let t0 = Instant::now();
    let order: Vec<usize> = if order.is_empty() { (0..tasks.len()).collect() } else { order.to_vec() };
    if order.iter().any(|&i| i >= tasks.len()) {
        return Err(Error::Invalid(format!("sequential order {order:?} names a task that does not exist")));
    }
    let stage_budget = cfg.budget_tokens / order.len();
    let mut stage_model = model.clone();
    let mut adapter = LoraAdapter::for_model(model, cfg.train.lora.clone(), cfg.train.seed)?;
    let mut stage_adapters: Vec<LoraAdapter> = Vec::new();
    let (mut tokens, mut task_tokens, mut losses) = (0usize, vec![0usize; tasks.len()], Vec::new());
    let mut stage_starts = Vec::new();
    let mut matrix: Vec<Vec<f64>> = Vec::new();
    let mut stage_retention = Vec::new();
    let mut last_scores = Vec::new();
    // Seconds spent scoring (not training), and seconds of a shared first stage that
    // another run spent (training it is this run's cost all the same).
    let (mut eval_s, mut reused_s) = (0.0, 0.0);
    for (k, &ti) in order.iter().enumerate() {
        let tc = TrainConfig { token_budget: Some(stage_budget), seed: cfg.train.seed + k as u64, ..cfg.train.clone() };
        // The first stage is a fresh adapter on one task's own examples from the base:
        // the same training for both variants and the separate strategy (done once).
        let s = if k == 0 {
            let first = ctx.first_stage(name, ti, &tc)?;
            adapter = first.adapter;
            if first.reused {
                reused_s = first.summary.wall_s;
            }
            first.summary
        } else {
            if variant == SequentialVariant::MergeThenNew {
                // DoRA and PiSSA start from the weights this stage trains on.
                adapter = LoraAdapter::for_model(&stage_model, cfg.train.lora.clone(), tc.seed)?;
            }
            let ex = ctx.encode(&stage_records(tasks, cfg.train.seed, &order, k, replay))?;
            ctx.train(name, &tasks[ti].name, &stage_model, &mut adapter, &ex, &tc)?
        };
        tokens += s.tokens;
        task_tokens[ti] += s.tokens;
        if !losses.is_empty() {
            stage_starts.push(losses.len());
        }
        losses.extend(s.losses);
        if variant == SequentialVariant::MergeThenNew {
            stage_model = stage_model.with_adapter_merged(&adapter, 1.0)?;
            stage_adapters.push(adapter.deep_clone()?);
        }
        if !ctx.score_stages && k + 1 < order.len() {
            continue;
        }
        let te = Instant::now();
        // After the first stage both variants are the base plus that stage's adapter
        // (merged or not: the same model), scored once for every run that shares it.
        let shared = if k == 0 { ctx.first_stage_scores(name, ti, &tc)? } else { None };
        let scores = match shared {
            Some(scores) => scores,
            None => {
                let active = if variant == SequentialVariant::Continue { Some(&adapter) } else { None };
                ctx.eval_all(name, &tasks[ti].name, &stage_model, active, false)?
            }
        };
        // What the model after this stage keeps of the base model (after the first: the
        // shared stage's, measured once).
        let kept = match variant {
            _ if k == 0 => ctx.first_stage_retention(ti, &tc)?,
            SequentialVariant::Continue => ctx.retention(model, Some(&adapter))?,
            SequentialVariant::MergeThenNew => ctx.retention(&stage_model, None)?,
        };
        stage_retention.extend(kept);
        eval_s += te.elapsed().as_secs_f64();
        matrix.push(scores.iter().map(|s| s.headline().1.value).collect());
        last_scores = scores;
    }
    let final_adapter = match variant {
        SequentialVariant::Continue => adapter,
        // The merged model is the base plus every stage's delta: exactly the
        // concatenation of the stage adapters.
        SequentialVariant::MergeThenNew => {
            merge::merge(&stage_adapters.iter().collect::<Vec<_>>(), MergeMethod::Concat, 0)?
        }
    };
    // The final model on the keep sets: scoring, not training.
    let te = Instant::now();
    let keep = match variant {
        SequentialVariant::Continue => ctx.keep_scores(name, model, &[Some(&final_adapter)])?,
        SequentialVariant::MergeThenNew => ctx.keep_scores(name, &stage_model, &[None])?,
    };
    eval_s += te.elapsed().as_secs_f64();
    let wall_s = t0.elapsed().as_secs_f64() - eval_s + reused_s;
    let (dir, bytes) = ctx.export(&slug(name), &final_adapter)?;
    // One adapter trains at a time; the export concatenates every stage's.
    let trainable_params = stage_adapters.first().map_or(final_adapter.num_parameters(), LoraAdapter::num_parameters);
    let cost = RunCost { tokens, task_tokens, wall_s, trainable_params, adapter_bytes: bytes };
    let mut r = run_result(name, "sequential", &last_scores, cost);
    r.exported_params = final_adapter.num_parameters();
    r.keep = keep;
    r.losses = losses;
    r.stage_starts = stage_starts;
    // Without every stage scored (a learning-rate search's trial) there is no matrix.
    let names = |idx: &mut dyn Iterator<Item = usize>| idx.map(|i| tasks[i].name.clone()).collect::<Vec<_>>();
    // The final model is the last stage's: its retention is the run's.
    r.retention = stage_retention.last().copied();
    r.forgetting = (matrix.len() == order.len()).then(|| Forgetting {
        retention: stage_retention,
        ..Forgetting::new(names(&mut order.iter().copied()), names(&mut (0..tasks.len())), matrix, &order)
    });
    r.adapter_dirs.push(dir.display().to_string());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TaskKind;

    fn task(name: &str, n: usize) -> TaskData {
        let train = (0..n).map(|i| Record::new(format!("{name} question {i}"), format!("{name} {i}"))).collect();
        TaskData { name: name.into(), kind: TaskKind::Generation, labels: vec![], train, eval: vec![] }
    }

    #[test]
    fn a_stage_trains_on_its_task_and_its_replay_share_only() {
        let tasks = [task("a", 10), task("b", 8), task("c", 12)];
        let order = [2, 0, 1];
        let of = |recs: &[Record], t: &TaskData| recs.iter().filter(|r| t.train.contains(r)).count();
        for (k, &ti) in order.iter().enumerate() {
            // Without replay: exactly the stage's task, every example once.
            assert_eq!(stage_records(&tasks, 7, &order, k, 0.0), tasks[ti].train, "stage {k}");
            // With replay: the task's examples, then round(share × its size) examples of
            // the tasks trained before it (none of the later ones), each at most once.
            let recs = stage_records(&tasks, 7, &order, k, 0.25);
            assert_eq!(recs[..tasks[ti].train.len()], tasks[ti].train[..]);
            let replayed = &recs[tasks[ti].train.len()..];
            let want = if k == 0 { 0 } else { (tasks[ti].train.len() as f64 * 0.25).round() as usize };
            assert_eq!(replayed.len(), want, "stage {k}");
            let earlier: usize = order[..k].iter().map(|&j| of(replayed, &tasks[j])).sum();
            assert_eq!(earlier, replayed.len(), "stage {k}: replay only from earlier stages");
            let unique: std::collections::HashSet<&Record> = replayed.iter().collect();
            assert_eq!(unique.len(), replayed.len(), "stage {k}: each replayed example once");
        }
    }
}
