//! Task metrics, one per file, each with `update` / `compute` / `clear`, and seeded
//! bootstrap intervals for all of them.

pub mod accuracy;
pub mod bootstrap;
pub mod confusion;
pub mod exact_match;
pub mod rouge_l;
pub mod token_f1;

pub use accuracy::Accuracy;
pub use bootstrap::{bootstrap_interval, Estimate};
pub use confusion::Confusion;
pub use exact_match::{normalize_answer, ExactMatch};
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

/// Lower-cased word tokens after answer normalisation (for F1 and ROUGE-L).
pub fn words(s: &str) -> Vec<String> {
    normalize_answer(s).split_whitespace().map(String::from).collect()
}
