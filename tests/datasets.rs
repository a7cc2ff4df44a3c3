use std::path::Path;

use multitune::data::{self, LoadOptions};
use multitune::Error;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every malformed file is rejected with an issue on the right line carrying the right
/// reason, and its repaired twin is accepted.
#[test]
fn malformed_corpus_is_rejected_line_by_line_and_twins_accepted() {
    let manifest = std::fs::read_to_string(fixtures().join("malformed/MANIFEST.tsv")).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    let mut n = 0;
    for row in manifest.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (file, line, phrase) = (cols[0], cols[1].parse::<usize>().unwrap(), cols[2]);
        kinds.insert(file.rsplit_once('_').unwrap().0.to_string());
        match data::load(&fixtures().join("malformed").join(file), &LoadOptions::default()) {
            Err(Error::Dataset(rej)) => {
                assert!(
                    rej.issues.iter().any(|i| i.line == line && i.to_string().contains(phrase)),
                    "{file}: expected line {line} with {phrase:?}, got:\n{rej}"
                );
                let place = match (line, file.ends_with(".parquet")) {
                    (0, _) => "file: ".to_string(),
                    (n, true) => format!("row {n}: "),
                    (n, false) => format!("line {n}"),
                };
                assert!(rej.to_string().contains(&place), "{file}: expected {place:?} in:\n{rej}");
            }
            Err(other) => panic!("{file}: wrong error kind: {other}"),
            Ok(_) => panic!("{file}: accepted"),
        }
        let twin = data::load(&fixtures().join("valid").join(file), &LoadOptions::default());
        assert!(twin.is_ok(), "{file} twin rejected: {}", twin.unwrap_err());
        n += 1;
    }
    assert!(n >= 100, "only {n} malformed files");
    assert!(kinds.len() >= 12, "only {} kinds: {kinds:?}", kinds.len());
    for kind in ["json_array", "parquet_truncated", "parquet_not_parquet", "parquet_column_type", "parquet_null"] {
        assert!(kinds.contains(kind), "no {kind} fixtures");
    }
}

#[test]
fn limits_are_enforced_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.jsonl");
    let line = format!("{{\"prompt\":\"{}\",\"completion\":\"b\"}}\n", "x".repeat(300));
    std::fs::write(&p, line.repeat(20)).unwrap();
    let mut opts = LoadOptions::default();
    opts.limits.max_bytes = 1000;
    assert!(data::load(&p, &opts).unwrap_err().to_string().contains("the limit is 1000"));
    let mut opts = LoadOptions::default();
    opts.limits.max_field_chars = 100;
    let e = data::load(&p, &opts).unwrap_err().to_string();
    assert!(e.contains("line 1: field `prompt`: has 300 characters; the limit is 100"), "{e}");
    let mut opts = LoadOptions::default();
    opts.limits.max_rows = 10;
    assert!(data::load(&p, &opts).unwrap_err().to_string().contains("line 11: the file has 20 rows; the limit is 10"));
    // Parquet: the row count is refused from the file's metadata, before any row is
    // read; a field's length names its row.
    let pq = fixtures().join("valid/parquet_hf_01.parquet");
    let mut opts = LoadOptions::default();
    opts.limits.max_rows = 5;
    let e = data::load(&pq, &opts).unwrap_err().to_string();
    assert!(e.contains("file: the file has 10 rows; the limit is 5"), "{e}");
    let mut opts = LoadOptions::default();
    opts.limits.max_field_chars = 6;
    let e = data::load(&pq, &opts).unwrap_err().to_string();
    assert!(e.contains("row 1: column `prompt`: has 8 characters; the limit is 6"), "{e}");
}
