//! Formatting for people: durations, percentages, sizes, the run-time estimate and how
//! far an experiment is.

use multitune_api::{Run, Status, REPORT_ONLY_RUN_INDEX};

/// `95 s` → `1 min 35 s`; `3725` → `1 h 2 min`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "–".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// `0.7534` → `75.3%`.
pub fn percent(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// A value with its interval: `75.3% [61.0, 88.2]`.
pub fn with_interval(v: f64, lo: f64, hi: f64) -> String {
    format!("{} [{:.1}, {:.1}]", percent(v), 100.0 * lo, 100.0 * hi)
}

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    let f = n as f64;
    if f < 1024.0 {
        format!("{n} B")
    } else if f < 1024.0 * 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else if f < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", f / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", f / (1024.0 * 1024.0 * 1024.0))
    }
}

/// `2442240` → `2.44M`.
pub fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

/// Training throughput measured on this kind of machine (tokens/s), used before any
/// run of the model has reported its own.
pub fn default_tokens_per_s(model: &str) -> f64 {
    match model {
        "tiny" => 10_000.0,
        _ => 110.0,
    }
}

/// Training-time estimate of an experiment: every strategy trains the whole budget
/// A learning rate as the report writes it (`1e-3`); `-` when unknown.
pub fn learning_rate(lr: f64) -> String {
    if lr > 0.0 {
        format!("{lr:e}")
    } else {
        "-".into()
    }
}

/// (`trainings` counts the trainings: each strategy once, times the seeds).
pub fn estimate_seconds(budget_tokens: usize, trainings: usize, tokens_per_s: f64) -> f64 {
    if tokens_per_s <= 0.0 {
        return f64::INFINITY;
    }
    budget_tokens as f64 * trainings as f64 / tokens_per_s
}

/// How far an experiment is: `k of N runs trained` (N from its events: every strategy at
/// every data size and seed; a merge trains nothing and is not counted).
pub fn runs_trained(runs: &[Run], planned: usize) -> String {
    let done = runs.iter().filter(|r| r.index < REPORT_ONLY_RUN_INDEX && r.status == Status::Done).count();
    format!("{} of {planned} runs trained", done.min(planned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(index: usize, status: Status) -> Run {
        Run { status, ..Run::started("e", &format!("r{index}"), index) }
    }

    #[test]
    fn runs_trained_counts_the_finished_runs_that_train() {
        let runs = [
            run(0, Status::Done),
            run(1, Status::Done),
            run(2, Status::Running),
            // A merge, listed by the report only: it trains nothing.
            run(REPORT_ONLY_RUN_INDEX, Status::Done),
        ];
        assert_eq!(runs_trained(&runs, 6), "2 of 6 runs trained");
        assert_eq!(runs_trained(&runs[..0], 6), "0 of 6 runs trained");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(95.0), "1 min 35 s");
        assert_eq!(duration(3725.0), "1 h 2 min");
        assert_eq!(duration(f64::NAN), "–");
    }

    #[test]
    fn numbers_read_naturally() {
        assert_eq!(percent(0.7534), "75.3%");
        assert_eq!(with_interval(0.5, 0.25, 0.75), "50.0% [25.0, 75.0]");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10 << 20), "10.0 MiB");
        assert_eq!(count(2_442_240), "2.44M");
        assert_eq!(count(32_768), "32.8k");
        assert_eq!(
            (learning_rate(0.0003), learning_rate(1e-3), learning_rate(0.0)),
            ("3e-4".into(), "1e-3".into(), "-".into())
        );
    }

    #[test]
    fn estimate_scales_with_budget_and_trainings() {
        assert_eq!(estimate_seconds(16_000, 5, 100.0), 800.0);
        assert!(estimate_seconds(1, 1, 0.0).is_infinite());
    }
}
