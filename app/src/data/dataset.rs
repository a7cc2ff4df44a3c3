//! Task datasets: every common format in (JSONL or CSV), judged whole before anything is
//! accepted. Errors name line, column (CSV), field and reason; warnings (duplicates,
//! imbalance, overlap with the eval split) are reported with an accepted dataset.

use std::collections::{BTreeMap, HashMap, HashSet};
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

pub use crate::error::{Issue, Rejection};

/// At most this many issues are listed; the rest are counted.
pub const MAX_LISTED: usize = 50;

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
    /// Issues count rows, not lines (Parquet).
    rows: bool,
}

impl Collector {
    fn push(&mut self, mut i: Issue) {
        i.row = self.rows;
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
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    if ext.as_deref() == Some("parquet") && !super::parquet::is_parquet(&bytes) {
        return Err(Error::Dataset(Rejection {
            file: name,
            issues: vec![Issue::line(0, super::parquet::NOT_PARQUET)],
            total: 1,
        }));
    }
    parse(&name, &bytes, ext.as_deref(), opts).map_err(Error::Dataset)
}

/// Judges the bytes of a dataset: Parquet (found by its magic bytes), CSV, JSON lines,
/// or a JSON array. `ext` is the file's extension, lower case: `csv` is CSV, `jsonl`
/// JSON lines, `json` a JSON array when it starts with `[` (else JSON lines); without
/// one, the first character decides.
pub fn parse(
    name: &str,
    bytes: &[u8],
    ext: Option<&str>,
    opts: &LoadOptions,
) -> std::result::Result<Dataset, Rejection> {
    let parquet = super::parquet::is_parquet(bytes);
    let mut c = Collector { issues: vec![], total: 0, rows: parquet };
    let reject = |c: Collector| Rejection { file: name.into(), issues: c.issues, total: c.total };
    if bytes.len() as u64 > opts.limits.max_bytes {
        c.push(Issue::line(0, format!("is {} bytes; the limit is {}", bytes.len(), opts.limits.max_bytes)));
        return Err(reject(c));
    }
    if parquet {
        let rows = super::parquet::read(bytes, opts.format, &opts.limits, &mut |i| c.push(i));
        let rows = rows.map(|rows| read_objects(rows.into_iter().map(|(n, v)| (n, Ok(v))), opts.format, &mut c));
        return judge(rows, opts, c, "row").map_err(reject);
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
    let start = text.trim_start();
    let array = start.starts_with('[') && ext != Some("jsonl");
    let is_csv = ext.map_or(!start.starts_with('{') && !array, |e| e == "csv");
    let rows = if is_csv {
        read_csv(text, opts.format, &mut c)
    } else if array {
        let elements = json_array_elements(text, &mut c);
        Some(read_objects(elements.into_iter(), opts.format, &mut c))
    } else {
        Some(read_objects(json_lines(text), opts.format, &mut c))
    };
    judge(rows, opts, c, "line").map_err(reject)
}

/// Limits, the task's kind and label set, and warnings, for the rows read from any
/// kind of file; `unit` names a record's place (`line`, or `row` in Parquet files).
fn judge(
    rows: Option<Rows>,
    opts: &LoadOptions,
    mut c: Collector,
    unit: &str,
) -> std::result::Result<Dataset, Collector> {
    let Some(Rows { format, records, lines }) = rows else { return Err(c) };
    check_limits(&records, &lines, &opts.limits, &mut c);
    let Some(format) = format else {
        if c.total == 0 {
            c.push(Issue::line(0, "has no examples"));
        }
        return Err(c);
    };
    if c.total > 0 {
        return Err(c);
    }
    let kind = opts.kind.unwrap_or_else(|| infer_kind(format, &records, opts.limits.max_labels));
    let labels =
        if kind == TaskKind::Classification { label_set(&records, &lines, &opts.limits, &mut c) } else { vec![] };
    if c.total > 0 {
        return Err(c);
    }
    let warnings = warnings(&records, &lines, kind, unit);
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

/// A JSON value read from a file, or why it could not be, with its line (row).
type JsonItem = (usize, std::result::Result<serde_json::Value, Issue>);

/// The non-blank lines of a JSONL file, parsed.
fn json_lines(text: &str) -> impl Iterator<Item = JsonItem> + '_ {
    text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, line)| {
        let n = i + 1;
        (n, serde_json::from_str(line).map_err(|e| Issue::at(n, e.column(), format!("invalid JSON: {e}"))))
    })
}

/// The elements of a JSON array (Alpaca's `alpaca_data.json`, `json.dump` of a list),
/// each parsed on its own so an error names the line of the element it is in. A file
/// that ends inside the array (truncated) or has text after it is an issue.
fn json_array_elements(text: &str, c: &mut Collector) -> Vec<JsonItem> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let skip_ws = |i: &mut usize, line: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *line += usize::from(b[*i] == b'\n');
            *i += 1;
        }
    };
    skip_ws(&mut i, &mut line);
    i += 1; // the opening `[`, checked by the caller
    loop {
        skip_ws(&mut i, &mut line);
        if i < b.len() && b[i] == b']' && out.is_empty() {
            i += 1;
            break;
        }
        let (start, start_line) = (i, line);
        let (mut depth, mut in_str, mut escaped) = (0i64, false, false);
        while i < b.len() {
            let ch = b[i];
            if in_str && ch == b'\n' {
                // JSON strings hold no raw line break: the string on this line is not
                // closed, and where the next element starts cannot be known.
                c.push(Issue::line(line, "invalid JSON: a string on this line is not closed"));
                return out;
            }
            if in_str {
                match (escaped, ch) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
            } else {
                match ch {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => depth -= 1,
                    b',' | b']' if depth == 0 => break,
                    _ => {}
                }
            }
            line += usize::from(ch == b'\n');
            i += 1;
        }
        if i >= b.len() {
            c.push(Issue::line(
                start_line,
                "the file ends inside this element: the JSON array is not closed (truncated file?)",
            ));
            return out;
        }
        let element = text[start..i].trim_end();
        let parsed = if element.is_empty() {
            Err(Issue::line(start_line, "invalid JSON: an empty element (two commas, or a comma before `]`)"))
        } else {
            serde_json::from_str(element).map_err(|e| {
                let at = start_line + e.line().saturating_sub(1);
                let message = e.to_string();
                let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m).to_string();
                Issue::line(at, format!("invalid JSON: {message}"))
            })
        };
        out.push((start_line, parsed));
        i += 1;
        if b[i - 1] == b']' {
            break;
        }
    }
    skip_ws(&mut i, &mut line);
    if i < b.len() {
        c.push(Issue::line(line, "text after the JSON array's closing `]`"));
    }
    out
}

/// Reads JSON objects (JSONL lines, a JSON array's elements, Parquet rows): the format
/// is detected per object (or forced), and an object in another format than the ones
/// before it is an issue.
fn read_objects(items: impl Iterator<Item = JsonItem>, forced: Option<Format>, c: &mut Collector) -> Rows {
    let (mut records, mut lines) = (Vec::new(), Vec::new());
    let mut format = forced;
    for (n, v) in items {
        let v = match v {
            Ok(v) => v,
            Err(issue) => {
                c.push(issue);
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
                c.push(Issue::line(
                    n,
                    format!("is {} but earlier examples are {} (mixed formats)", d.name(), f.name()),
                ));
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
fn warnings(records: &[Record], lines: &[usize], kind: TaskKind, unit: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut seen: HashMap<&Record, usize> = HashMap::new();
    let mut dups = Vec::new();
    for (r, &line) in records.iter().zip(lines) {
        if let Some(&first) = seen.get(r) {
            dups.push(format!("{unit} {line} repeats {unit} {first}"));
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
            if t.starts_with('{') {
                // The same row as a JSON array's element, on one line or pretty-printed.
                for array in [format!("[{t}]"), format!("[\n  {}\n]\n", t.replace(",", ",\n    "))] {
                    let d =
                        parse("t", array.as_bytes(), Some("json"), &opts).unwrap_or_else(|e| panic!("{array}: {e}"));
                    assert_eq!(d.records, vec![want.clone()], "{array}");
                }
            }
        }
        // A `.jsonl` file is JSON lines even when its first line is a list (an error).
        let e = parse("t", b"[1, 2]\n{\"prompt\":\"a\",\"completion\":\"b\"}", Some("jsonl"), &opts).unwrap_err();
        assert!(e.to_string().contains("line 1: is not a JSON object"), "{e}");
        // Array elements on known lines; commas and brackets inside strings do not split.
        let text = "[\n{\"prompt\": \"a, [b]\", \"completion\": \"c\"},\n\n{\"prompt\": \"d\"}\n]";
        let e = parse("t", text.as_bytes(), Some("json"), &opts).unwrap_err();
        assert_eq!(e.issues.len(), 1, "{e}");
        assert!(e.to_string().contains("line 4: field `completion`: is missing"), "{e}");
        let e = parse("t", b"[]", Some("json"), &opts).unwrap_err();
        assert!(e.to_string().contains("has no examples"), "{e}");
        let e = parse("t", b"[{\"prompt\":\"a\",\"completion\":\"b\"},]", Some("json"), &opts).unwrap_err();
        assert!(e.to_string().contains("an empty element"), "{e}");
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
