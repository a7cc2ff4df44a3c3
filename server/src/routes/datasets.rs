//! Datasets: upload (multipart, streamed to disk under a size limit, validated whole by
//! the engine), list, show with a preview, delete.

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::Json;
use multitune::data::{self, LoadOptions};
use multitune_api::{Dataset, DatasetDetail, PreviewRow};
use rusqlite::{params, OptionalExtension};
use tokio::io::AsyncWriteExt;

use crate::db::{dataset_row, DATASET_COLUMNS, NOW};
use crate::error::{ApiError, ApiResult};
use crate::files::{self, check_id};
use crate::state::AppState;

/// `GET /api/datasets`.
pub async fn datasets_index(State(s): State<AppState>) -> ApiResult<Json<Vec<Dataset>>> {
    let list = s.db.with(|c| {
        let mut st =
            c.prepare(&format!("SELECT {DATASET_COLUMNS} FROM datasets ORDER BY created_at DESC, rowid DESC"))?;
        let rows = st.query_map([], dataset_row)?.collect();
        rows
    })?;
    Ok(Json(list))
}

fn find(s: &AppState, id: &str) -> ApiResult<(Dataset, String)> {
    check_id("dataset", id)?;
    s.db.with(|c| {
        c.query_row(&format!("SELECT {DATASET_COLUMNS}, file FROM datasets WHERE id = ?1"), [id], |r| {
            Ok((dataset_row(r)?, r.get(10)?))
        })
        .optional()
    })?
    .ok_or_else(|| ApiError::not_found("dataset", id))
}

/// `GET /api/datasets/{id}`: the summary written when the dataset was stored (a dataset
/// never changes), so showing one costs a file read, not a parse of the whole file.
pub async fn datasets_show(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<DatasetDetail>> {
    let (d, file) = find(&s, &id)?;
    let summary = s.data.dataset(&id).join(SUMMARY);
    if let Some(mut detail) =
        tokio::fs::read(&summary).await.ok().and_then(|b| serde_json::from_slice::<DatasetDetail>(&b).ok())
    {
        detail.dataset = d;
        return Ok(Json(detail));
    }
    // Stored before summaries were kept: parse it once, keep the summary.
    let path = s.data.dataset(&id).join(file);
    let limits = data::Limits { max_bytes: s.cfg.max_upload_bytes, ..Default::default() };
    let parsed = s.background(move || data::load(&path, &LoadOptions { limits, ..Default::default() })).await??;
    let detail = detail_of(d, &parsed);
    let _ = multitune::persist::write_atomic(&summary, &serde_json::to_vec(&detail)?);
    Ok(Json(detail))
}

/// The file beside a dataset that keeps its [`DatasetDetail`].
const SUMMARY: &str = "summary.json";

/// A parsed dataset's preview and statistics.
fn detail_of(dataset: Dataset, parsed: &data::Dataset) -> DatasetDetail {
    let stats = |f: &dyn Fn(&multitune::data::Record) -> usize| {
        let v: Vec<usize> = parsed.records.iter().map(f).collect();
        (v.iter().sum::<usize>() as f64 / v.len().max(1) as f64, v.iter().copied().max().unwrap_or(0))
    };
    DatasetDetail {
        preview: parsed
            .records
            .iter()
            .zip(&parsed.lines)
            .take(20)
            .map(|(r, &line)| PreviewRow { line, prompt: r.prompt.clone(), completion: r.completion.clone() })
            .collect(),
        label_counts: if dataset.kind == "classification" {
            parsed.label_counts().into_iter().collect()
        } else {
            vec![]
        },
        prompt_chars: stats(&|r| r.prompt.chars().count()),
        completion_chars: stats(&|r| r.completion.chars().count()),
        dataset,
    }
}

/// `DELETE /api/datasets/{id}`: refused while an experiment uses it.
pub async fn datasets_delete(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    find(&s, &id)?;
    let used: i64 = s
        .db
        .with(|c| c.query_row("SELECT COUNT(*) FROM experiment_datasets WHERE dataset_id = ?1", [&id], |r| r.get(0)))?;
    if used > 0 {
        return Err(ApiError::conflict(format!("dataset `{id}` is used by {used} experiment(s); delete those first")));
    }
    s.db.with(|c| c.execute("DELETE FROM datasets WHERE id = ?1", [&id]))?;
    let _ = tokio::fs::remove_dir_all(s.data.dataset(&id)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/datasets` (multipart: `file`, optional `name`): streamed to a temporary
/// file under the size limit, validated whole, then moved into place. A rejected file
/// leaves nothing behind; the answer lists its problems by line.
pub async fn datasets_create(
    State(s): State<AppState>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<(StatusCode, Json<Dataset>)> {
    let mut multipart = multipart.map_err(|r| {
        ApiError::new(r.status(), "bad_request", format!("expected a multipart upload: {}", r.body_text()))
    })?;
    let limit = s.cfg.max_upload_bytes;
    let idle = std::time::Duration::from_secs(s.cfg.upload_idle_timeout_s.max(1));
    let mut name: Option<String> = None;
    let mut upload: Option<(String, std::path::PathBuf, u64)> = None;
    let tmp_dir = s.data.tmp();
    let cleanup = |u: &Option<(String, std::path::PathBuf, u64)>| {
        if let Some((_, p, _)) = u {
            let _ = std::fs::remove_file(p);
        }
    };
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                cleanup(&upload);
                return Err(multipart_error(e, limit));
            }
        };
        match field.name() {
            Some("name") => {
                let v = field.text().await.map_err(|e| multipart_error(e, limit))?;
                name = Some(v);
            }
            Some("file") => {
                let filename = field.file_name().unwrap_or("dataset.jsonl").to_string();
                let ext = match filename.rsplit('.').next().map(str::to_ascii_lowercase).as_deref() {
                    Some("csv") => "csv",
                    Some("json") => "json",
                    Some("parquet") => "parquet",
                    _ => "jsonl",
                };
                let path = tmp_dir.join(format!("{}.{ext}", files::new_id()));
                upload = Some((filename.clone(), path.clone(), 0));
                match receive_file(field, &path, limit, idle).await {
                    Ok(bytes) => upload = Some((filename, path, bytes)),
                    Err(e) => {
                        cleanup(&upload);
                        return Err(e);
                    }
                }
            }
            _ => {}
        }
    }
    let Some((filename, tmp, bytes)) = upload else {
        return Err(ApiError::bad_request("the upload has no `file` part"));
    };
    let task = match name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => {
            let clean = multitune::data::task_name(n);
            if clean != n {
                let _ = std::fs::remove_file(&tmp);
                return Err(ApiError::bad_request(format!(
                    "task name `{}` may only hold letters, digits, `-` and `_` (at most 64), and may not start or end with `_`",
                    files::truncate(n, 80)
                )));
            }
            clean
        }
        None => multitune::data::task_name(&filename),
    };
    let d = store(&s, tmp, &filename, task, bytes).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

/// Streams one multipart file field into `path` (fsynced), refusing it past `limit`
/// bytes. Returns its size; on an error the caller deletes the partial file.
async fn receive_file(
    mut field: axum::extract::multipart::Field<'_>,
    path: &std::path::Path,
    limit: u64,
    idle: std::time::Duration,
) -> ApiResult<u64> {
    let mut f = tokio::fs::File::create(path).await?;
    let mut bytes = 0u64;
    loop {
        let Ok(next) = tokio::time::timeout(idle, field.chunk()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the upload stalled: nothing arrived for {} s", idle.as_secs()),
            ));
        };
        match next {
            Ok(Some(chunk)) => {
                bytes += chunk.len() as u64;
                if bytes > limit {
                    return Err(too_large(limit));
                }
                f.write_all(&chunk).await?;
            }
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, limit)),
        }
    }
    f.sync_all().await?;
    Ok(bytes)
}

/// Validates the file at `tmp` (an upload in the temporary folder) and, if it is a
/// usable dataset, moves it into place and records it; a rejected file is deleted and the
/// error lists its problems by line.
pub async fn store(
    s: &AppState,
    tmp: std::path::PathBuf,
    filename: &str,
    task: String,
    bytes: u64,
) -> ApiResult<Dataset> {
    let limit = s.cfg.max_upload_bytes;
    let limits = data::Limits { max_bytes: limit, ..Default::default() };
    let check = tmp.clone();
    let parsed = s.background(move || data::load(&check, &LoadOptions { limits, ..Default::default() })).await?;
    let parsed = match parsed {
        Ok(d) => d,
        Err(multitune::Error::Dataset(rej)) => {
            let _ = std::fs::remove_file(&tmp);
            let mut details: Vec<String> = rej.issues.iter().map(|i| i.to_string()).collect();
            if rej.total > rej.issues.len() {
                details.push(format!("… and {} more", rej.total - rej.issues.len()));
            }
            let mut e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_dataset",
                format!("{}: rejected, {} problem{}", filename, rej.total, if rej.total == 1 { "" } else { "s" }),
            );
            e.details = details;
            return Err(e);
        }
        Err(other) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(other.into());
        }
    };
    let id = files::new_id();
    let dir = s.data.dataset(&id);
    let file = tmp
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| format!("data.{}", n.rsplit('.').next().unwrap_or("jsonl")))
        .unwrap_or_else(|| "data.jsonl".into());
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(&tmp, dir.join(&file))?;
    let d = Dataset {
        id: id.clone(),
        name: task,
        filename: files::truncate(filename, 200),
        format: parsed.format.name().into(),
        kind: format!("{:?}", parsed.kind).to_lowercase(),
        rows: parsed.records.len(),
        bytes,
        labels: parsed.labels.clone(),
        warnings: parsed.warnings.clone(),
        created_at: String::new(),
    };
    let created_at: String = s.db.with(|c| {
        c.execute(
            &format!(
                "INSERT INTO datasets (id, name, filename, file, format, kind, rows, bytes, labels, warnings, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, {NOW})"
            ),
            params![
                d.id,
                d.name,
                d.filename,
                file,
                d.format,
                d.kind,
                d.rows as i64,
                d.bytes as i64,
                serde_json::to_string(&d.labels).unwrap_or_default(),
                serde_json::to_string(&d.warnings).unwrap_or_default()
            ],
        )?;
        c.query_row("SELECT created_at FROM datasets WHERE id = ?1", [&d.id], |r| r.get(0))
    })?;
    let d = Dataset { created_at, ..d };
    // The summary is a cache: without it, showing the dataset parses the file again.
    if let Err(e) = serde_json::to_vec(&detail_of(d.clone(), &parsed))
        .map_err(multitune::Error::from)
        .and_then(|b| multitune::persist::write_atomic(&dir.join(SUMMARY), &b))
    {
        tracing::warn!("dataset {}: keeping its summary: {e}", d.id);
    }
    Ok(d)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::too_large(format!("the upload is larger than the limit of {limit} bytes"))
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::bad_request(format!("malformed upload: {}", e.body_text()))
    }
}

/// Imports the demo tasks (training and held-out files of `dir`) when the server has no
/// datasets yet, so a first visit has something to train on.
pub async fn import_demo(s: &AppState, dir: &std::path::Path) -> ApiResult<usize> {
    let have: i64 = s.db.with(|c| c.query_row("SELECT COUNT(*) FROM datasets", [], |r| r.get(0)))?;
    if have > 0 {
        return Ok(0);
    }
    let mut n = 0;
    for (sub, suffix) in [("", ""), ("eval", "_eval")] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
        let mut files: Vec<_> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect();
        files.sort();
        for p in files {
            let filename = p.file_name().and_then(|n| n.to_str()).unwrap_or("demo.jsonl").to_string();
            let tmp = s.data.tmp().join(format!("{}.jsonl", files::new_id()));
            let bytes = std::fs::copy(&p, &tmp)?;
            store(s, tmp, &filename, format!("{}{suffix}", multitune::data::task_name(&filename)), bytes).await?;
            n += 1;
        }
    }
    Ok(n)
}
