//! Fuzzing the two inputs a client writes freely: dataset uploads and experiment
//! requests. Generated with a fixed seed (the same cases every run, so a failure
//! reproduces); each case goes through the real router. Never a panic or a 5xx; a refusal
//! is a 4xx whose message names what is wrong.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};

use super::{error, App};

/// A runner with a fixed seed and `cases` cases, no shrinking (a failing case is printed
/// whole).
fn runner(cases: u32, seed: u8) -> TestRunner {
    let config = RunnerConfig { cases, max_shrink_iters: 0, failure_persistence: None, ..RunnerConfig::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]))
}

/// Any JSON value, a few levels deep, with the awkward leaves: huge and negative
/// numbers, non-integers, long and non-ASCII strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(-1i64), Just(0), Just(1), Just(2), Just(16), Just(i64::MAX)].prop_map(Value::from),
        Just(json!(u64::MAX)),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        prop_oneof![Just(0.5), Just(1e-3), Just(-0.0), Just(1e300)].prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(Value::from("x".repeat(3000))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One line of a would-be dataset: well-formed records of every format with arbitrary
/// field values, other JSON, text, raw bytes.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let role = prop_oneof![Just("user".to_string()), Just("assistant".into()), Just("system".into()), "[a-z]{0,6}"];
    prop_oneof![
        4 => ("[a-z ]{1,30}", "[a-z ]{1,10}").prop_map(|(p, c)| json!({"prompt": p, "completion": c}).to_string()),
        2 => (json_value(), json_value()).prop_map(|(p, c)| json!({"prompt": p, "completion": c}).to_string()),
        1 => (json_value(), json_value(), json_value())
            .prop_map(|(i, x, o)| json!({"instruction": i, "input": x, "output": o}).to_string()),
        1 => prop::collection::vec((role.clone(), json_value()), 0..4).prop_map(|m| {
            json!({"messages": m.into_iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>()})
                .to_string()
        }),
        1 => prop::collection::vec((role, "[a-z ]{0,12}"), 0..4).prop_map(|m| {
            json!({"conversations": m.into_iter().map(|(r, c)| json!({"from": r, "value": c})).collect::<Vec<_>>()})
                .to_string()
        }),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => "\\PC{0,40}",
        1 => Just(String::new()),
    ]
    .prop_map(String::into_bytes)
    .boxed()
    .prop_union(prop::collection::vec(any::<u8>(), 0..60).boxed())
    .or(Just(Vec::new()).boxed())
}

/// A well-formed line in one of the formats.
fn good_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        ("[a-z ]{1,30}", "[a-z]{1,10}").prop_map(|(p, c)| json!({"prompt": p, "completion": c}).to_string()),
        ("[a-z ]{1,30}", "[a-z ]{0,10}", "[a-z]{1,10}")
            .prop_map(|(i, x, o)| json!({"instruction": i, "input": x, "output": o}).to_string()),
        ("[a-z ]{1,30}", "[a-z]{1,10}").prop_map(|(q, a)| {
            json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string()
        }),
    ]
    .prop_map(String::into_bytes)
}

/// A whole file: lines, CSV, or a valid file cut short.
fn file() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(line(), 0..24).prop_map(|ls| ls.join(&b"\n"[..])),
        // Mostly good, perhaps with one bad line somewhere.
        3 => (prop::collection::vec(good_line(), 1..20), prop::option::of((line(), any::<prop::sample::Index>())))
            .prop_map(|(mut ls, bad)| {
                if let Some((l, at)) = bad {
                    let i = at.index(ls.len());
                    ls[i] = l;
                }
                ls.join(&b"\n"[..])
            }),
        1 => (prop::collection::vec("[a-z_\",]{0,12}", 1..4), prop::collection::vec("[a-z \",\n]{0,20}", 0..8))
            .prop_map(|(head, rows)| format!("{}\n{}", head.join(","), rows.join("\n")).into_bytes()),
        1 => (prop::collection::vec(line(), 1..12), any::<prop::sample::Index>()).prop_map(|(ls, cut)| {
            let all = ls.join(&b"\n"[..]);
            let n = cut.index(all.len() + 1);
            all[..n].to_vec()
        }),
    ]
}

/// File names a client might send, hostile ones included.
fn filename() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,10}\\.(jsonl|csv|json|JSONL|txt|html)",
        1 => Just("../../etc/passwd".to_string()),
        1 => Just("x.html".to_string()),
        1 => Just("..\\..\\boot.ini".to_string()),
        1 => "\\PC{0,80}",
        1 => Just(String::new()),
    ]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Uploads: any file, any name, an optional task name. Stored (201) or refused with a
/// 4xx that says why: 422 lists the problems by line, 413 names the limit, 400 the field.
#[test]
fn fuzzed_uploads_never_panic_and_are_refused_with_reasons() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = rt.block_on(async { App::new(|c| c.max_upload_bytes = 64 << 10) });
    let task_name = prop::option::weighted(0.2, prop_oneof![3 => "[a-z][a-z_]{0,11}", 1 => "\\PC{0,70}"]);
    let stored = std::cell::Cell::new(0);
    let refused = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    runner(3000, 1)
        .run(&(file(), filename(), task_name), |(bytes, name, task)| {
            let (status, body) = rt.block_on(app.upload(&name, &bytes, task.as_deref()));
            let case = || format!("file {:?} named {name:?} task {task:?}", text(&bytes));
            match status.as_u16() {
                201 => {
                    stored.set(stored.get() + 1);
                    // Keep the database small: the stored dataset goes again.
                    let d: Value = serde_json::from_slice(&body).unwrap();
                    let id = d["id"].as_str().unwrap();
                    let (s, _) = rt
                        .block_on(
                            app.send(
                                Request::builder()
                                    .method(Method::DELETE)
                                    .uri(format!("/api/datasets/{id}"))
                                    .body(Body::empty())
                                    .unwrap(),
                            ),
                        )
                        .into_status_and_body();
                    prop_assert_eq!(s, StatusCode::NO_CONTENT);
                }
                code @ (400 | 413 | 422) => {
                    *refused.borrow_mut().entry(code).or_default() += 1;
                    let e = error(&body).error;
                    prop_assert!(!e.message.is_empty(), "{}", case());
                    if code == 422 {
                        prop_assert!(!e.details.is_empty(), "422 without problems: {} for {}", e.message, case());
                        prop_assert!(
                            e.details
                                .iter()
                                .all(|d| d.starts_with("line ") || d.starts_with("file") || d.starts_with('…')),
                            "problems not placed: {:?} for {}",
                            e.details,
                            case()
                        );
                    }
                }
                other => return Err(TestCaseError::fail(format!("{other}: {} for {}", text(&body), case()))),
            }
            Ok(())
        })
        .unwrap();
    let (stored, refused) = (stored.get(), refused.into_inner());
    println!("fuzzed uploads: {stored} stored, refused {refused:?}");
    assert!(stored >= 20 && refused.get(&422).copied().unwrap_or(0) >= 100, "{stored} {refused:?}");
    // Nothing half-written: every file in the data folder belongs to a dataset.
    let left = std::fs::read_dir(app.dir.path().join("data/tmp")).unwrap().count();
    assert_eq!(left, 0, "uploads left in tmp/");
}

/// Uploads whose multipart framing itself is broken: any bytes after a valid start, cut
/// anywhere, under a declared boundary. Always a 4xx (or, by chance, a stored dataset).
#[test]
fn fuzzed_multipart_bodies_never_panic() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = rt.block_on(async { App::new(|_| {}) });
    let head = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n";
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        (prop::collection::vec(any::<u8>(), 0..200), any::<bool>()).prop_map(move |(tail, close)| {
            let mut b = head.as_bytes().to_vec();
            b.extend(tail);
            if close {
                b.extend(b"\r\n--B--\r\n");
            }
            b
        }),
    ];
    let content_type = prop_oneof![
        Just("multipart/form-data; boundary=B".to_string()),
        Just("multipart/form-data".to_string()),
        Just("application/json".to_string()),
        "\\PC{0,40}",
    ];
    runner(1500, 3)
        .run(&(body, content_type), |(bytes, ty)| {
            let Ok(ty) = axum::http::HeaderValue::from_str(&ty) else { return Ok(()) };
            let req = Request::builder()
                .method(Method::POST)
                .uri("/api/datasets")
                .header(header::CONTENT_TYPE, ty)
                .body(Body::from(bytes))
                .unwrap();
            let (status, body) = rt.block_on(app.send(req)).into_status_and_body();
            match status.as_u16() {
                201 => {}
                400 | 413 | 415 | 422 => prop_assert!(!error(&body).error.message.is_empty()),
                other => return Err(TestCaseError::fail(format!("{other}: {}", text(&body)))),
            }
            Ok(())
        })
        .unwrap();
    let left = std::fs::read_dir(app.dir.path().join("data/tmp")).unwrap().count();
    assert_eq!(left, 0, "uploads left in tmp/");
}

/// Where a mutation of an experiment request lands, as JSON pointers.
const FIELDS: &[&str] = &[
    "/name",
    "/model",
    "/tasks",
    "/tasks/0",
    "/tasks/0/dataset",
    "/tasks/0/eval_dataset",
    "/strategies",
    "/strategies/0",
    "/strategies/0/strategy",
    "/strategies/0/mixing",
    "/strategies/1/merges",
    "/strategies/2/variant",
    "/strategies/3/head_rank",
    "/budget_tokens",
    "/hyper",
    "/hyper/learning_rate",
    "/hyper/rank",
    "/hyper/batch_size",
    "/hyper/max_tokens",
    "/hyper/seed",
    "/hyper/seeds",
    "/hyper/eval_split",
    "/hyper/eval_limit",
    "/hyper/bootstrap",
    "/hyper/checkpoint_every",
];

/// The ways an error may name the field at `pointer`: its own name, or the list element
/// it sits in (`/strategies/0/mixing` → `mixing`, `strategies[0]`; `/tasks/0` → `tasks`).
fn names(pointer: &str) -> Vec<String> {
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let mut out: Vec<String> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if p.parse::<usize>().is_ok() {
            out.push(format!("{}[{p}]", parts[i - 1]));
        }
    }
    // The field's own name; for a list element, the list's.
    let own = parts.iter().rev().find(|p| p.parse::<usize>().is_err()).unwrap();
    out.push(own.to_string());
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Set the field to a value.
    Set(usize, Value),
    /// Remove the field.
    Remove(usize),
}

fn apply(spec: &mut Value, m: &Mutation) -> bool {
    let (i, value) = match m {
        Mutation::Set(i, v) => (*i, Some(v.clone())),
        Mutation::Remove(i) => (*i, None),
    };
    let pointer = FIELDS[i];
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let Some(p) = spec.pointer_mut(parent) else { return false };
    match (p, value) {
        (Value::Object(o), Some(v)) => {
            o.insert(key.to_string(), v);
        }
        (Value::Object(o), None) => {
            o.remove(key);
        }
        (Value::Array(a), v) => {
            let Ok(k) = key.parse::<usize>() else { return false };
            match v {
                Some(v) if k < a.len() => a[k] = v,
                None if k < a.len() => {
                    a.remove(k);
                }
                _ => return false,
            }
        }
        _ => return false,
    }
    true
}

/// Experiment requests: a valid request with one to three fields set to anything or
/// removed. Queued (201, then cancelled) or refused with a 4xx whose message or details
/// name one of the fields changed.
#[test]
fn fuzzed_experiment_requests_never_panic_and_name_the_field() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = rt.block_on(async { App::new(|_| {}) });
    let d = rt.block_on(app.dataset("topic.jsonl"));
    let valid = json!({
        "name": "fuzz", "model": "tiny", "tasks": [{"dataset": d.id, "eval_dataset": d.id}],
        "strategies": [
            {"strategy": "combined", "mixing": {"kind": "uniform"}},
            {"strategy": "separate", "merges": ["linear"]},
            {"strategy": "sequential", "variant": "continue"},
            {"strategy": "multi_head", "head_rank": 4}
        ],
        "budget_tokens": 400,
        "hyper": {"learning_rate": 0.005, "rank": 4, "batch_size": 4, "max_tokens": 64, "seed": 1, "seeds": [],
                  "eval_split": 0.2, "eval_limit": 2, "bootstrap": 10, "checkpoint_every": 2}
    });
    let (s, _b) = rt.block_on(app.send(post(&valid))).into_status_and_body();
    let (s, b) = (s, _b);
    assert_eq!(s, StatusCode::CREATED, "the starting point is valid: {}", text(&b));
    let scalar = prop_oneof![
        prop_oneof![Just(-1i64), Just(0), Just(1), Just(3), Just(300), Just(100_000), Just(10_000_000_000)]
            .prop_map(Value::from),
        prop_oneof![Just(0.0), Just(0.5), Just(0.95), Just(1.5), Just(-0.1)].prop_map(Value::from),
        prop_oneof![Just("tiny"), Just("combined"), Just("separate"), Just(""), Just("0123456789abcdef")]
            .prop_map(Value::from),
        Just(json!([])),
    ];
    let mutation = prop_oneof![
        2 => (0..FIELDS.len(), json_value()).prop_map(|(i, v)| Mutation::Set(i, v)),
        2 => (0..FIELDS.len(), scalar).prop_map(|(i, v)| Mutation::Set(i, v)),
        1 => (0..FIELDS.len()).prop_map(Mutation::Remove),
    ];
    let counts = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    runner(3000, 2)
        .run(&prop::collection::vec(mutation, 1..4), |ms| {
            let mut spec = valid.clone();
            let applied: Vec<&Mutation> = ms.iter().filter(|m| apply(&mut spec, m)).collect();
            let (status, body) = rt.block_on(app.send(post(&spec))).into_status_and_body();
            *counts.borrow_mut().entry(status.as_u16()).or_default() += 1;
            match status.as_u16() {
                201 => {
                    let e: Value = serde_json::from_slice(&body).unwrap();
                    let id = e["id"].as_str().unwrap();
                    rt.block_on(
                        app.send(
                            Request::builder()
                                .method(Method::POST)
                                .uri(format!("/api/experiments/{id}/cancel"))
                                .body(Body::empty())
                                .unwrap(),
                        ),
                    );
                }
                400 | 413 | 415 | 422 => {
                    let e = error(&body).error;
                    let said = format!("{} {}", e.message, e.details.join(" | "));
                    let named = applied.iter().any(|m| {
                        let i = match m {
                            Mutation::Set(i, _) | Mutation::Remove(i) => *i,
                        };
                        names(FIELDS[i]).iter().any(|n| said.contains(n.as_str()))
                    });
                    prop_assert!(named, "{said}\nfor the changes {applied:?}");
                }
                other => return Err(TestCaseError::fail(format!("{other}: {} for {applied:?}", text(&body)))),
            }
            Ok(())
        })
        .unwrap();
    let counts = counts.into_inner();
    println!("fuzzed experiment requests: {counts:?}");
    assert!(counts.get(&201).copied().unwrap_or(0) >= 20 && counts.values().sum::<usize>() == 3000, "{counts:?}");
}

fn post(spec: &Value) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/api/experiments")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(spec.to_string()))
        .unwrap()
}

/// The status and body of a router answer.
trait StatusAndBody {
    fn into_status_and_body(self) -> (StatusCode, Vec<u8>);
}

impl StatusAndBody for (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    fn into_status_and_body(self) -> (StatusCode, Vec<u8>) {
        (self.0, self.2)
    }
}
