//! The adapter methods' part of the report (a comparison of methods): each row that ran
//! with several methods (a strategy, a merge), every method against the first one it
//! ran with, paired on the held-out examples, and which method to use where.

use super::recommend::{p_text, points};
use super::stats::compare_pairs;
use super::{Comparison, RunResult, Verdict};
use multitune_api::report::{MethodRow, Methods};
use multitune_api::AdapterMethod;

/// The comparison of `methods` over the report's rows `runs` (`None` with fewer than two
/// methods).
pub(super) fn methods(methods: &[AdapterMethod], runs: &[RunResult], reps: usize, seed: u64) -> Option<Methods> {
    if methods.len() < 2 {
        return None;
    }
    // The rows of each name, in the report's order, each name's in the methods' order.
    let mut groups: Vec<(String, Vec<&RunResult>)> = Vec::new();
    for r in runs.iter().filter(|r| r.method.is_some()) {
        match groups.iter_mut().find(|(n, _)| n == r.plain_name()) {
            Some((_, rows)) => rows.push(r),
            None => groups.push((r.plain_name().to_string(), vec![r])),
        }
    }
    let order = |r: &&RunResult| methods.iter().position(|m| Some(*m) == r.method);
    for (_, rows) in &mut groups {
        rows.sort_by_key(order);
    }
    groups.retain(|(_, rows)| rows.len() > 1);
    let pairs: Vec<(&RunResult, &RunResult)> =
        groups.iter().flat_map(|(_, rows)| rows[1..].iter().map(|r| (*r, rows[0]))).collect();
    let comparisons = compare_pairs(pairs, reps, seed, true);
    let rows: Vec<MethodRow> = groups.iter().map(|(name, rows)| choose(name, rows, &comparisons)).collect();
    let text = text(&rows);
    Some(Methods { methods: methods.to_vec(), rows, comparisons, text })
}

/// Row `name`'s choice among its `rows` (the first method's first): the method furthest
/// ahead of the first among those significantly ahead; with none, the fastest to train
/// of those not significantly behind.
fn choose(name: &str, rows: &[&RunResult], comparisons: &[Comparison]) -> MethodRow {
    let method = |r: &RunResult| r.method.unwrap_or_default();
    let against = |r: &RunResult| comparisons.iter().find(|c| c.task.is_none() && c.run == r.name);
    let reference = method(rows[0]);
    let ahead = rows[1..]
        .iter()
        .filter_map(|r| against(r).filter(|c| c.verdict == Verdict::Better).map(|c| (*r, c)))
        .max_by(|a, b| a.1.difference.value.total_cmp(&b.1.difference.value));
    let (choice, reason) = match ahead {
        Some((r, c)) => (
            method(r),
            format!(
                "{} beats {} by {} ({}, Holm-adjusted)",
                method(r).name(),
                reference.name(),
                points(&c.difference),
                p_text(c.p_adjusted)
            ),
        ),
        None => {
            let behind: Vec<&str> = rows[1..]
                .iter()
                .filter(|r| against(r).is_some_and(|c| c.verdict == Verdict::Worse))
                .map(|r| method(r).name())
                .collect();
            let fastest = rows
                .iter()
                .filter(|r| !behind.contains(&method(r).name()))
                .min_by(|a, b| a.wall_s.total_cmp(&b.wall_s))
                .copied()
                .unwrap_or(rows[0]);
            let mut reason = if behind.len() + 1 == rows.len() {
                format!("{} beats {} (significantly)", reference.name(), behind.join(", "))
            } else {
                let others: Vec<&str> =
                    rows[1..].iter().map(|r| method(r).name()).filter(|m| !behind.contains(m)).collect();
                format!(
                    "no detectable difference between {} and {}; {} trains fastest ({:.0} s)",
                    reference.name(),
                    others.join(", "),
                    method(fastest).name(),
                    fastest.wall_s
                )
            };
            if !behind.is_empty() && behind.len() + 1 < rows.len() {
                reason.push_str(&format!("; {} significantly behind {}", behind.join(", "), reference.name()));
            }
            (method(fastest), reason)
        }
    };
    MethodRow {
        run: name.to_string(),
        runs: rows.iter().map(|r| (method(r), r.name.clone())).collect(),
        choice,
        reason,
    }
}

/// Which method to use where, in words: the rows by their choice, then each reason.
fn text(rows: &[MethodRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut chosen: Vec<(AdapterMethod, Vec<&str>)> = Vec::new();
    for r in rows {
        match chosen.iter_mut().find(|(m, _)| *m == r.choice) {
            Some((_, names)) => names.push(&r.run),
            None => chosen.push((r.choice, vec![&r.run])),
        }
    }
    let uses: Vec<String> = chosen.iter().map(|(m, names)| format!("{} for {}", m.name(), names.join(", "))).collect();
    let why: Vec<String> = rows.iter().map(|r| format!("{}: {}.", r.run, r.reason)).collect();
    format!("Use {}. {}", uses.join("; "), why.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitune_api::report::{Estimate, TaskScore};

    /// A row of `name` trained with `m`: one task whose examples are right where `right`
    /// says, `wall_s` seconds.
    fn row(name: &str, m: AdapterMethod, right: &[u8], wall_s: f64) -> RunResult {
        let per_example: Vec<f64> = right.iter().map(|&x| f64::from(x)).collect();
        let v = per_example.iter().sum::<f64>() / per_example.len() as f64;
        let score = TaskScore {
            task: "t".into(),
            value: Estimate { value: v, lo: v, hi: v },
            per_example,
            ..Default::default()
        };
        RunResult {
            name: format!("{name}{}", m.tag()),
            strategy: "combined".into(),
            scores: vec![score],
            wall_s,
            method: Some(m),
            ..Default::default()
        }
    }

    #[test]
    fn each_row_chooses_a_method_ahead_or_the_fastest_of_the_rest() {
        use AdapterMethod::{Dora, Lora};
        let (some, all) = (vec![0u8; 60], vec![1u8; 60]);
        let half: Vec<u8> = (0..60).map(|i| u8::from(i % 2 == 0)).collect();
        let runs = vec![
            RunResult { name: "base model".into(), strategy: "base".into(), ..Default::default() },
            // DoRA right on 60 examples LoRA gets wrong: significantly ahead.
            row("combined", Lora, &some, 10.0),
            row("combined", Dora, &all, 20.0),
            // The same answers: no difference, LoRA trains faster.
            row("separate (routed)", Lora, &half, 10.0),
            row("separate (routed)", Dora, &half, 15.0),
            // A merge DoRA does not run: nothing to compare.
            row("separate + merge (ties)", Lora, &half, 1.0),
        ];
        assert_eq!(runs[2].plain_name(), "combined");
        let m = methods(&[Lora, Dora], &runs, 200, 1).unwrap();
        assert_eq!(m.rows.len(), 2, "{:?}", m.rows);
        assert_eq!((m.rows[0].run.as_str(), m.rows[0].choice), ("combined", Dora));
        assert!(m.rows[0].reason.starts_with("dora beats lora by +100.0 points"), "{}", m.rows[0].reason);
        assert_eq!(m.rows[1].choice, Lora);
        assert!(m.rows[1].reason.contains("lora trains fastest (10 s)"), "{}", m.rows[1].reason);
        let c = m.against_first("combined [dora]").unwrap();
        assert_eq!((c.against.as_str(), c.discordant, c.verdict), ("combined [lora]", (60, 0), Verdict::Better));
        assert!(m.text.starts_with("Use dora for combined; lora for separate (routed)."), "{}", m.text);
        // Listed DoRA first: the same rows compared the other way round.
        let m = methods(&[Dora, Lora], &runs, 200, 1).unwrap();
        assert_eq!(m.rows[0].choice, Dora);
        assert!(m.rows[0].reason.starts_with("dora beats lora (significantly)"), "{}", m.rows[0].reason);
        assert!(methods(&[Lora], &runs, 200, 1).is_none());
    }
}
