//! Task datasets: every common format in (JSONL or CSV), judged whole before anything is
//! accepted. Errors name line, column (CSV), field and reason; warnings (duplicates,
//! imbalance, overlap with the eval split) are reported with an accepted dataset.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

pub use super::formats::Format;

use crate::data::Record;
use crate::rng::{self, streams};
use crate::{Error, Result};

/// What a task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Pick one label from a fixed set.
    Classification,
    /// Produce free text.
    Generation,
}

impl TaskKind {
    /// Parses `classification` / `generation`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "classification" | "class" => Some(Self::Classification),
            "generation" | "gen" => Some(Self::Generation),
            _ => None,
        }
    }
}

/// What identifies a task to the model and its scorers: its name, its kind and (for
/// classification) its label set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Name (file stem, or the dataset's name).
    pub name: String,
    /// Classification or generation.
    pub kind: TaskKind,
    /// Label set (classification; empty for generation).
    pub labels: Vec<String>,
}

/// One problem with one place of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// 1-based line (0: the file as a whole).
    pub line: usize,
    /// 1-based column, for CSV.
    pub column: Option<usize>,
    /// The field concerned.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl Issue {
    /// A problem with a whole line.
    pub fn line(line: usize, reason: impl Into<String>) -> Self {
        Self { line, column: None, field: None, reason: reason.into() }
    }
    /// A problem at a CSV line and column.
    pub fn at(line: usize, column: usize, reason: impl Into<String>) -> Self {
        Self { line, column: Some(column), field: None, reason: reason.into() }
    }
    /// A problem with a named field of a line.
    pub fn field(line: usize, field: &str, reason: String) -> Self {
        Self { line, column: None, field: Some(field.into()), reason }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "file")?;
        } else {
            write!(f, "line {}", self.line)?;
        }
        if let Some(c) = self.column {
            write!(f, ", column {c}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// At most this many issues are listed; the rest are counted.
pub const MAX_LISTED: usize = 50;

/// Why a file was rejected: the first [`MAX_LISTED`] issues and how many there were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The file's name.
    pub file: String,
    /// Listed issues.
    pub issues: Vec<Issue>,
    /// All issues found.
    pub total: usize,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: rejected, {} problem{}", self.file, self.total, if self.total == 1 { "" } else { "s" })?;
        for i in &self.issues {
            write!(f, "\n  {i}")?;
        }
        if self.total > self.issues.len() {
            write!(f, "\n  … and {} more", self.total - self.issues.len())?;
        }
        Ok(())
    }
}

/// Size limits, all configurable.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest file, bytes.
    pub max_bytes: u64,
    /// Most rows.
    pub max_rows: usize,
    /// Longest field, characters.
    pub max_field_chars: usize,
    /// Most labels of a classification task.
    pub max_labels: usize,
    /// Longest example in tokens (see [`OverlongPolicy`]).
    pub max_tokens: usize,
    /// What happens to longer examples.
    pub overlong: OverlongPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_rows: 200_000,
            max_field_chars: 20_000,
            max_labels: 50,
            max_tokens: 512,
            overlong: OverlongPolicy::Truncate,
        }
    }
}

/// What to do with examples over `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlongPolicy {
    /// Cut the prompt from its start (the completion is kept).
    Truncate,
    /// Leave the example out.
    Drop,
}

/// How to read a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadOptions {
    /// Force a format instead of detecting it.
    pub format: Option<Format>,
    /// Force a kind instead of inferring it.
    pub kind: Option<TaskKind>,
    /// Limits.
    pub limits: Limits,
}

/// An accepted dataset: one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// The format it was read in.
    pub format: Format,
    /// Classification or generation.
    pub kind: TaskKind,
    /// The label set of a classification task, sorted.
    pub labels: Vec<String>,
    /// The examples.
    pub records: Vec<Record>,
    /// The source line of each record.
    pub lines: Vec<usize>,
    /// Things worth knowing that do not block use.
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Examples per label, for classification tasks.
    pub fn label_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in &self.records {
            *m.entry(r.completion.clone()).or_insert(0) += 1;
        }
        m
    }
}

struct Collector {
    issues: Vec<Issue>,
    total: usize,
}

impl Collector {
    fn push(&mut self, i: Issue) {
        self.total += 1;
        if self.issues.len() < MAX_LISTED {
            self.issues.push(i);
        }
    }
}

/// A task's name from its file's name (a path's last part, up to the first `.`): letters,
/// digits, `-` and `_` only (others become `_`), at most 64; `task` when nothing is left.
/// The CLI names tasks by their files and the server by uploads, both through this.
pub fn task_name(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or("");
    let stem = base.split('.').next().unwrap_or("");
    let clean: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(64)
        .collect();
    let clean = clean.trim_matches('_').to_string();
    if clean.is_empty() {
        "task".into()
    } else {
        clean
    }
}

/// Reads and judges a dataset file.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let meta = std::fs::metadata(path).map_err(|e| Error::file(path, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if meta.len() > opts.limits.max_bytes {
        return Err(Error::Dataset(Rejection {
            file: name,
            issues: vec![Issue::line(0, format!("is {} bytes; the limit is {}", meta.len(), opts.limits.max_bytes))],
            total: 1,
        }));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let csv_hint = path.extension().map(|e| e.eq_ignore_ascii_case("csv"));
    parse(&name, &bytes, csv_hint, opts).map_err(Error::Dataset)
}

/// Judges the bytes of a dataset. `csv` says whether the file is CSV (`None`: guess
/// from the first character).
pub fn parse(
    name: &str,
    bytes: &[u8],
    csv: Option<bool>,
    opts: &LoadOptions,
) -> std::result::Result<Dataset, Rejection> {
    let mut c = Collector { issues: vec![], total: 0 };
    let reject = |c: Collector| Rejection { file: name.into(), issues: c.issues, total: c.total };
    if bytes.len() as u64 > opts.limits.max_bytes {
        c.push(Issue::line(0, format!("is {} bytes; the limit is {}", bytes.len(), opts.limits.max_bytes)));
        return Err(reject(c));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    check_encoding(bytes, &mut c);
    if c.total > 0 {
        return Err(reject(c));
    }
    let text = std::str::from_utf8(bytes).expect("validated above");
    if text.trim().is_empty() {
        c.push(Issue::line(0, "is empty"));
        return Err(reject(c));
    }
    let is_csv = csv.unwrap_or_else(|| !text.trim_start().starts_with('{'));
    let rows = if is_csv { read_csv(text, opts.format, &mut c) } else { Some(read_jsonl(text, opts.format, &mut c)) };
    let Some(Rows { format, records, lines }) = rows else { return Err(reject(c)) };
    check_limits(&records, &lines, &opts.limits, &mut c);
    let Some(format) = format else {
        if c.total == 0 {
            c.push(Issue::line(0, "has no examples"));
        }
        return Err(reject(c));
    };
    if c.total > 0 {
        return Err(reject(c));
    }
    let kind = opts.kind.unwrap_or_else(|| infer_kind(format, &records, opts.limits.max_labels));
    let labels =
        if kind == TaskKind::Classification { label_set(&records, &lines, &opts.limits, &mut c) } else { vec![] };
    if c.total > 0 {
        return Err(reject(c));
    }
    let warnings = warnings(&records, &lines, kind);
    Ok(Dataset { format, kind, labels, records, lines, warnings })
}

/// Encoding problems first, per line, so each is named even in a broken file.
fn check_encoding(bytes: &[u8], c: &mut Collector) {
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if let Err(e) = std::str::from_utf8(line) {
            c.push(Issue::at(i + 1, e.valid_up_to() + 1, "invalid UTF-8"));
        } else if let Some(p) = line.iter().position(|&b| b == 0) {
            c.push(Issue::at(i + 1, p + 1, "NUL byte"));
        }
    }
}

/// The records read from a file, with the line of each and the format found.
struct Rows {
    format: Option<Format>,
    records: Vec<Record>,
    lines: Vec<usize>,
}

/// Reads CSV rows in `format` (or the one the header names). `None` when the header
/// already rules the file out (the issues say why).
fn read_csv(text: &str, format: Option<Format>, c: &mut Collector) -> Option<Rows> {
    let (mut records, mut lines) = (Vec::new(), Vec::new());
    let (rows, issues) = crate::data::csv::parse(text);
    issues.into_iter().for_each(|i| c.push(i));
    let Some((head, body)) = rows.split_first() else {
        c.push(Issue::line(0, "has no header row"));
        return None;
    };
    let header: Vec<String> = head.fields.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    let has = |k: &str| header.iter().any(|h| h == k);
    let fmt = match format.or_else(|| Format::detect(has)) {
        Some(f) => f,
        None => {
            c.push(Issue::line(head.line, format!("header `{}` does not name a known format (prompt,completion | instruction,input,output | text,label)", head.fields.join(","))));
            return None;
        }
    };
    match fmt.csv_columns() {
        None => c.push(Issue::line(0, format!("the {} format cannot be CSV; use JSONL", fmt.name()))),
        Some(cols) => {
            for col in cols {
                if !has(col) {
                    c.push(Issue::field(head.line, col, "missing from the header".into()));
                }
            }
        }
    }
    if c.total > 0 {
        return None;
    }
    for row in body {
        if row.fields.len() != header.len() {
            c.push(Issue::at(
                row.line,
                row.fields.len().min(header.len()) + 1,
                format!("row has {} fields; the header has {}", row.fields.len(), header.len()),
            ));
            continue;
        }
        match crate::data::formats::extract(
            fmt,
            &crate::data::formats::CsvFields { header: &header, values: &row.fields },
            row.line,
        ) {
            Ok(r) => {
                records.push(r);
                lines.push(row.line);
            }
            Err(mut i) => {
                i.column = i.field.as_ref().and_then(|f| header.iter().position(|h| h == f)).map(|p| p + 1);
                c.push(i)
            }
        }
    }
    Some(Rows { format: Some(fmt), records, lines })
}

/// Reads JSONL lines: the format is detected per line (or forced), and a line in
/// another format than the ones before it is an issue.
fn read_jsonl(text: &str, forced: Option<Format>, c: &mut Collector) -> Rows {
    let (mut records, mut lines) = (Vec::new(), Vec::new());
    let mut format = forced;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                c.push(Issue::at(n, e.column(), format!("invalid JSON: {e}")));
                continue;
            }
        };
        let Some(obj) = v.as_object() else {
            c.push(Issue::line(n, "is not a JSON object"));
            continue;
        };
        let detected = Format::detect(|k| obj.contains_key(k));
        let fmt = match (format, detected) {
            (Some(f), Some(d)) if f != d && forced.is_none() => {
                c.push(Issue::line(n, format!("is {} but earlier lines are {} (mixed formats)", d.name(), f.name())));
                continue;
            }
            // Lines that look like no format are read as the file's format, so the
            // error names the missing field.
            (Some(f), _) => f,
            (None, Some(d)) => {
                format = Some(d);
                d
            }
            (None, None) => {
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                c.push(Issue::line(n, format!("fields {keys:?} match no known format (prompt+completion, instruction+output, messages, conversations, text+label)")));
                continue;
            }
        };
        match crate::data::formats::extract(fmt, obj, n) {
            Ok(r) => {
                records.push(r);
                lines.push(n);
            }
            Err(i) => c.push(i),
        }
    }
    Rows { format, records, lines }
}

/// Row count and field length limits.
fn check_limits(records: &[Record], lines: &[usize], limits: &Limits, c: &mut Collector) {
    if records.len() > limits.max_rows {
        c.push(Issue::line(
            lines[limits.max_rows],
            format!("the file has {} rows; the limit is {}", records.len(), limits.max_rows),
        ));
    }
    for (r, &line) in records.iter().zip(lines) {
        let mut fields = vec![("prompt", &r.prompt), ("completion", &r.completion)];
        fields.extend(r.history.iter().map(|m| ("history", &m.content)));
        for (field, v) in fields {
            let n = v.chars().count();
            if n > limits.max_field_chars {
                c.push(Issue::field(
                    line,
                    field,
                    format!("has {n} characters; the limit is {}", limits.max_field_chars),
                ));
            }
        }
    }
}

/// The sorted label set of a classification task; too many labels, fewer than two, or
/// a label seen only once are issues.
fn label_set(records: &[Record], lines: &[usize], limits: &Limits, c: &mut Collector) -> Vec<String> {
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (r, &line) in records.iter().zip(lines) {
        first_line.entry(r.completion.as_str()).or_insert(line);
        *counts.entry(r.completion.as_str()).or_insert(0) += 1;
    }
    let mut by_line: Vec<(&str, usize)> = first_line.iter().map(|(k, v)| (*k, *v)).collect();
    by_line.sort_by_key(|x| x.1);
    if by_line.len() > limits.max_labels {
        c.push(Issue::field(
            by_line[limits.max_labels].1,
            "label",
            format!("{} distinct labels; the limit is {}", by_line.len(), limits.max_labels),
        ));
    } else if by_line.len() < 2 {
        c.push(Issue::field(0, "label", "a classification task needs at least two labels".into()));
    }
    for (label, line) in &by_line {
        if counts[label] == 1 && by_line.len() <= limits.max_labels {
            c.push(Issue::field(*line, "label", format!("label `{label}` is seen only once")));
        }
    }
    let mut labels: Vec<String> = by_line.iter().map(|(l, _)| l.to_string()).collect();
    labels.sort();
    labels
}

/// What is worth knowing about an accepted dataset: duplicates, class imbalance.
fn warnings(records: &[Record], lines: &[usize], kind: TaskKind) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut seen: HashMap<&Record, usize> = HashMap::new();
    let mut dups = Vec::new();
    for (r, &line) in records.iter().zip(lines) {
        if let Some(&first) = seen.get(r) {
            dups.push(format!("line {line} repeats line {first}"));
        } else {
            seen.insert(r, line);
        }
    }
    if !dups.is_empty() {
        let shown: Vec<&str> = dups.iter().take(5).map(String::as_str).collect();
        warnings.push(format!(
            "{} duplicate example{} ({}{})",
            dups.len(),
            if dups.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if dups.len() > 5 { ", …" } else { "" }
        ));
    }
    if kind == TaskKind::Classification {
        let counts: Vec<usize> = {
            let mut m: HashMap<&str, usize> = HashMap::new();
            records.iter().for_each(|r| *m.entry(r.completion.as_str()).or_insert(0) += 1);
            m.into_values().collect()
        };
        let (lo, hi) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
        if lo > 0 && hi >= 5 * lo {
            warnings.push(format!("class imbalance: the largest label has {hi} examples, the smallest {lo}"));
        }
    }
    warnings
}

/// Classification when the completions form a small closed set of short answers, each
/// seen more than once; generation otherwise.
pub fn infer_kind(format: Format, records: &[Record], max_labels: usize) -> TaskKind {
    if format == Format::Classification {
        return TaskKind::Classification;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in records {
        *counts.entry(r.completion.as_str()).or_insert(0) += 1;
    }
    let short = counts.keys().all(|c| c.split_whitespace().count() <= 3 && c.chars().count() <= 40);
    let small = counts.len() >= 2 && counts.len() <= max_labels.min(records.len() / 4).max(2);
    if records.len() >= 8 && short && small && counts.values().all(|&n| n >= 2) {
        TaskKind::Classification
    } else {
        TaskKind::Generation
    }
}

/// How to split a dataset into train and eval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "value")]
pub enum Split {
    /// This fraction goes to eval.
    Fraction(f64),
    /// This many examples go to eval.
    Count(usize),
}

/// Splits `records` deterministically (seeded permutation): returns train and eval
/// indices, each in file order.
pub fn split_indices(n: usize, split: Split, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let k = match split {
        Split::Fraction(f) if (0.0..1.0).contains(&f) => ((n as f64) * f).round() as usize,
        Split::Fraction(f) => return Err(Error::Invalid(format!("eval fraction {f} must be in [0, 1)"))),
        Split::Count(k) => k,
    };
    if k >= n {
        return Err(Error::Invalid(format!("an eval split of {k} leaves no training examples out of {n}")));
    }
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(streams::SPLIT);
    let perm = rng::permutation(&mut r, n);
    let mut eval: Vec<usize> = perm[..k].to_vec();
    let mut train: Vec<usize> = perm[k..].to_vec();
    eval.sort_unstable();
    train.sort_unstable();
    Ok((train, eval))
}

/// Warnings about eval examples whose prompt also occurs in train.
pub fn overlap_warning(train: &[Record], eval: &[Record]) -> Option<String> {
    let prompts: HashSet<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
    let n = eval.iter().filter(|r| prompts.contains(r.prompt.as_str())).count();
    (n > 0).then(|| format!("{n} of {} eval examples have a prompt that also occurs in train", eval.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_are_clean() {
        assert_eq!(task_name("sentiment.jsonl"), "sentiment");
        assert_eq!(task_name("../../etc/pass wd.csv"), "pass_wd");
        assert_eq!(task_name("C:\\x\\my-task.json"), "my-task");
        assert_eq!(task_name("...."), "task");
    }

    fn ok(text: &str) -> Dataset {
        parse("t", text.as_bytes(), None, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
    }
    fn err(text: &str) -> Rejection {
        parse("t", text.as_bytes(), None, &LoadOptions::default()).unwrap_err()
    }

    #[test]
    fn every_format_gives_the_same_record() {
        let want = Record::new("Add 2 and 3", "5");
        let texts = [
            r#"{"prompt":"Add 2 and 3","completion":"5"}"#,
            r#"{"instruction":"Add 2 and 3","output":"5"}"#,
            r#"{"instruction":"Add 2 and 3","input":"","output":"5"}"#,
            r#"{"messages":[{"role":"user","content":"Add 2 and 3"},{"role":"assistant","content":"5"}]}"#,
            r#"{"conversations":[{"from":"human","value":"Add 2 and 3"},{"from":"gpt","value":"5"}]}"#,
            r#"{"text":"Add 2 and 3","label":5}"#,
            "prompt,completion\nAdd 2 and 3,5\n",
            "instruction,input,output\n\"Add 2 and 3\",,5\n",
            "\u{feff}text,label\nAdd 2 and 3,5",
        ];
        // One row each, so read as generation (a one-row classification task is invalid).
        let opts = LoadOptions { kind: Some(TaskKind::Generation), ..Default::default() };
        for t in texts {
            let d = parse("t", t.as_bytes(), None, &opts).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(d.records, vec![want.clone()], "{t}");
        }
        let alpaca = parse("t", br#"{"instruction":"Add","input":"2 and 3","output":"5"}"#, None, &opts).unwrap();
        let pc = parse("t", br#"{"prompt":"Add\n\n2 and 3","completion":"5"}"#, None, &opts).unwrap();
        assert_eq!(alpaca.records[0], pc.records[0]);
    }

    #[test]
    fn errors_name_line_field_and_reason() {
        let e = err("{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"a\"}\n{\"prompt\":3,\"completion\":\"x\"}\nnot json\n");
        assert_eq!(e.total, 3, "{e}");
        let s = e.to_string();
        assert!(s.contains("line 2"), "{s}");
        assert!(s.contains("line 3: field `prompt`: must be a string, found a number"), "{s}");
        assert!(s.contains("line 4, column"), "{s}");
    }

    #[test]
    fn at_most_fifty_issues_are_listed() {
        let text: String = (0..80).map(|_| "{\"prompt\":\"\",\"completion\":\"b\"}\n").collect();
        let e = err(&text);
        assert_eq!((e.issues.len(), e.total), (50, 80));
        assert!(e.to_string().ends_with("… and 30 more"));
    }

    #[test]
    fn kinds_are_inferred_and_labels_checked() {
        let text: String =
            (0..12).map(|i| format!("{{\"prompt\":\"p{i}\",\"completion\":\"{}\"}}\n", ["yes", "no"][i % 2])).collect();
        let d = ok(&text);
        assert_eq!(d.kind, TaskKind::Classification);
        assert_eq!(d.labels, vec!["no", "yes"]);
        let gen: String =
            (0..12).map(|i| format!("{{\"prompt\":\"p{i}\",\"completion\":\"answer number {i}\"}}\n")).collect();
        assert_eq!(ok(&gen).kind, TaskKind::Generation);
        let once = err(
            "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"x\"}\n{\"text\":\"c\",\"label\":\"y\"}\n",
        );
        assert!(once.to_string().contains("line 3: field `label`: label `y` is seen only once"), "{once}");
    }

    #[test]
    fn warnings_for_duplicates_and_imbalance() {
        let mut text: String = (0..10).map(|i| format!("{{\"text\":\"t{i}\",\"label\":\"a\"}}\n")).collect();
        text.push_str("{\"text\":\"u\",\"label\":\"b\"}\n{\"text\":\"u\",\"label\":\"b\"}\n");
        let d = ok(&text);
        assert!(
            d.warnings.iter().any(|w| w.contains("1 duplicate example (line 12 repeats line 11)")),
            "{:?}",
            d.warnings
        );
        assert!(d.warnings.iter().any(|w| w.contains("class imbalance")), "{:?}", d.warnings);
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let (t, e) = split_indices(100, Split::Fraction(0.2), 7).unwrap();
        assert_eq!((t.len(), e.len()), (80, 20));
        assert_eq!(split_indices(100, Split::Fraction(0.2), 7).unwrap(), (t.clone(), e.clone()));
        assert_ne!(split_indices(100, Split::Fraction(0.2), 8).unwrap().1, e);
        let mut all: Vec<usize> = t.into_iter().chain(e).collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(split_indices(5, Split::Count(5), 0).is_err());
    }
}

/// What tokenising a dataset did to long examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenReport {
    /// Token count of every example before truncation.
    pub lengths: Vec<usize>,
    /// Examples cut to fit.
    pub truncated: usize,
    /// Examples left out.
    pub dropped: usize,
}

impl TokenReport {
    /// The `q`-quantile (0..=1) of example lengths.
    pub fn percentile(&self, q: f64) -> usize {
        let mut v = self.lengths.clone();
        if v.is_empty() {
            return 0;
        }
        v.sort_unstable();
        v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
    }
}

/// Tokenises records for training under `limits.max_tokens` and its policy.
pub fn tokenize(
    tok: &crate::TextTokenizer,
    records: &[Record],
    system: Option<&str>,
    limits: &Limits,
) -> Result<(Vec<crate::data::Example>, TokenReport)> {
    let mut report = TokenReport::default();
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let full = crate::data::encode(tok, r, system, usize::MAX / 2)?;
        let n = full.ids.len();
        report.lengths.push(n);
        if n <= limits.max_tokens {
            out.push(full);
        } else if limits.overlong == OverlongPolicy::Drop {
            report.dropped += 1;
        } else {
            report.truncated += 1;
            out.push(crate::data::encode(tok, r, system, limits.max_tokens)?);
        }
    }
    Ok((out, report))
}
