//! Experiments: create (validated against the datasets, model and engine settings),
//! list, show with runs, cancel, resume, delete; the report, its charts, the live event
//! stream and the whole experiment as a zip.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use multitune_api::{Event, Experiment, ExperimentCreate, Run, Status};
use rusqlite::{params, OptionalExtension};

use super::serve::{follow, last_event_id, send_file, After};
use crate::db::{run_row, NOW, RUN_COLUMNS};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::files::{self, check_id};
use crate::jobs;
use crate::state::AppState;

pub(crate) fn runs_of(s: &AppState, id: &str) -> ApiResult<Vec<Run>> {
    Ok(s.db.with(|c| {
        let mut st =
            c.prepare(&format!("SELECT {} FROM runs WHERE experiment_id = ?1 ORDER BY idx, id", RUN_COLUMNS))?;
        let rows = st.query_map([id], run_row)?.collect();
        rows
    })?)
}

fn load(s: &AppState, id: &str) -> ApiResult<Experiment> {
    check_id("experiment", id)?;
    let row = s.db.with(|c| {
        c.query_row(
            "SELECT id, name, status, error, spec, created_at, started_at, finished_at, seq FROM experiments WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, i64>(8)?,
                ))
            },
        )
        .optional()
    })?;
    let Some((id, name, status, error, spec, created_at, started_at, finished_at, seq)) = row else {
        return Err(ApiError::not_found("experiment", id));
    };
    let status = Status::parse(&status).unwrap_or(Status::Failed);
    let queue_position = if status == Status::Queued {
        let ahead: i64 = s.db.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM experiments WHERE status IN ('queued', 'running') AND seq < ?1",
                [seq],
                |r| r.get(0),
            )
        })?;
        Some(ahead as usize)
    } else {
        None
    };
    Ok(Experiment {
        runs: runs_of(s, &id)?,
        has_report: s.data.experiment(&id).join("out/report.json").exists(),
        spec: serde_json::from_str(&spec)?,
        id,
        name,
        status,
        error,
        created_at,
        started_at,
        finished_at,
        queue_position,
    })
}

/// `GET /api/experiments`.
pub async fn experiments_index(State(s): State<AppState>) -> ApiResult<Json<Vec<Experiment>>> {
    let ids: Vec<String> = s.db.with(|c| {
        let mut st = c.prepare("SELECT id FROM experiments ORDER BY seq DESC")?;
        let rows = st.query_map([], |r| r.get(0))?.collect();
        rows
    })?;
    Ok(Json(ids.iter().map(|id| load(&s, id)).collect::<ApiResult<_>>()?))
}

/// `GET /api/experiments/{id}`.
pub async fn experiments_show(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Experiment>> {
    Ok(Json(load(&s, &id)?))
}

/// `POST /api/experiments`: validates everything it can before queueing.
pub async fn experiments_create(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<Experiment>)> {
    let (spec, mut errors) = read_request(body)?;
    let (more, used) = check_experiment(&s, &spec)?;
    errors.extend(more);
    if !errors.is_empty() {
        return Err(ApiError::invalid("the experiment is not valid", errors));
    }
    // A new experiment on a full disk would stop at its first step: say so now.
    s.data.ensure_reserve()?;
    let id = files::new_id();
    let spec_json = serde_json::to_string(&spec)?;
    s.db.with(|c| {
        let tx = c.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO experiments (id, name, spec, status, created_at) VALUES (?1, ?2, ?3, 'queued', {NOW})"
            ),
            params![id, spec.name.trim(), spec_json],
        )?;
        for d in &used {
            tx.execute(
                "INSERT OR IGNORE INTO experiment_datasets (experiment_id, dataset_id) VALUES (?1, ?2)",
                params![id, d],
            )?;
        }
        tx.commit()
    })?;
    s.publish(&s.db, &id, Event::Status { status: Status::Queued, message: None })?;
    // Read before waking the worker: the answer is the experiment as created (queued).
    let created = load(&s, &id)?;
    let _ = s.wake.try_send(());
    Ok((StatusCode::CREATED, Json(created)))
}

/// The request read into its typed settings. A strategy whose options do not parse (an
/// unknown `variant`, merge method or mixing) is named with its index and left out, so
/// that the rest is still checked and every problem is listed at once; JSON that does not
/// parse otherwise is refused as it stands.
fn read_request(body: serde_json::Value) -> ApiResult<(ExperimentCreate, Vec<String>)> {
    // The field it fails at is named, as axum's `Json` names it.
    let whole = match serde_path_to_error::deserialize::<_, ExperimentCreate>(body.clone()) {
        Ok(spec) => return Ok((spec, Vec::new())),
        Err(e) => e,
    };
    let refused = || {
        let message = format!("Failed to deserialize the JSON body into the target type: {whole}");
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_json", message)
    };
    let mut body = body;
    let Some(strategies) = body.get_mut("strategies").and_then(|v| v.as_array_mut()) else { return Err(refused()) };
    let mut errors = Vec::new();
    let mut kept = Vec::new();
    for (i, choice) in strategies.drain(..).enumerate() {
        match serde_json::from_value::<multitune_api::StrategyChoice>(choice.clone()) {
            Ok(_) => kept.push(choice),
            Err(e) => errors.push(format!("strategies[{i}]: {e}")),
        }
    }
    *strategies = kept;
    match serde_json::from_value::<ExperimentCreate>(body) {
        Ok(spec) if !errors.is_empty() => Ok((spec, errors)),
        _ => Err(refused()),
    }
}

/// Everything wrong with an experiment request (its fields, its datasets, its model, its
/// engine settings), and the datasets it uses.
fn check_experiment(s: &AppState, spec: &ExperimentCreate) -> ApiResult<(Vec<String>, Vec<String>)> {
    let mut errors = Vec::new();
    if spec.name.trim().is_empty() || spec.name.chars().count() > 100 {
        errors.push("name: give a name of 1 to 100 characters".to_string());
    }
    if spec.tasks.is_empty() || spec.tasks.len() > 16 {
        errors.push(format!("tasks: give 1 to 16 tasks, not {}", spec.tasks.len()));
    }
    if spec.budget_tokens == 0 || spec.budget_tokens > 1_000_000_000 {
        errors.push(format!("budget_tokens: must be 1 to 10^9, not {}", spec.budget_tokens));
    }
    let h = &spec.hyper;
    if !(h.learning_rate.is_finite() && h.learning_rate > 0.0 && h.learning_rate < 1.0) {
        errors.push(format!("hyper.learning_rate: must be in (0, 1), not {}", h.learning_rate));
    }
    if h.rank == 0 || h.rank > 256 {
        errors.push(format!("hyper.rank: must be 1 to 256, not {}", h.rank));
    }
    if h.batch_size == 0 || h.batch_size > 256 {
        errors.push(format!("hyper.batch_size: must be 1 to 256, not {}", h.batch_size));
    }
    if h.max_tokens < 16 || h.max_tokens > 8192 {
        errors.push(format!("hyper.max_tokens: must be 16 to 8192, not {}", h.max_tokens));
    }
    if !(h.eval_split > 0.0 && h.eval_split <= 0.9) {
        errors.push(format!("hyper.eval_split: must be in (0, 0.9], not {}", h.eval_split));
    }
    if h.bootstrap > 100_000 {
        errors.push(format!("hyper.bootstrap: at most 100000, not {}", h.bootstrap));
    }
    if h.seeds.len() > 10 {
        errors.push(format!("hyper.seeds: at most 10 seeds, not {}", h.seeds.len()));
    }
    if h.eval_limit == Some(0) {
        errors.push("hyper.eval_limit: must be positive".into());
    }
    // Datasets must exist, and tasks need distinct names.
    let mut names = Vec::new();
    // Each task's training examples (its dataset's, less the held-out share without an
    // eval dataset), for the data fractions' check.
    let mut sized: Vec<(String, usize)> = Vec::new();
    let mut used = Vec::new();
    // Every dataset a task reads, with the task's name (none for a held-out dataset), for
    // the keep sets' check.
    let mut sources: Vec<(String, String)> = Vec::new();
    for (i, t) in spec.tasks.iter().enumerate() {
        for (field, id) in [("dataset", Some(&t.dataset)), ("eval_dataset", t.eval_dataset.as_ref())] {
            let Some(id) = id else { continue };
            if check_id("dataset", id).is_err() {
                errors.push(format!("tasks[{i}].{field}: `{}` is not a dataset id", files::truncate(id, 40)));
                continue;
            }
            let found: Option<(String, i64)> = s.db.with(|c| {
                c.query_row("SELECT name, rows FROM datasets WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })?;
            match found {
                None => errors.push(format!("tasks[{i}].{field}: no dataset with id `{id}`")),
                Some((name, rows)) => {
                    used.push(id.clone());
                    sources.push((id.clone(), if field == "dataset" { name.clone() } else { String::new() }));
                    if field == "dataset" {
                        let rows = rows.max(0) as usize;
                        let held_out =
                            if t.eval_dataset.is_some() { 0 } else { (rows as f64 * h.eval_split).round() as usize };
                        sized.push((name.clone(), rows.saturating_sub(held_out)));
                        if names.contains(&name) {
                            errors.push(format!(
                                "tasks[{i}]: a second task named `{name}`; upload it under another name"
                            ));
                        }
                        names.push(name);
                    }
                }
            }
        }
    }
    errors.extend(check_keep(s, spec, &sources, &mut used)?);
    if let Err(e) = s.model_source(&spec.model) {
        errors.push(format!("model: {}", e.message));
    }
    match jobs::compare_config(spec) {
        Err(e) => errors.extend(if e.details.is_empty() { vec![e.message] } else { e.details }),
        // What the model's shape allows (a PiSSA rank): the model is loaded only when that
        // can matter (once; the jobs use the same copy).
        Ok(c) if c.adapters_depend_on_shape() => {
            if let Some(p) = s.model(&spec.model).ok().and_then(|m| c.adapter_problem(&m.model.cfg)) {
                errors.push(format!("hyper.rank: {p}"));
            }
        }
        Ok(_) => {}
    }
    let sized: Vec<(&str, usize)> = sized.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    errors.extend(multitune::strategy::request::size_problems(h, &spec.strategies, &sized));
    Ok((errors, used))
}

/// What is wrong with the keep sets: ids that are not datasets, and what
/// `strategy::request::keep_problems` refuses (a keep set that is also a task, named like
/// one, listed twice, too many) beside the tasks' datasets (`sources`: id and task name).
/// The keep sets found join `used`.
fn check_keep(
    s: &AppState,
    spec: &ExperimentCreate,
    sources: &[(String, String)],
    used: &mut Vec<String>,
) -> ApiResult<Vec<String>> {
    let mut errors = Vec::new();
    let name_of = |id: &str| -> ApiResult<Option<String>> {
        if check_id("dataset", id).is_err() {
            return Ok(None);
        }
        Ok(s.db.with(|c| c.query_row("SELECT name FROM datasets WHERE id = ?1", [id], |r| r.get(0)).optional())?)
    };
    // The keep sets found: (index in the request, id, name).
    let mut keep = Vec::new();
    for (i, id) in spec.keep.iter().enumerate() {
        match name_of(id)? {
            Some(name) => {
                used.push(id.clone());
                keep.push((i, id.as_str(), name));
            }
            None if check_id("dataset", id).is_err() => {
                errors.push(format!("keep[{i}]: `{}` is not a dataset id", files::truncate(id, 40)))
            }
            None => errors.push(format!("keep[{i}]: no dataset with id `{id}`")),
        }
    }
    let found: Vec<(&str, &str)> = keep.iter().map(|(_, id, name)| (*id, name.as_str())).collect();
    for (at, problem) in multitune::strategy::request::keep_problems(sources, &found) {
        errors.push(match at {
            Some(k) => format!("keep[{}]: {problem}", keep[k].0),
            None => format!("keep: {problem}"),
        });
    }
    Ok(errors)
}

/// `POST /api/experiments/{id}/cancel`: a queued experiment is cancelled at once, a
/// running one stops within a training step.
pub async fn experiments_cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Experiment>)> {
    let e = load(&s, &id)?;
    match e.status {
        Status::Queued => jobs::set_status(&s, &s.db, &id, Status::Cancelled, None)?,
        Status::Running if s.distributed() => {
            s.cluster_requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(crate::state::ClusterRequest::Cancel(id.clone()));
            let _ = s.wake.try_send(());
        }
        Status::Running => {
            if let Some(flag) = s.cancels.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        other => return Err(ApiError::conflict(format!("the experiment is {}; nothing to cancel", other.as_str()))),
    }
    Ok((StatusCode::ACCEPTED, Json(load(&s, &id)?)))
}

/// `POST /api/experiments/{id}/resume`: queues an interrupted, cancelled or failed
/// experiment again; it continues from its last checkpoint.
pub async fn experiments_resume(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Experiment>)> {
    let e = load(&s, &id)?;
    if !matches!(e.status, Status::Interrupted | Status::Cancelled | Status::Failed) {
        return Err(ApiError::conflict(format!(
            "the experiment is {}; only interrupted, cancelled or failed ones resume",
            e.status.as_str()
        )));
    }
    // Room for the disk-full record first: resuming onto a full disk would only stop again.
    s.data.ensure_reserve()?;
    jobs::set_status(&s, &s.db, &id, Status::Queued, None)?;
    // The answer is the experiment as this request left it (queued): read before the
    // worker is woken, which may start it at once.
    let queued = load(&s, &id)?;
    let _ = s.wake.try_send(());
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

/// `DELETE /api/experiments/{id}`: refused while it runs.
pub async fn experiments_delete(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let e = load(&s, &id)?;
    if e.status == Status::Running {
        return Err(ApiError::conflict("the experiment is running; cancel it first"));
    }
    s.db.with(|c| c.execute("DELETE FROM experiments WHERE id = ?1", [&id]))?;
    let _ = tokio::fs::remove_dir_all(s.data.experiment(&id)).await;
    if s.distributed() {
        s.cluster_requests.lock().unwrap_or_else(|p| p.into_inner()).push(crate::state::ClusterRequest::Forget(id));
        let _ = s.wake.try_send(());
    }
    Ok(StatusCode::NO_CONTENT)
}

fn out_file(s: &AppState, id: &str, rel: &str) -> ApiResult<std::path::PathBuf> {
    load(s, id)?;
    let p = s.data.experiment(id).join("out").join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "the experiment has no report yet"))
    }
}

/// `GET /api/experiments/{id}/report`: `report.json`.
pub async fn experiments_report(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let p = out_file(&s, &id, "report.json")?;
    let disposition = "attachment; filename=\"report.json\"";
    let headers = [(header::CONTENT_TYPE, "application/json"), (header::CONTENT_DISPOSITION, disposition)];
    Ok((headers, tokio::fs::read(p).await?).into_response())
}

/// `GET /api/experiments/{id}/report.md`.
pub async fn experiments_report_md(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let p = out_file(&s, &id, "report.md")?;
    let disposition = "attachment; filename=\"report.md\"";
    let headers = [(header::CONTENT_TYPE, "text/markdown; charset=utf-8"), (header::CONTENT_DISPOSITION, disposition)];
    Ok((headers, tokio::fs::read(p).await?).into_response())
}

fn chart_names(s: &AppState, id: &str) -> ApiResult<Vec<String>> {
    let dir = out_file(s, id, "charts")?;
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.ends_with(".svg") || n.ends_with(".png"))
        .collect();
    names.sort();
    Ok(names)
}

/// `GET /api/experiments/{id}/charts`: chart file names.
pub async fn experiments_charts(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(chart_names(&s, &id)?))
}

/// `GET /api/experiments/{id}/charts/{file}`: one chart; only names the listing has.
pub async fn experiments_chart(
    State(s): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    let names = chart_names(&s, &id)?;
    let Some(name) = names.into_iter().find(|n| *n == file) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no chart `{}`", files::truncate(&file, 60)),
        ));
    };
    let ty = if name.ends_with(".svg") { "image/svg+xml" } else { "image/png" };
    let bytes = tokio::fs::read(s.data.experiment(&id).join("out/charts").join(&name)).await?;
    // A download, never a page of our origin (an SVG opened directly could hold script);
    // `<img>` shows it all the same.
    let disposition = format!("attachment; filename=\"{name}\"");
    Ok(([(header::CONTENT_TYPE, ty.to_string()), (header::CONTENT_DISPOSITION, disposition)], bytes).into_response())
}

/// `GET /api/experiments/{id}/download`: report, charts and every adapter as one zip.
pub async fn experiments_download(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    out_file(&s, &id, "report.json")?;
    let dir = s.data.experiment(&id);
    let zip = dir.join("experiment.zip");
    if !zip.exists() {
        let (out, dest) = (dir.join("out"), zip.clone());
        let name = format!("multitune-{id}");
        s.background(move || files::zip_folders(&dest, &[(out, name)])).await??;
    }
    send_file(&zip, "application/zip", &format!("multitune-{id}.zip")).await
}

/// `GET /api/experiments/{id}/events`: server-sent events (see [`super::serve::follow`]).
pub async fn experiments_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<After>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    load(&s, &id)?;
    let after = last_event_id(&headers, &q)?;
    Ok(follow(s, id, None, after))
}
