//! Token F1 (as in SQuAD): harmonic mean of precision and recall of the bag of
//! normalised word tokens.

use std::collections::HashMap;

use super::{f1, words, MeanScore};

/// Token F1; [`TokenF1::metric`] averages it over pairs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenF1;

impl TokenF1 {
    /// F1 of one pair.
    pub fn score(prediction: &str, reference: &str) -> f64 {
        let (p, r) = (words(prediction), words(reference));
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for w in &r {
            *counts.entry(w.as_str()).or_insert(0) += 1;
        }
        let mut common = 0usize;
        for w in &p {
            if let Some(c) = counts.get_mut(w.as_str()).filter(|c| **c > 0) {
                *c -= 1;
                common += 1;
            }
        }
        f1(common, p.len(), r.len())
    }

    /// The mean over pairs, as a [`super::Metric`].
    pub fn metric() -> MeanScore {
        MeanScore::new(Self::score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::Metric;

    #[test]
    fn matches_hand_computation() {
        // pred "the cat sat" vs ref "a cat sat down": common {cat, sat} = 2;
        // precision 2/3, recall 2/4, F1 = 2*(2/3)*(1/2)/((2/3)+(1/2)) = 4/7.
        assert!((TokenF1::score("The cat sat.", "a cat sat down") - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(TokenF1::score("x", "y"), 0.0);
        assert_eq!(TokenF1::score("same words", "Same, words!"), 1.0);
        // Repeated words count once per occurrence in the reference.
        assert!((TokenF1::score("a a a", "a") - 0.5).abs() < 1e-12);
        let mut m = TokenF1::metric();
        m.update("x", "x");
        m.update("x", "y");
        assert_eq!(m.compute(), 0.5);
    }
}
