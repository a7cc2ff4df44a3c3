//! ROUGE-L: F-measure of the longest common subsequence of word tokens.

use super::{f1, words, MeanScore};

/// ROUGE-L F1; [`RougeL::metric`] averages it over pairs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RougeL;

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
        let (p, r) = (words(prediction), words(reference));
        f1(lcs(&p, &r), p.len(), r.len())
    }

    /// The mean over pairs, as a [`super::Metric`].
    pub fn metric() -> MeanScore {
        MeanScore::new(Self::score)
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
