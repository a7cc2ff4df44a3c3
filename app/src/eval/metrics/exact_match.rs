//! Exact match after normalisation (case, whitespace, punctuation).

use super::MeanScore;

/// Lower-case, punctuation to spaces, whitespace collapsed.
pub fn normalize_answer(s: &str) -> String {
    let kept: String = s
        .chars()
        .map(|c| if c.is_alphanumeric() || c.is_whitespace() { c.to_lowercase().next().unwrap_or(c) } else { ' ' })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Exact match after [`normalize_answer`]; [`ExactMatch::metric`] is the share of pairs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactMatch;

impl ExactMatch {
    /// 1 or 0 for one pair.
    pub fn score(prediction: &str, reference: &str) -> f64 {
        f64::from(u8::from(normalize_answer(prediction) == normalize_answer(reference)))
    }

    /// The share of matching pairs, as a [`super::Metric`].
    pub fn metric() -> MeanScore {
        MeanScore::new(Self::score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_case_punctuation_and_spacing() {
        assert_eq!(normalize_answer("  The  Answer: 42!\n"), "the answer 42");
        use crate::eval::metrics::Metric;
        let mut m = ExactMatch::metric();
        m.update("Positive.", "positive");
        m.update("2021-03-05", "2021 03 05");
        m.update("negative", "positive");
        assert!((m.compute() - 2.0 / 3.0).abs() < 1e-12);
    }
}
