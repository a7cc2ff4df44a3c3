//! Runs: status with progress and ETA, the (downsampled) training curve, a run's event
//! stream, and its artifacts: the adapter in PEFT layout, multi-head heads, and the base
//! model with the adapter merged in.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::Response;
use axum::Json;
use futures_util::Stream;
use multitune_api::{Event, MetricPoint, MetricsHistory, Run};
use rusqlite::OptionalExtension;
use serde::Deserialize;

use super::serve::{follow, last_event_id, send_file, After};
use crate::db::{run_row, RUN_COLUMNS};
use crate::error::{ApiError, ApiQuery, ApiResult};
use crate::files;
use crate::state::AppState;

fn parse_run_id(id: &str) -> ApiResult<i64> {
    id.parse::<i64>()
        .ok()
        .filter(|v| *v > 0 && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ApiError::bad_request(format!("`{}` is not a valid run id", files::truncate(id, 40))))
}

pub(crate) fn find(s: &AppState, id: &str) -> ApiResult<(Run, Vec<String>)> {
    let n = parse_run_id(id)?;
    s.db.with(|c| {
        c.query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), [n], |r| {
            Ok((run_row(r)?, serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default()))
        })
        .optional()
    })?
    .ok_or_else(|| ApiError::not_found("run", id))
}

/// `GET /api/runs/{id}`.
pub async fn runs_show(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    Ok(Json(find(&s, &id)?.0))
}

/// How many points a history may have.
#[derive(Debug, Deserialize)]
pub struct Points {
    points: Option<usize>,
}

/// `GET /api/runs/{id}/metrics?points=N`: the training curve (steps of later stages
/// follow the earlier ones; a step repeated after a resume counts once), averaged into at
/// most N buckets (default 500).
pub async fn runs_metrics(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Points>,
) -> ApiResult<Json<MetricsHistory>> {
    let (run, _) = find(&s, &id)?;
    let max = q.points.unwrap_or(500).clamp(1, 10_000);
    let rows: Vec<String> = s.db.with(|c| {
        let mut st =
            c.prepare("SELECT data FROM events WHERE experiment_id = ?1 AND run = ?2 AND kind = 'step' ORDER BY id")?;
        let rows = st.query_map([&run.experiment_id, &run.name], |r| r.get(0))?.collect();
        rows
    })?;
    let mut seen: HashMap<(String, usize), usize> = HashMap::new();
    let mut pts: Vec<MetricPoint> = Vec::new();
    for d in rows {
        if let Ok(Event::Step { stage, step, loss, lr, tokens_per_s, .. }) = serde_json::from_str::<Event>(&d) {
            let p = MetricPoint { step: 0, loss, lr, tokens_per_s };
            match seen.get(&(stage.clone(), step)) {
                Some(&i) => pts[i] = p,
                None => {
                    seen.insert((stage, step), pts.len());
                    pts.push(p);
                }
            }
        }
    }
    for (i, p) in pts.iter_mut().enumerate() {
        p.step = i + 1;
    }
    Ok(Json(MetricsHistory { run: run.id, steps: pts.len(), points: downsample(&pts, max) }))
}

/// Averages `pts` into at most `max` consecutive buckets (each point keeps its bucket's
/// last step).
pub fn downsample(pts: &[MetricPoint], max: usize) -> Vec<MetricPoint> {
    if pts.len() <= max {
        return pts.to_vec();
    }
    (0..max)
        .map(|b| {
            let (lo, hi) = (b * pts.len() / max, (b + 1) * pts.len() / max);
            let chunk = &pts[lo..hi];
            let n = chunk.len() as f64;
            MetricPoint {
                step: chunk[chunk.len() - 1].step,
                loss: chunk.iter().map(|p| p.loss).sum::<f64>() / n,
                lr: chunk.iter().map(|p| p.lr).sum::<f64>() / n,
                tokens_per_s: chunk.iter().map(|p| p.tokens_per_s).sum::<f64>() / n,
            }
        })
        .collect()
}

/// `GET /api/runs/{id}/events`: the run's events (and the experiment's status changes).
pub async fn runs_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<After>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let (run, _) = find(&s, &id)?;
    let after = last_event_id(&headers, &q)?;
    Ok(follow(s, run.experiment_id, Some(run.name), after))
}

fn adapter_dirs(s: &AppState, id: &str) -> ApiResult<(Run, Vec<std::path::PathBuf>)> {
    let (run, dirs) = find(s, id)?;
    if dirs.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "this run has no adapter (yet)"));
    }
    let base = s.data.experiment(&run.experiment_id);
    Ok((run, dirs.iter().map(|d| base.join(d)).collect()))
}

fn dir_name(p: &std::path::Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into())
}

/// `GET /api/runs/{id}/adapter`: the PEFT adapter folder(s) as a zip (a routed run has
/// one per task; a multi-head run's holds its heads too).
pub async fn runs_adapter(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let (run, dirs) = adapter_dirs(&s, &id)?;
    let cache = s.data.experiment(&run.experiment_id).join("downloads");
    std::fs::create_dir_all(&cache)?;
    let zip = cache.join(format!("adapter-{}.zip", run.id));
    if !zip.exists() {
        let folders: Vec<_> = dirs.iter().map(|d| (d.clone(), dir_name(d))).collect();
        let dest = zip.clone();
        s.background(move || files::zip_folders(&dest, &folders)).await??;
    }
    let name = dirs.first().map(|d| dir_name(d)).unwrap_or_default();
    send_file(&zip, "application/zip", &format!("{name}.zip")).await
}

/// `GET /api/runs/{id}/heads`: a multi-head run's `heads.safetensors` + `heads.json`.
pub async fn runs_heads(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let (run, dirs) = adapter_dirs(&s, &id)?;
    if !run.has_heads {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "only multi-head runs have task heads"));
    }
    let cache = s.data.experiment(&run.experiment_id).join("downloads");
    std::fs::create_dir_all(&cache)?;
    let zip = cache.join(format!("heads-{}.zip", run.id));
    if !zip.exists() {
        let folders = vec![(dirs[0].clone(), "heads".to_string())];
        let dest = zip.clone();
        s.background(move || {
            files::zip_folders_where(&dest, &folders, &|p| {
                p.file_name().is_some_and(|n| {
                    n == multitune::strategy::heads::HEADS_FILE || n == multitune::strategy::heads::HEADS_JSON
                })
            })
        })
        .await??;
    }
    send_file(&zip, "application/zip", &format!("{}-heads.zip", dir_name(&dirs[0]))).await
}

/// `GET /api/runs/{id}/merged`: the base model with this run's adapter merged in, as a
/// Hugging Face folder (safetensors, config, tokenizer) in a zip. Built once, then kept.
pub async fn runs_merged(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let (run, dirs) = adapter_dirs(&s, &id)?;
    if dirs.len() != 1 {
        return Err(ApiError::conflict(
            "a routed run has one adapter per task; download a merged run's model, or one adapter",
        ));
    }
    let exp = s.data.experiment(&run.experiment_id);
    let cache = exp.join("downloads");
    std::fs::create_dir_all(&cache)?;
    let zip = cache.join(format!("merged-{}.zip", run.id));
    if !zip.exists() {
        let spec: String = s
            .db
            .with(|c| c.query_row("SELECT spec FROM experiments WHERE id = ?1", [&run.experiment_id], |r| r.get(0)))?;
        let spec: multitune_api::ExperimentCreate = serde_json::from_str(&spec)?;
        let state = s.clone();
        let (dir, dest) = (dirs[0].clone(), zip.clone());
        let work = cache.join(format!("merged-{}-{}", run.id, files::new_id()));
        s.background(move || -> ApiResult<()> {
            let m = state.model(&spec.model)?;
            let adapter = multitune::adapter::peft::load_adapter(&dir, &m.model.cfg, m.model.device())?;
            let merged = m.model.with_adapter_merged(&adapter, 1.0)?;
            let result =
                multitune::model::save_hf_dir(&merged, &m.tokenizer, &work).map_err(ApiError::from).and_then(|_| {
                    files::zip_folders(&dest, &[(work.clone(), "merged-model".into())]).map_err(ApiError::from)
                });
            let _ = std::fs::remove_dir_all(&work);
            result
        })
        .await??;
    }
    send_file(&zip, "application/zip", &format!("{}-merged.zip", dir_name(&dirs[0]))).await
}

/// The query of [`runs_gguf`].
#[derive(Debug, serde::Deserialize)]
pub struct GgufQuery {
    /// `f16` (default) or `q8_0`.
    #[serde(rename = "type", default = "default_gguf_type")]
    ty: String,
}

fn default_gguf_type() -> String {
    "f16".into()
}

/// `GET /api/runs/{id}/gguf?type=f16|q8_0`: for llama.cpp, Ollama and LM Studio, a zip of
/// the base model with this run's adapter merged in as GGUF, the adapter as a llama.cpp
/// LoRA GGUF, and their Ollama Modelfiles. Only for a GGUF base model (the default
/// model is one), whose tokenizer and chat template the files carry. Built once, then kept.
pub async fn runs_gguf(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<GgufQuery>,
) -> ApiResult<Response> {
    use multitune::model::gguf_write::{self, GgufOptions, GgufType};
    let ty = GgufType::parse(&q.ty)
        .ok_or_else(|| ApiError::bad_request(format!("type `{}`: use f16 or q8_0", files::truncate(&q.ty, 40))))?;
    let (run, dirs) = adapter_dirs(&s, &id)?;
    if dirs.len() != 1 {
        return Err(ApiError::conflict(
            "a routed run has one adapter per task; download a merged run's model, or one adapter",
        ));
    }
    let spec: String =
        s.db.with(|c| c.query_row("SELECT spec FROM experiments WHERE id = ?1", [&run.experiment_id], |r| r.get(0)))?;
    let spec: multitune_api::ExperimentCreate = serde_json::from_str(&spec)?;
    let Some(base) = s.model_source(&spec.model)?.gguf_file(&s.cfg.models_dir) else {
        return Err(ApiError::conflict(format!(
            "GGUF export needs a GGUF base model; `{}` is not one: download the merged model (a Hugging Face folder) and convert it with llama.cpp's convert_hf_to_gguf.py",
            files::truncate(&spec.model, 80)
        )));
    };
    let cache = s.data.experiment(&run.experiment_id).join("downloads");
    std::fs::create_dir_all(&cache)?;
    let zip = cache.join(format!("gguf-{}-{}.zip", ty.name(), run.id));
    let name = dir_name(&dirs[0]);
    if !zip.exists() {
        let state = s.clone();
        let (dir, dest) = (dirs[0].clone(), zip.clone());
        let work = cache.join(format!("gguf-{}-{}", run.id, files::new_id()));
        let folder = format!("{name}-gguf");
        let opts = GgufOptions { ty, name: format!("{} ({name})", spec.model), system: None };
        s.background(move || -> ApiResult<()> {
            let m = state.model(&spec.model)?;
            let adapter = multitune::adapter::peft::load_adapter(&dir, &m.model.cfg, m.model.device())?;
            let result = gguf_write::export(&m.model, &m.tokenizer, &adapter, &base, &work, &opts)
                .map_err(ApiError::from)
                .and_then(|_| files::zip_folders(&dest, &[(work.clone(), folder)]).map_err(ApiError::from));
            let _ = std::fs::remove_dir_all(&work);
            result
        })
        .await??;
    }
    send_file(&zip, "application/zip", &format!("{name}-{}-gguf.zip", ty.name())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_averages_buckets() {
        let pts: Vec<MetricPoint> =
            (1..=10).map(|i| MetricPoint { step: i, loss: i as f64, lr: 1.0, tokens_per_s: 2.0 }).collect();
        let d = downsample(&pts, 4);
        // Buckets [0,2) [2,5) [5,7) [7,10): losses 1.5, 4, 6.5, 9; steps 2, 5, 7, 10.
        assert_eq!(d.iter().map(|p| p.step).collect::<Vec<_>>(), vec![2, 5, 7, 10]);
        assert_eq!(d.iter().map(|p| p.loss).collect::<Vec<_>>(), vec![1.5, 4.0, 6.5, 9.0]);
        assert_eq!(downsample(&pts, 20).len(), 10);
    }
}
