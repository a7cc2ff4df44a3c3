//! ROUGE-L: F-measure of the longest common subsequence of word tokens.

use super::{words, Metric};

/// Mean ROUGE-L F1 over pairs.
#[derive(Debug, Clone, Default)]
pub struct RougeL {
    sum: f64,
    total: usize,
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

impl RougeL {
    /// ROUGE-L F1 of one pair.
    pub fn score(prediction: &str, reference: &str) -> f64 {
        let p = words(prediction);
        let r = words(reference);
        if p.is_empty() || r.is_empty() {
            return f64::from(u8::from(p.is_empty() && r.is_empty()));
        }
        let l = lcs(&p, &r) as f64;
        if l == 0.0 {
            return 0.0;
        }
        let (precision, recall) = (l / p.len() as f64, l / r.len() as f64);
        2.0 * precision * recall / (precision + recall)
    }
}

impl Metric for RougeL {
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
        // ref "the cat was found under the bed", pred "the cat was under the bed":
        // LCS = the cat was under the bed = 6; P = 6/6, R = 6/7, F = 12/13.
        assert!(
            (RougeL::score("the cat was under the bed", "the cat was found under the bed") - 12.0 / 13.0).abs() < 1e-12
        );
        // Order matters, unlike token F1: "b a" vs "a b" has LCS 1 -> P = R = 1/2.
        assert!((RougeL::score("b a", "a b") - 0.5).abs() < 1e-12);
        assert_eq!(RougeL::score("", ""), 1.0);
    }
}
