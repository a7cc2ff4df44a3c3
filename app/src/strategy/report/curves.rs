//! The data-size curves' summary: at every size the leading run, its lead over the
//! runner-up (paired on the held-out examples, which every size shares), and where the
//! winner changes, in words.

use super::recommend::points;
use super::stats::compare_pairs;
use super::{Comparison, DataSize, DataSizes, RunResult, Verdict};

/// One data size below the full data, as the comparison trained it.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeRows {
    /// The share of every task's training set.
    pub fraction: f64,
    /// Training examples of each task.
    pub examples: Vec<usize>,
    /// Its trained runs, named as the full data's.
    pub runs: Vec<RunResult>,
}

/// The curves of `smaller` and the full data (`full`: the report's runs; `examples`: each
/// task's full training set); `None` without smaller sizes. Each size's lead is compared
/// paired, Holm-adjusted over the sizes.
pub(super) fn data_sizes(
    full: &[RunResult],
    examples: Vec<usize>,
    smaller: Vec<SizeRows>,
    reps: usize,
    seed: u64,
) -> Option<DataSizes> {
    if smaller.is_empty() {
        return None;
    }
    let mut sizes: Vec<DataSize> = smaller
        .into_iter()
        .map(|s| DataSize {
            fraction: s.fraction,
            examples: s.examples,
            runs: s.runs,
            leader: String::new(),
            lead: None,
        })
        .collect();
    sizes.sort_by(|a, b| a.fraction.total_cmp(&b.fraction));
    sizes.push(DataSize { fraction: 1.0, examples, runs: vec![], leader: String::new(), lead: None });
    let ranked: Vec<Vec<&RunResult>> = sizes
        .iter()
        .map(|s| {
            let runs = if s.fraction < 1.0 { &s.runs[..] } else { full };
            let mut r: Vec<&RunResult> = runs.iter().filter(|r| !r.is_base()).collect();
            r.sort_by(|a, b| b.macro_average().value.total_cmp(&a.macro_average().value));
            r
        })
        .collect();
    let pairs: Vec<(&RunResult, &RunResult)> = ranked.iter().filter_map(|r| Some((*r.first()?, *r.get(1)?))).collect();
    let mut leads = compare_pairs(pairs, reps, seed, false).into_iter().peekable();
    let mut chosen: Vec<(String, Option<Comparison>)> = Vec::new();
    for r in &ranked {
        let leader = r.first().map(|x| x.name.clone()).unwrap_or_default();
        let runner_up = r.get(1).map(|x| x.name.as_str());
        let lead = leads.next_if(|c| c.run == leader && Some(c.against.as_str()) == runner_up);
        chosen.push((leader, lead));
    }
    for (s, (leader, lead)) in sizes.iter_mut().zip(chosen) {
        s.leader = leader;
        s.lead = lead;
    }
    let text = winner_text(&sizes);
    Some(DataSizes { sizes, text })
}

/// `by +6.1 points [1.2, 11.0]`, and whether that is significant.
fn lead_text(s: &DataSize) -> String {
    match &s.lead {
        Some(c) if c.verdict == Verdict::Better => format!("by {}", points(&c.difference)),
        Some(c) => format!("by {}, not significant", points(&c.difference)),
        None => "alone".into(),
    }
}

/// Where the leader changes over the sizes (smallest first), or that it does not.
pub(super) fn winner_text(sizes: &[DataSize]) -> String {
    let Some(last) = sizes.last() else { return String::new() };
    let n = |s: &DataSize| format!("~{:.0}", s.mean_examples());
    // Runs of consecutive sizes with the same leader: (first size, last size).
    let mut segments: Vec<(usize, usize)> = Vec::new();
    for (k, s) in sizes.iter().enumerate() {
        match segments.last_mut() {
            Some((_, end)) if sizes[*end].leader == s.leader => *end = k,
            _ => segments.push((k, k)),
        }
    }
    if segments.len() == 1 {
        return format!(
            "The winner does not change over the sizes tried: {} leads at every size, from {} to {} training \
             examples per task ({} at the full data).",
            last.leader,
            n(&sizes[0]),
            n(last),
            lead_text(last)
        );
    }
    let (a, b) = segments[0];
    let mut text =
        format!("Up to {} examples per task {} leads ({} there)", n(&sizes[b]), sizes[a].leader, lead_text(&sizes[b]));
    for &(a, _) in &segments[1..] {
        text.push_str(&format!("; from {} {} does, {}", n(&sizes[a]), sizes[a].leader, lead_text(&sizes[a])));
    }
    text.push('.');
    let changes_significant = segments
        .iter()
        .any(|&(a, b)| [a, b].iter().any(|&k| sizes[k].lead.as_ref().is_some_and(|c| c.verdict == Verdict::Better)));
    if !changes_significant {
        text.push_str(
            " No leader is significantly ahead at any size: the held-out examples cannot tell whether the winner \
             really changes (more held-out examples, or seeds, would).",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::Estimate;

    fn size(fraction: f64, examples: usize, leader: &str, lead: Option<(f64, Verdict)>) -> DataSize {
        let lead = lead.map(|(d, verdict)| Comparison {
            run: leader.into(),
            against: "other".into(),
            task: None,
            difference: Estimate { value: d, lo: d - 0.05, hi: d + 0.05 },
            discordant: (0, 0),
            p_value: 0.0,
            p_adjusted: 0.0,
            verdict,
        });
        DataSize { fraction, examples: vec![examples, examples], runs: vec![], leader: leader.into(), lead }
    }

    #[test]
    fn the_sentence_says_where_the_winner_changes() {
        let sizes = [
            size(0.25, 75, "separate (routed)", Some((0.02, Verdict::Undecided))),
            size(0.5, 150, "combined (proportional)", Some((0.061, Verdict::Better))),
            size(1.0, 300, "combined (proportional)", Some((0.08, Verdict::Better))),
        ];
        assert_eq!(
            winner_text(&sizes),
            "Up to ~75 examples per task separate (routed) leads (by +2.0 points [-3.0, 7.0], not significant there); \
             from ~150 combined (proportional) does, by +6.1 points [1.1, 11.1]."
        );
    }

    #[test]
    fn an_unchanged_winner_and_changes_without_significance_are_said_so() {
        let same = [size(0.5, 10, "a", Some((0.1, Verdict::Better))), size(1.0, 20, "a", Some((0.1, Verdict::Better)))];
        assert_eq!(
            winner_text(&same),
            "The winner does not change over the sizes tried: a leads at every size, from ~10 to ~20 training \
             examples per task (by +10.0 points [5.0, 15.0] at the full data)."
        );
        let noisy = [size(0.5, 10, "a", Some((0.01, Verdict::Tied))), size(1.0, 20, "b", None)];
        let t = winner_text(&noisy);
        assert!(t.starts_with("Up to ~10 examples per task a leads"), "{t}");
        assert!(t.contains("from ~20 b does, alone."), "{t}");
        assert!(t.ends_with("(more held-out examples, or seeds, would)."), "{t}");
    }
}
