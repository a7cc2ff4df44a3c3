//! `report.md`: the report in Markdown, for reading without the dashboard.

use std::fmt::Write as _;

use super::recommend::{lr_text, pct, points};
use super::{std_dev, LrSearch, Report};

/// `report.md`.
pub fn markdown(report: &Report) -> String {
    let mut s = String::from("# Multitune comparison\n\n");
    let _ = writeln!(s, "Budget: {} training tokens per strategy.\n", report.config.budget_tokens);
    let _ = writeln!(s, "## Recommendation\n\n{}\n", report.recommendation.text);
    s.push_str("## Per-task scores (headline metric, %, 95% interval)\n\n| run |");
    for (t, _, _, _) in &report.tasks {
        let _ = write!(s, " {t} |");
    }
    s.push_str(" macro avg |\n|---|");
    for _ in &report.tasks {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for r in &report.runs {
        let _ = write!(s, "| {} |", r.name);
        for sc in &r.scores {
            let spread =
                if sc.seed_values.len() > 1 { format!(" ± {}", pct(std_dev(&sc.seed_values))) } else { String::new() };
            let _ = write!(s, " {}{spread} [{}, {}] |", pct(sc.value.value), pct(sc.value.lo), pct(sc.value.hi));
        }
        let m = r.macro_average();
        let spread = r.seed_spread().map(|x| format!(" ± {}", pct(x))).unwrap_or_default();
        let _ = writeln!(s, " {}{spread} [{}, {}] |", pct(m.value), pct(m.lo), pct(m.hi));
    }
    if report.config.seeds.len() > 1 {
        let _ = writeln!(
            s,
            "\nMean over {} training seeds ({}); ± is the standard deviation over seeds, the interval the mean of the per-seed 95% bootstrap intervals.",
            report.config.seeds.len(),
            report.config.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    s.push_str(&retention_markdown(report));
    s.push_str(&keep_markdown(report));
    s.push_str(&curves_markdown(report));
    s.push_str(&methods_markdown(report));
    if !report.comparisons.is_empty() {
        s.push_str(
            "\n## Paired comparisons\n\nEach run against the best and against the base model on the same held-out \
             examples: the difference of the headline metric (points, paired bootstrap 95% interval), the \
             discordant examples (right only in the run / only in the other), the exact McNemar p-value and \
             its Holm adjustment over the comparisons of the table.\n\n",
        );
        for (title, per_task) in [("Macro average", false), ("Per task, against the best run", true)] {
            let _ = writeln!(
                s,
                "**{title}**\n\n| run | against |{} difference | discordant | p | p (Holm) | verdict |\n|---|---|{}---|---|---|---|---|",
                if per_task { " task |" } else { "" },
                if per_task { "---|" } else { "" }
            );
            let best = &report.recommendation.best;
            for c in
                report.comparisons.iter().filter(|c| c.task.is_some() == per_task && (!per_task || &c.against == best))
            {
                let task = c.task.as_deref().map(|t| format!(" {t} |")).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} | {} |{task} {} | {} / {} | {:.3} | {:.3} | {:?} |",
                    c.run,
                    c.against,
                    points(&c.difference),
                    c.discordant.0,
                    c.discordant.1,
                    c.p_value,
                    c.p_adjusted,
                    c.verdict
                );
            }
            s.push('\n');
        }
    }
    s.push_str("\n## Cost\n\n| run | learning rate | tokens | tokens per task | wall s | trainable params | exported params | adapter MiB | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in report.runs.iter().filter(|r| !r.is_base()) {
        let per: Vec<String> = r.task_tokens.iter().map(|t| t.to_string()).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {} |",
            r.name,
            lr_text(r.learning_rate),
            r.tokens,
            per.join(" / "),
            r.wall_s,
            r.trainable_params,
            r.exported_params,
            r.adapter_bytes as f64 / (1 << 20) as f64,
            r.peak_rss_mib.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
        );
    }
    s.push_str(&lr_search_markdown(report));
    s.push_str(&mixing_search_markdown(report));
    s.push_str(&merge_tuning_markdown(report));
    s.push_str(&task_loss_markdown(report));
    for r in &report.runs {
        if let Some(f) = &r.forgetting {
            let _ = writeln!(
                s,
                "\n## Forgetting: {}\n\nHeadline metric (%) of each task (columns) after each stage (rows).\n",
                r.name
            );
            let kept = !f.retention.is_empty();
            let _ = writeln!(
                s,
                "| after stage | {} |{}",
                f.tasks.join(" | "),
                if kept { " kept of the base model (same answers / KL) |" } else { "" }
            );
            let _ = writeln!(s, "|---|{}{}", "---|".repeat(f.tasks.len()), if kept { "---|" } else { "" });
            for (k, (st, row)) in f.stages.iter().zip(&f.matrix).enumerate() {
                let cells: Vec<String> = row.iter().map(|v| pct(*v)).collect();
                let retention =
                    f.retention.get(k).map(|r| format!(" {}% / {:.3} |", pct(r.same_answer), r.kl)).unwrap_or_default();
                let _ = writeln!(s, "| {st} | {} |{retention}", cells.join(" | "));
            }
            let _ = writeln!(
                s,
                "\nBackward transfer {:+.1} points; average forgetting {:.1} points.",
                100.0 * f.backward_transfer,
                100.0 * f.average_forgetting
            );
        }
    }
    if let Some(sim) = &report.similarity {
        let _ = writeln!(
            s,
            "\n## Task similarity (per-task adapters)\n\nCosine of the adapter deltas / TIES sign-conflict rate.\n"
        );
        let _ = writeln!(s, "| | {} |", sim.tasks.join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(sim.tasks.len()));
        for (i, t) in sim.tasks.iter().enumerate() {
            let cells: Vec<String> = (0..sim.tasks.len())
                .map(|j| format!("{:.3} / {:.2}", sim.cosine[i][j], sim.sign_conflict[i][j]))
                .collect();
            let _ = writeln!(s, "| {t} | {} |", cells.join(" | "));
        }
    }
    s
}

/// The adapter methods compared (empty without a comparison of methods): each row's
/// macro average with each method, every later method's difference from the first
/// (paired, Holm-adjusted p), the method to use and why.
fn methods_markdown(report: &Report) -> String {
    let Some(m) = &report.methods else { return String::new() };
    let names: Vec<&str> = m.methods.iter().map(|x| x.name()).collect();
    let mut s = format!(
        "\n## Adapter methods\n\n{}\n\nMacro average (%) of each row with each method, the same budget; after the \
         first method, the paired difference from the first (points, 95% interval, Holm-adjusted p).\n\n| run | {} | \
         use |\n|---|{}---|\n",
        m.text,
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for row in &m.rows {
        let cells: Vec<String> = m
            .cells(row, &report.runs)
            .into_iter()
            .map(|cell| match cell {
                None => "-".into(),
                Some((r, None)) => pct(r.macro_average().value),
                Some((r, Some(c))) => {
                    format!("{} ({}, p {:.3})", pct(r.macro_average().value), points(&c.difference), c.p_adjusted)
                }
            })
            .collect();
        let _ = writeln!(s, "| {} | {} | {} |", row.run, cells.join(" | "), row.choice.name());
    }
    s
}

/// What each run keeps of the base model (empty when not measured): the share of the
/// retention probe's prompts whose greedy answer is unchanged, and the mean per-token KL
/// divergence from the base model along its answers.
fn retention_markdown(report: &Report) -> String {
    let rows: Vec<String> = report
        .runs
        .iter()
        .filter_map(|r| {
            let k = r.retention?;
            Some(format!("| {} | {}% | {:.4} |", r.name, pct(k.same_answer), k.kl))
        })
        .collect();
    let Some(n) = report.runs.iter().find_map(|r| r.retention).map(|k| k.prompts) else { return String::new() };
    format!(
        "\n## What each run keeps of the base model\n\nOn the retention probe ({n} varied prompts shipped with \
         Multitune — facts, arithmetic, rewriting, advice, small talk — answered once by the base model, greedy): the \
         share of prompts whose greedy answer is still exactly the base model's, and the mean per-token KL divergence \
         (nats) from the base model's next-token distributions along its answers. A separate run's routed row is the \
         mean over its per-task adapters; a multi-head run is measured through its shared adapter. Measuring \
         took {:.0} s in all (the base model's answers and every measurement).\n\n\
         | run | same answers | KL |\n|---|---|---|\n{}\n",
        report.retention_seconds().unwrap_or(0.0),
        rows.join("\n")
    )
}

/// The keep sets' section (empty without them): which runs make one worse, then every
/// run's score on each with its change from the base model.
fn keep_markdown(report: &Report) -> String {
    let Some(k) = &report.keep else { return String::new() };
    let mut s = format!(
        "\n## Keep sets (must not get worse)\n\nScored with the base model and every run's final model on all their \
         examples, never trained on (a separate run's routed row: the mean over its per-task adapters). {}\n\n| run |",
        k.text
    );
    for (name, kind, n) in &k.sets {
        let _ = write!(s, " {name} ({kind}, {n}) |");
    }
    s.push_str("\n|---|");
    for _ in &k.sets {
        s.push_str("---|");
    }
    for r in &report.runs {
        let _ = write!(s, "\n| {} |", r.name);
        for (sc, (set, _, _)) in r.keep.iter().zip(&k.sets) {
            let change = k
                .of(&r.name, set)
                .map(|c| format!("; {} vs base, {}", points(&c.difference), format!("{:?}", c.verdict).to_lowercase()))
                .unwrap_or_default();
            let _ = write!(s, " {}% [{}, {}]{change} |", pct(sc.value.value), pct(sc.value.lo), pct(sc.value.hi));
        }
    }
    s.push('\n');
    s
}

/// The data-size curves section of `report.md` (empty without them): where the winner
/// changes, then each run's macro average at every size.
fn curves_markdown(report: &Report) -> String {
    let Some(d) = &report.data_sizes else { return String::new() };
    let mut s = format!(
        "\n## Data-size curves\n\n{}\n\nMacro average of the headline metric (%, 95% interval) of every run trained on a \
         share of each task's training set (nested, seeded subsets; the budget scaled with the share, so every size \
         trains the same epochs; the same held-out examples). The leader's lead over the runner-up is paired, \
         Holm-adjusted over the sizes.\n\n| run |",
        d.text
    );
    for size in &d.sizes {
        let _ =
            write!(s, " {} (~{:.0} per task) |", crate::strategy::sizes::percent(size.fraction), size.mean_examples());
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(d.sizes.len()));
    let names: Vec<String> = report.runs_at(d.sizes.len() - 1).iter().map(|r| r.name.clone()).collect();
    for name in &names {
        let _ = write!(s, "| {name} |");
        for k in 0..d.sizes.len() {
            match report.runs_at(k).into_iter().find(|r| &r.name == name) {
                Some(r) => {
                    let m = r.macro_average();
                    let lead = if &d.sizes[k].leader == name { "**" } else { "" };
                    let _ = write!(s, " {lead}{}{lead} [{}, {}] |", pct(m.value), pct(m.lo), pct(m.hi));
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s.push_str("\n| size | leader | lead over the runner-up | p (Holm) |\n|---|---|---|---|\n");
    for size in &d.sizes {
        let (lead, p) = match &size.lead {
            Some(c) => (format!("{} ({})", points(&c.difference), c.against), format!("{:.3}", c.p_adjusted)),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(s, "| {} | {} | {lead} | {p} |", crate::strategy::sizes::percent(size.fraction), size.leader);
    }
    s
}

/// The mixed runs' loss per task (empty without mixed runs): each task's mean loss over
/// the run's first and last tenth of steps it was trained in — a task the mixture
/// neglects shows as a loss that stays high.
fn task_loss_markdown(report: &Report) -> String {
    let mut rows = String::new();
    for r in report.runs.iter().filter(|r| !r.task_losses.is_empty()) {
        for (task, at) in &r.task_losses {
            let n = at.len();
            let tenth = (n / 10).max(1);
            let mean = |xs: &[Option<f64>]| {
                let v: Vec<f64> = xs.iter().flatten().copied().collect();
                if v.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.3}", v.iter().sum::<f64>() / v.len() as f64)
                }
            };
            let trained = at.iter().flatten().count();
            let _ = writeln!(
                rows,
                "| {} | {task} | {trained} of {n} | {} | {} |",
                r.name,
                mean(&at[..tenth.min(n)]),
                mean(&at[n.saturating_sub(tenth)..])
            );
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n## Loss per task inside mixed runs\n\nEach step's training loss split by task, from the same forward pass: \
         the steps with examples of the task, and its mean loss over the first and the last tenth of the run's steps \
         (chart: `task-loss`).\n\n| run | task | steps trained | first tenth | last tenth |\n|---|---|---|---|---|\n{rows}"
    )
}

/// The mixing search section of `report.md` (empty without one): per run, the mixing
/// chosen and every trial.
fn mixing_search_markdown(report: &Report) -> String {
    let mut rows = String::new();
    for r in &report.runs {
        let Some(search) = &r.mixing_search else { continue };
        let mut trials: Vec<String> = search
            .trials
            .iter()
            .map(|t| format!("{}: {}% / {:.3} ({} tokens)", t.mixing.name(), pct(t.score), t.loss, t.budget_tokens))
            .collect();
        if trials.is_empty() {
            trials.push("none: every mixing samples alike at these task sizes".into());
        }
        let _ = writeln!(
            rows,
            "| {} | {} | {} | {} | {:.0} |",
            r.name,
            search.chosen.name(),
            trials.join("; "),
            search.tokens(),
            search.wall_s()
        );
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "\n## Mixing search\n\nThe task mixing of each run that asked for a search, chosen among proportional, \
         temperature 2 and uniform by successive halving on a validation split carved from the training data (each \
         trial: validation macro average / loss, training tokens). The search is part of the run's cost: its wall \
         time is in the cost table.\n\n| run | chosen | trials | search tokens | search s |\n|---|---|---|---|---|\n{rows}"
    )
}

/// The tuned merges section of `report.md` (empty without `tune_merges`): per merge, the
/// parameters at the defaults and chosen, and the tuned merge against its defaults on
/// the held-out examples, paired.
fn merge_tuning_markdown(report: &Report) -> String {
    let mut rows = String::new();
    let mut validation = None;
    for r in &report.runs {
        let Some(t) = &r.merge_tuning else { continue };
        validation.get_or_insert(t.validation.clone());
        let vs = t.vs_default.as_ref().map_or_else(
            || "-".to_string(),
            |c| format!("{} (p = {:.3}, {:?})", points(&c.difference), c.p_adjusted, c.verdict),
        );
        let tried: Vec<String> = t
            .candidates
            .iter()
            .map(|c| {
                let whole: usize = t.validation.iter().sum();
                let part = if c.examples > 0 && c.examples < whole {
                    format!(" (on {} of {whole})", c.examples)
                } else {
                    String::new()
                };
                format!("{}: {}% / {:.3}{part}", c.params, pct(c.score), c.loss)
            })
            .collect();
        let _ = writeln!(
            rows,
            "| {} | {} | {} | {vs} | {} | {:.0} |",
            t.method,
            t.default_params,
            t.chosen_params,
            tried.join("; "),
            t.wall_s
        );
    }
    let Some(validation) = validation else { return rows };
    format!(
        "\n## Merges tuned on validation\n\nEach merge's parameters searched on a validation split carved from the \
         training data ({} examples per task; the per-task adapters trained on them, the held-out examples were never \
         used), in quick passes (label ranking; generated answers walked along their references, exact match a lower \
         bound) and successive halving: every candidate on the first quarter of each task's split, the better half \
         of them on the second quarter, the better half of those on the rest (the defaults always go on), the best on \
         the whole split chosen. The tuned merge is a row of its own; against the same \
         merge at its defaults on the held-out examples, paired (macro average, points, Holm-adjusted over the tuned \
         merges). Candidates: validation macro average / loss (on fewer examples where marked: left out earlier).\n\n| merge | defaults | chosen | held-out: tuned − defaults | \
         candidates | search s |\n|---|---|---|---|---|---|\n{rows}",
        validation.iter().map(usize::to_string).collect::<Vec<_>>().join(" / ")
    )
}

/// The learning-rate search section of `report.md` (empty without a search): one
/// row per search (a separate run's merges share its search, the same trials).
fn lr_search_markdown(report: &Report) -> String {
    let mut seen: Vec<&LrSearch> = Vec::new();
    let mut rows = String::new();
    for r in &report.runs {
        let Some(search) = &r.lr_search else { continue };
        if seen.contains(&search) {
            continue;
        }
        seen.push(search);
        let trials: Vec<String> = search
            .trials
            .iter()
            .map(|t| {
                format!("{}: {}% / {:.3} ({} tokens)", lr_text(t.learning_rate), pct(t.score), t.loss, t.budget_tokens)
            })
            .collect();
        let _ = writeln!(
            rows,
            "| {} | {} | {} | {} | {:.0} |",
            r.name,
            lr_text(search.chosen),
            trials.join("; "),
            search.tokens(),
            search.wall_s()
        );
    }
    let Some(first) = seen.first() else { return String::new() };
    format!(
        "\n## Learning-rate search\n\nEach strategy's peak learning rate, chosen from {} by successive halving on a \
         validation split carved from the training data ({} examples per task; the held-out examples scored above \
         were not used). Each trial: validation macro average / loss (training tokens). The search's cost is not \
         in the cost table.\n\n| run | chosen | trials | search tokens | search s |\n|---|---|---|---|---|\n{rows}",
        first.grid.iter().map(|&x| lr_text(x)).collect::<Vec<_>>().join(", "),
        first.validation.iter().map(usize::to_string).collect::<Vec<_>>().join(" / ")
    )
}
