//! Task metrics, one per file, each with `update` / `compute` / `clear` (per-pair scores
//! through [`MeanScore`]), and seeded bootstrap intervals for all of them.

pub mod accuracy;
pub mod bootstrap;
pub mod confusion;
pub mod exact_match;
pub mod paired;
pub mod rouge_l;
pub mod token_f1;

pub use accuracy::Accuracy;
pub use bootstrap::{bootstrap_interval, Estimate};
pub use confusion::Confusion;
pub use exact_match::{normalize_answer, ExactMatch};
pub use paired::{
    detectable_difference, discordant, examples_needed, holm, mcnemar_exact, paired_difference, paired_macro_difference,
};
pub use rouge_l::RougeL;
pub use token_f1::TokenF1;

/// A metric that accumulates (prediction, reference) pairs.
pub trait Metric {
    /// Adds one scored example.
    fn update(&mut self, prediction: &str, reference: &str);
    /// The value over everything added (0 when empty).
    fn compute(&self) -> f64;
    /// Forgets everything added.
    fn clear(&mut self);
}

/// The mean of a per-pair score over everything added.
#[derive(Debug, Clone)]
pub struct MeanScore {
    score: fn(&str, &str) -> f64,
    sum: f64,
    total: usize,
}

impl MeanScore {
    /// Averages `score(prediction, reference)`.
    pub fn new(score: fn(&str, &str) -> f64) -> Self {
        Self { score, sum: 0.0, total: 0 }
    }
}

impl Metric for MeanScore {
    fn update(&mut self, prediction: &str, reference: &str) {
        self.sum += (self.score)(prediction, reference);
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
        self.sum = 0.0;
        self.total = 0;
    }
}

/// F1 of `matched` items out of `predicted` and `reference` counts; two empty sides
/// agree perfectly, one empty side not at all.
pub fn f1(matched: usize, predicted: usize, reference: usize) -> f64 {
    if predicted == 0 || reference == 0 {
        return f64::from(u8::from(predicted == 0 && reference == 0));
    }
    if matched == 0 {
        return 0.0;
    }
    let (p, r) = (matched as f64 / predicted as f64, matched as f64 / reference as f64);
    2.0 * p * r / (p + r)
}

/// Lower-cased word tokens after answer normalisation (for F1 and ROUGE-L).
pub fn words(s: &str) -> Vec<String> {
    normalize_answer(s).split_whitespace().map(String::from).collect()
}
