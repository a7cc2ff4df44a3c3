//! Base models: the default model, the tiny test model, GGUF files and Hugging Face
//! folders found in the models folder, and ones registered by path.

use std::path::Path;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use multitune::model::fetch;
use multitune::model::ModelSource;
use multitune_api::{Model, RegisterModel};
use rusqlite::params;

use crate::db::NOW;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::files;
use crate::models::discovered;
use crate::state::AppState;

/// `GET /api/models`.
pub async fn models_index(State(s): State<AppState>) -> ApiResult<Json<Vec<Model>>> {
    let dir = &s.cfg.models_dir;
    let default = fetch::default_model_path(dir);
    let mut list = vec![
        Model {
            id: "default".into(),
            name: "SmolLM2-135M-Instruct (default)".into(),
            kind: "default".into(),
            path: Some(default.display().to_string()),
            available: default.exists(),
            source: "built-in".into(),
        },
        Model {
            id: "tiny".into(),
            name: "tiny random Llama (tests)".into(),
            kind: "tiny".into(),
            path: None,
            available: true,
            source: "built-in".into(),
        },
    ];
    list.extend(discovered(dir));
    let registered = s.db.with(|c| {
        let mut st = c.prepare("SELECT id, name, kind, path FROM models ORDER BY created_at, rowid")?;
        let rows = st
            .query_map([], |r| {
                let path: String = r.get(3)?;
                Ok(Model {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    kind: r.get(2)?,
                    available: Path::new(&path).exists(),
                    path: Some(path),
                    source: "registered".into(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows
    })?;
    list.extend(registered);
    Ok(Json(list))
}

/// `POST /api/models`: registers a GGUF file or a Hugging Face folder on this machine.
/// Its configuration is read now, so a bad path is refused at once.
pub async fn models_create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RegisterModel>,
) -> ApiResult<(StatusCode, Json<Model>)> {
    let path = req.path.trim().to_string();
    if path.is_empty() || !Path::new(&path).is_absolute() || path.contains('\0') {
        return Err(ApiError::bad_request("`path` must be an absolute path to a .gguf file or a model folder"));
    }
    let source = ModelSource::parse(&path).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let kind = match &source {
        ModelSource::Gguf(_) => "gguf",
        ModelSource::HfDir(p) => {
            let cfg = p.join("config.json");
            let text = std::fs::read_to_string(&cfg)
                .map_err(|_| ApiError::bad_request(format!("{} has no readable config.json", p.display())))?;
            multitune::model::config::HfConfig::from_json(&text)
                .and_then(multitune::model::config::HfConfig::into_model_config)
                .map_err(|e| ApiError::bad_request(format!("{}: {e}", cfg.display())))?;
            "hf"
        }
        _ => return Err(ApiError::bad_request("`default` and `tiny` are built in")),
    };
    let name =
        req.name.map(|n| files::truncate(n.trim(), 100)).filter(|n| !n.is_empty()).unwrap_or_else(|| {
            Path::new(&path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        });
    let id = files::new_id();
    let inserted = s.db.with(|c| {
        c.execute(
            &format!("INSERT INTO models (id, name, kind, path, created_at) VALUES (?1, ?2, ?3, ?4, {NOW})"),
            params![id, name, kind, path],
        )
    });
    if let Err(rusqlite::Error::SqliteFailure(e, _)) = &inserted {
        if e.code == rusqlite::ErrorCode::ConstraintViolation {
            return Err(ApiError::conflict(format!("{path} is already registered")));
        }
    }
    inserted?;
    Ok((
        StatusCode::CREATED,
        Json(Model { id, name, kind: kind.into(), path: Some(path), available: true, source: "registered".into() }),
    ))
}
