//! Exact match after normalisation (case, whitespace, punctuation).

use super::Metric;

/// Lower-case, punctuation to spaces, whitespace collapsed.
pub fn normalize_answer(s: &str) -> String {
    let kept: String = s
        .chars()
        .map(|c| if c.is_alphanumeric() || c.is_whitespace() { c.to_lowercase().next().unwrap_or(c) } else { ' ' })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Share of predictions equal to their reference after [`normalize_answer`].
#[derive(Debug, Clone, Default)]
pub struct ExactMatch {
    hits: usize,
    total: usize,
}

impl ExactMatch {
    /// 1 or 0 for one pair.
    pub fn score(prediction: &str, reference: &str) -> f64 {
        f64::from(u8::from(normalize_answer(prediction) == normalize_answer(reference)))
    }
}

impl Metric for ExactMatch {
    fn update(&mut self, prediction: &str, reference: &str) {
        self.total += 1;
        self.hits += Self::score(prediction, reference) as usize;
    }
    fn compute(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.hits as f64 / self.total as f64
        }
    }
    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_case_punctuation_and_spacing() {
        assert_eq!(normalize_answer("  The  Answer: 42!\n"), "the answer 42");
        let mut m = ExactMatch::default();
        m.update("Positive.", "positive");
        m.update("2021-03-05", "2021 03 05");
        m.update("negative", "positive");
        assert!((m.compute() - 2.0 / 3.0).abs() < 1e-12);
    }
}
