//! Accuracy: the share of predictions equal to their reference label.

use super::Metric;

/// Accuracy over exact label matches.
#[derive(Debug, Clone, Default)]
pub struct Accuracy {
    correct: usize,
    total: usize,
}

impl Metric for Accuracy {
    fn update(&mut self, prediction: &str, reference: &str) {
        self.total += 1;
        if prediction == reference {
            self.correct += 1;
        }
    }
    fn compute(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
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
    fn counts_exact_matches() {
        let mut a = Accuracy::default();
        for (p, r) in [("a", "a"), ("b", "a"), ("c", "c"), ("a", "b")] {
            a.update(p, r);
        }
        assert_eq!(a.compute(), 0.5);
        a.clear();
        assert_eq!(a.compute(), 0.0);
    }
}
