//! The demo task suite, generated reproducibly from a seed (byte-identical on re-run):
//! two classification tasks close to each other (sentiment, topic) and two generation
//! tasks close to each other (arithmetic, date normalisation), so strategies have both
//! related and unrelated tasks to share or fight over.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::data::Record;
use crate::rng;
use crate::{persist, Result};

/// Train and eval examples per task.
pub const TRAIN: usize = 300;
/// Eval examples per task.
pub const EVAL: usize = 100;

/// The demo tasks, by file stem.
pub const TASKS: [&str; 4] = ["sentiment", "topic", "arithmetic", "dates"];

fn pick<'a>(r: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[r.random_range(0..xs.len())]
}

const GOOD: [&str; 12] = [
    "wonderful",
    "excellent",
    "delightful",
    "superb",
    "fantastic",
    "lovely",
    "brilliant",
    "great",
    "charming",
    "perfect",
    "pleasant",
    "impressive",
];
const BAD: [&str; 12] = [
    "terrible",
    "awful",
    "boring",
    "dreadful",
    "horrible",
    "disappointing",
    "poor",
    "dull",
    "broken",
    "useless",
    "mediocre",
    "annoying",
];
const THINGS: [&str; 10] =
    ["movie", "phone", "restaurant", "book", "hotel", "laptop", "concert", "game", "service", "museum"];
const OPENERS: [&str; 6] =
    ["Honestly, the", "I thought the", "Overall the", "My friend said the", "This time the", "To be fair, the"];

/// One sentiment example; a quarter are negated ("was not great" is negative).
pub fn sentiment_example(r: &mut ChaCha8Rng) -> Record {
    let positive_word = r.random_bool(0.5);
    let negated = r.random_bool(0.25);
    let adj = if positive_word { pick(r, &GOOD) } else { pick(r, &BAD) };
    let opener = pick(r, &OPENERS);
    let thing = pick(r, &THINGS);
    let text =
        if negated { format!("{opener} {thing} was not {adj}.") } else { format!("{opener} {thing} was {adj}.") };
    let positive = positive_word != negated;
    Record::new(
        format!("Classify the sentiment of this review as positive or negative.\nReview: {text}"),
        if positive { "positive" } else { "negative" },
    )
}

/// One topic example: a headline about sports, politics, technology or food.
pub fn topic_example(r: &mut ChaCha8Rng) -> Record {
    const TOPICS: [(&str, [&str; 6], [&str; 5]); 4] = [
        (
            "sports",
            ["striker", "coach", "goalkeeper", "tennis champion", "marathon runner", "rookie"],
            [
                "wins the final",
                "signs a new contract",
                "breaks the league record",
                "is injured before the derby",
                "retires after the season",
            ],
        ),
        (
            "politics",
            ["senator", "prime minister", "city council", "opposition leader", "minister", "parliament"],
            [
                "proposes a new tax bill",
                "faces a vote of confidence",
                "announces an election date",
                "rejects the budget",
                "wins the referendum",
            ],
        ),
        (
            "technology",
            ["startup", "chip maker", "app developer", "software giant", "robotics lab", "phone maker"],
            [
                "releases a faster processor",
                "patches a security flaw",
                "launches an AI assistant",
                "opens its source code",
                "recalls a faulty battery",
            ],
        ),
        (
            "food",
            ["bakery", "chef", "food truck", "vineyard", "noodle bar", "cheese maker"],
            [
                "wins a Michelin star",
                "launches a vegan menu",
                "revives a family recipe",
                "opens a second kitchen",
                "sells out of sourdough",
            ],
        ),
    ];
    let (label, subjects, events) = TOPICS[r.random_range(0..4)];
    let place = pick(r, &["Local", "National", "Veteran", "Young", "Famous", "Small-town"]);
    Record::new(
        format!(
            "What is the topic of this headline? Answer sports, politics, technology or food.\nHeadline: {place} {} {}",
            pick(r, &subjects),
            pick(r, &events)
        ),
        label,
    )
}

/// One arithmetic example: two-digit addition or subtraction, or a product with a digit.
pub fn arithmetic_example(r: &mut ChaCha8Rng) -> Record {
    let (a, b) = (r.random_range(10..100i64), r.random_range(10..100i64));
    let (q, ans) = match r.random_range(0..3) {
        0 => (format!("{a} + {b}"), a + b),
        1 => (format!("{a} - {b}"), a - b),
        _ => {
            let d = r.random_range(2..10i64);
            (format!("{a} * {d}"), a * d)
        }
    };
    Record::new(format!("Compute and answer with the number only: {q}"), ans.to_string())
}

/// One date-normalisation example: a date in one of several styles to ISO 8601.
pub fn date_example(r: &mut ChaCha8Rng) -> Record {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let y = r.random_range(1950..2031);
    let m = r.random_range(1..=12usize);
    let d = r.random_range(1..=28usize);
    let name = MONTHS[m - 1];
    let suffix = match d {
        1 | 21 => "st",
        2 | 22 => "nd",
        3 | 23 => "rd",
        _ => "th",
    };
    let text = match r.random_range(0..5) {
        0 => format!("{name} {d}, {y}"),
        1 => format!("{d} {name} {y}"),
        2 => format!("{}. {d}{suffix} {y}", &name[..3]),
        3 => format!("{m}/{d}/{y} (US style)"),
        _ => format!("the {d}{suffix} of {name}, {y}"),
    };
    Record::new(format!("Rewrite this date as YYYY-MM-DD: {text}"), format!("{y:04}-{m:02}-{d:02}"))
}

/// `train` + `eval` distinct examples of `task` (no eval prompt occurs in train).
pub fn task_split(task: &str, train: usize, eval: usize, seed: u64) -> Option<(Vec<Record>, Vec<Record>)> {
    let make: fn(&mut ChaCha8Rng) -> Record = match task {
        "sentiment" => sentiment_example,
        "topic" => topic_example,
        "arithmetic" => arithmetic_example,
        "dates" => date_example,
        _ => return None,
    };
    let stream = 100 + TASKS.iter().position(|t| *t == task)? as u64;
    let mut r = rng::stream(seed, stream, 0);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(train + eval);
    let mut tries = 0;
    while out.len() < train + eval && tries < 100 * (train + eval) {
        tries += 1;
        let rec = make(&mut r);
        if seen.insert(rec.prompt.clone()) {
            out.push(rec);
        }
    }
    let eval_part = out.split_off(train.min(out.len()));
    Some((out, eval_part))
}

/// The sentiment split used by quick tests (smaller than the demo files).
pub fn sentiment_split(train: usize, eval: usize, seed: u64) -> (Vec<Record>, Vec<Record>) {
    task_split("sentiment", train, eval, seed).expect("sentiment is a demo task")
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

/// Writes `<task>.jsonl` (train) and `eval/<task>.jsonl` for every demo task into `dir`.
pub fn write_demo(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for task in TASKS {
        let (train, eval) = task_split(task, TRAIN, EVAL, 1).expect("known task");
        for (p, recs) in
            [(dir.join(format!("{task}.jsonl")), train), (dir.join("eval").join(format!("{task}.jsonl")), eval)]
        {
            persist::write_atomic(&p, to_jsonl(&recs)?.as_bytes())?;
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{self, LoadOptions, TaskKind};

    #[test]
    fn splits_are_reproducible_disjoint_and_full() {
        for task in TASKS {
            let (train, eval) = task_split(task, TRAIN, EVAL, 1).unwrap();
            assert_eq!((train.len(), eval.len()), (TRAIN, EVAL), "{task}");
            assert_eq!(task_split(task, TRAIN, EVAL, 1).unwrap().0, train);
            let prompts: HashSet<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
            assert!(eval.iter().all(|e| !prompts.contains(e.prompt.as_str())), "{task}: eval overlaps train");
        }
    }

    #[test]
    fn answers_are_right() {
        let mut r = rng::stream(3, 0, 0);
        for _ in 0..50 {
            let a = arithmetic_example(&mut r);
            let q = a.prompt.rsplit(": ").next().unwrap();
            let parts: Vec<&str> = q.split(' ').collect();
            let (x, y): (i64, i64) = (parts[0].parse().unwrap(), parts[2].parse().unwrap());
            let want = match parts[1] {
                "+" => x + y,
                "-" => x - y,
                _ => x * y,
            };
            assert_eq!(a.completion, want.to_string());
            let d = date_example(&mut r);
            assert_eq!(d.completion.len(), 10);
            let year = &d.completion[..4];
            assert!(d.prompt.contains(year), "{d:?}");
        }
        let s = Record::new("Classify the sentiment of this review as positive or negative.\nReview: x", "negative");
        let mut r = rng::stream(4, 0, 0);
        let negated: Vec<Record> =
            (0..200).map(|_| sentiment_example(&mut r)).filter(|e| e.prompt.contains(" not ")).collect();
        assert!(!negated.is_empty());
        for e in negated {
            let adj = e.prompt.trim_end_matches('.').rsplit(' ').next().unwrap();
            let want = if GOOD.contains(&adj) { "negative" } else { "positive" };
            assert_eq!(e.completion, want, "{e:?}");
        }
        assert_eq!(s.completion, "negative");
    }

    #[test]
    fn committed_demo_files_match_the_generator_and_load_with_the_right_kinds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo");
        let tmp = tempfile::tempdir().unwrap();
        for p in write_demo(tmp.path()).unwrap() {
            let rel = p.strip_prefix(tmp.path()).unwrap();
            let committed = std::fs::read(dir.join(rel)).expect("assets/demo is committed: run `make demo-data`");
            assert_eq!(std::fs::read(&p).unwrap(), committed, "{rel:?} differs from the generator's output");
        }
        for (task, kind) in [
            ("sentiment", TaskKind::Classification),
            ("topic", TaskKind::Classification),
            ("arithmetic", TaskKind::Generation),
            ("dates", TaskKind::Generation),
        ] {
            let d = data::load(&dir.join(format!("{task}.jsonl")), &LoadOptions::default()).unwrap();
            assert_eq!(d.kind, kind, "{task}");
            assert!(d.warnings.is_empty(), "{task}: {:?}", d.warnings);
        }
    }
}
