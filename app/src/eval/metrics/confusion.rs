//! Confusion matrix over a label set, and macro-averaged F1 from it.

use serde::{Deserialize, Serialize};

use super::Metric;

/// Counts of (reference, prediction) pairs; rows are references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    /// The labels, in row/column order.
    pub labels: Vec<String>,
    /// `counts[reference][prediction]`.
    pub counts: Vec<Vec<usize>>,
}

impl Confusion {
    /// An empty matrix over `labels`.
    pub fn new(labels: &[String]) -> Self {
        Self { labels: labels.to_vec(), counts: vec![vec![0; labels.len()]; labels.len()] }
    }

    fn index(&self, l: &str) -> Option<usize> {
        self.labels.iter().position(|x| x == l)
    }

    /// Macro-F1: the unweighted mean over labels of per-label F1 (a label with no
    /// reference and no prediction is left out; one with either but no hit scores 0).
    pub fn macro_f1(&self) -> f64 {
        let n = self.labels.len();
        let mut sum = 0.0;
        let mut k = 0;
        for i in 0..n {
            let tp = self.counts[i][i] as f64;
            let refs: usize = self.counts[i].iter().sum();
            let preds: usize = (0..n).map(|r| self.counts[r][i]).sum();
            if refs == 0 && preds == 0 {
                continue;
            }
            k += 1;
            if tp > 0.0 {
                let p = tp / preds as f64;
                let r = tp / refs as f64;
                sum += 2.0 * p * r / (p + r);
            }
        }
        if k == 0 {
            0.0
        } else {
            sum / k as f64
        }
    }
}

impl Metric for Confusion {
    fn update(&mut self, prediction: &str, reference: &str) {
        if let (Some(r), Some(p)) = (self.index(reference), self.index(prediction)) {
            self.counts[r][p] += 1;
        }
    }
    fn compute(&self) -> f64 {
        self.macro_f1()
    }
    fn clear(&mut self) {
        self.counts.iter_mut().for_each(|r| r.iter_mut().for_each(|c| *c = 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_matches_hand_computation() {
        // refs:  a a a b b c ; preds: a a b b c c
        // a: tp2 p=2/2 r=2/3 f1=0.8; b: tp1 p=1/2 r=1/2 f1=0.5; c: tp1 p=1/2 r=1 f1=2/3
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut m = Confusion::new(&labels);
        for (p, r) in [("a", "a"), ("a", "a"), ("b", "a"), ("b", "b"), ("c", "b"), ("c", "c")] {
            m.update(p, r);
        }
        assert_eq!(m.counts, vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
        let want = (0.8 + 0.5 + 2.0 / 3.0) / 3.0;
        assert!((m.compute() - want).abs() < 1e-12);
    }

    #[test]
    fn a_never_predicted_label_scores_zero() {
        let labels: Vec<String> = ["x", "y"].iter().map(|s| s.to_string()).collect();
        let mut m = Confusion::new(&labels);
        m.update("x", "x");
        m.update("x", "y");
        // x: p=1/2 r=1 f1=2/3; y: f1=0
        assert!((m.compute() - 1.0 / 3.0).abs() < 1e-12);
    }
}
