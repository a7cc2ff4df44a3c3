//! A task of a comparison: its name, kind and labels, its training examples and the
//! held-out examples every run is scored on.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::{load, split_indices, LoadOptions, Record, Split, TaskKind, TaskSpec};
use crate::Result;

/// Where a task's held-out examples come from: a file of their own (read as the same
/// kind as the training file), or else a seeded `split` share of the training file; at
/// most `limit` are kept.
#[derive(Debug, Clone, Default)]
pub struct HeldOut<'a> {
    /// A held-out file.
    pub file: Option<&'a Path>,
    /// Without a file: the share of the training file held out.
    pub split: f64,
    /// The split's seed.
    pub seed: u64,
    /// Keep at most this many.
    pub limit: Option<usize>,
}

/// One task: its training and held-out examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskData {
    /// Name (file stem).
    pub name: String,
    /// Classification or generation.
    pub kind: TaskKind,
    /// Label set (classification).
    pub labels: Vec<String>,
    /// Training examples.
    pub train: Vec<Record>,
    /// Held-out examples.
    pub eval: Vec<Record>,
}

impl TaskData {
    /// Task `name` from a training file and its held-out examples as `held_out` says,
    /// both read with `opts`.
    pub fn load(name: &str, train: &Path, held_out: &HeldOut, opts: &LoadOptions) -> Result<Self> {
        let d = load(train, opts)?;
        let (train, mut eval) = match held_out.file {
            Some(f) => {
                let held_out = LoadOptions { kind: Some(d.kind), ..opts.clone() };
                (d.records.clone(), load(f, &held_out)?.records)
            }
            None => {
                let split = Split::Fraction(held_out.split);
                let (ti, ei) = split_indices(d.records.len(), split, held_out.seed)?;
                (ti.iter().map(|&i| d.records[i].clone()).collect(), ei.iter().map(|&i| d.records[i].clone()).collect())
            }
        };
        if let Some(n) = held_out.limit {
            eval.truncate(n);
        }
        Ok(Self { name: name.into(), kind: d.kind, labels: d.labels, train, eval })
    }

    /// Keep set `name` from a file: every example held out (at most `limit`), none to
    /// train on — it is scored, never trained.
    pub fn keep_set(name: &str, file: &Path, limit: Option<usize>, opts: &LoadOptions) -> Result<Self> {
        let d = load(file, opts)?;
        let mut eval = d.records;
        if let Some(n) = limit {
            eval.truncate(n);
        }
        Ok(Self { name: name.into(), kind: d.kind, labels: d.labels, train: vec![], eval })
    }

    /// The task's name, kind and labels.
    pub fn spec(&self) -> TaskSpec {
        TaskSpec { name: self.name.clone(), kind: self.kind, labels: self.labels.clone() }
    }
}
