//! Token F1 (as in SQuAD): harmonic mean of precision and recall of the bag of
//! normalised word tokens.

use std::collections::HashMap;

use super::{words, Metric};

/// Mean token F1 over pairs.
#[derive(Debug, Clone, Default)]
pub struct TokenF1 {
    sum: f64,
    total: usize,
}

impl TokenF1 {
    /// F1 of one pair.
    pub fn score(prediction: &str, reference: &str) -> f64 {
        let p = words(prediction);
        let r = words(reference);
        if p.is_empty() || r.is_empty() {
            return f64::from(u8::from(p.is_empty() && r.is_empty()));
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for w in &r {
            *counts.entry(w.as_str()).or_insert(0) += 1;
        }
        let mut common = 0usize;
        for w in &p {
            if let Some(c) = counts.get_mut(w.as_str()) {
                if *c > 0 {
                    *c -= 1;
                    common += 1;
                }
            }
        }
        if common == 0 {
            return 0.0;
        }
        let precision = common as f64 / p.len() as f64;
        let recall = common as f64 / r.len() as f64;
        2.0 * precision * recall / (precision + recall)
    }
}

impl Metric for TokenF1 {
    fn update(&mut self, prediction: &str, reference: &str) {
        self.sum += Self::score(prediction, reference);
        self.total += 1;
    }
    fn compute(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum / self.total as f64
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
    fn matches_hand_computation() {
        // pred "the cat sat" vs ref "a cat sat down": common {cat, sat} = 2;
        // precision 2/3, recall 2/4, F1 = 2*(2/3)*(1/2)/((2/3)+(1/2)) = 4/7.
        assert!((TokenF1::score("The cat sat.", "a cat sat down") - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(TokenF1::score("x", "y"), 0.0);
        assert_eq!(TokenF1::score("same words", "Same, words!"), 1.0);
        // Repeated words count once per occurrence in the reference.
        assert!((TokenF1::score("a a a", "a") - 0.5).abs() < 1e-12);
    }
}
