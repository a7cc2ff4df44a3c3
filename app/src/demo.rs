//! The demo task data, generated reproducibly from a seed (byte-identical on re-run).
//! For now one task, sentiment; the datasets issue grows this into the full suite.

use std::path::Path;

use rand::Rng;

use crate::data::Record;
use crate::rng;
use crate::{checkpoint, Result};

const GOOD: [&str; 10] = ["wonderful", "excellent", "delightful", "superb", "fantastic", "lovely", "brilliant", "great", "charming", "perfect"];
const BAD: [&str; 10] = ["terrible", "awful", "boring", "dreadful", "horrible", "disappointing", "poor", "dull", "broken", "useless"];
const THINGS: [&str; 8] = ["movie", "phone", "restaurant", "book", "hotel", "laptop", "concert", "game"];
const OPENERS: [&str; 5] = ["Honestly, the", "I thought the", "Overall the", "My friend said the", "This time the"];

/// `n` one-word sentiment examples (`positive` / `negative`), seeded. The base model
/// answers these in sentences, so exact match shows what fine-tuning adds.
pub fn sentiment(n: usize, seed: u64) -> Vec<Record> {
    let mut r = rng::stream(seed, rng::streams::SPLIT, 100);
    (0..n)
        .map(|_| {
            let positive = r.random_bool(0.5);
            let adj = if positive { GOOD[r.random_range(0..10)] } else { BAD[r.random_range(0..10)] };
            let text = format!("{} {} was {}.", OPENERS[r.random_range(0..5)], THINGS[r.random_range(0..8)], adj);
            Record {
                prompt: format!("Classify the sentiment of this review as positive or negative.\nReview: {text}"),
                completion: if positive { "positive" } else { "negative" }.into(),
            }
        })
        .collect()
}

/// A train/eval split of distinct sentiment examples: no eval prompt occurs in train.
pub fn sentiment_split(train: usize, eval: usize, seed: u64) -> (Vec<Record>, Vec<Record>) {
    let mut seen = std::collections::HashSet::new();
    let mut unique = Vec::with_capacity(train + eval);
    let mut round = 0;
    while unique.len() < train + eval && round < 64 {
        for r in sentiment(train + eval, seed.wrapping_add(round * 7919)) {
            if unique.len() < train + eval && seen.insert(r.prompt.clone()) {
                unique.push(r);
            }
        }
        round += 1;
    }
    let eval_part = unique.split_off(train.min(unique.len()));
    (unique, eval_part)
}

/// JSONL text of records.
pub fn to_jsonl(recs: &[Record]) -> Result<String> {
    let mut s = String::new();
    for r in recs {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    Ok(s)
}

/// Writes the demo files into `dir`; returns their paths.
pub fn write_demo(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let (train, eval) = sentiment_split(96, 32, 1);
    let files = [("sentiment_train.jsonl", train), ("sentiment_eval.jsonl", eval)];
    let mut out = Vec::new();
    for (name, recs) in files {
        let p = dir.join(name);
        checkpoint::write_atomic(&p, to_jsonl(&recs)?.as_bytes())?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_data_is_reproducible_and_balanced() {
        let a = to_jsonl(&sentiment(200, 1)).unwrap();
        assert_eq!(a, to_jsonl(&sentiment(200, 1)).unwrap());
        assert_ne!(a, to_jsonl(&sentiment(200, 2)).unwrap());
        let pos = sentiment(200, 1).iter().filter(|r| r.completion == "positive").count();
        assert!((70..130).contains(&pos), "{pos}");
    }

    #[test]
    fn split_is_disjoint() {
        let (train, eval) = sentiment_split(96, 32, 1);
        assert_eq!((train.len(), eval.len()), (96, 32));
        assert!(eval.iter().all(|e| train.iter().all(|t| t.prompt != e.prompt)));
    }

    #[test]
    fn committed_demo_files_match_the_generator() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo");
        let tmp = tempfile::tempdir().unwrap();
        for p in write_demo(tmp.path()).unwrap() {
            let name = p.file_name().unwrap();
            let committed = std::fs::read(dir.join(name)).expect("assets/demo is committed: run `multitune demo-data`");
            assert_eq!(std::fs::read(&p).unwrap(), committed, "{name:?} differs from the generator's output");
        }
    }
}
