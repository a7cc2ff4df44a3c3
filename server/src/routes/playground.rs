//! The playground: prompt the base model or any finished run's adapter for a task;
//! tokens stream back as server-sent events.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use multitune::eval::generate::{generate_text, GenerateConfig};
use multitune::strategy::heads::{Answer, MultiHead};
use multitune_api::{ExperimentCreate, PlaygroundChunk, PlaygroundRequest};

use crate::error::{ApiError, ApiJson, ApiResult};
use crate::files::check_id;
use crate::state::AppState;

fn chunk(c: &PlaygroundChunk) -> SseEvent {
    SseEvent::default().event(if c.done { "done" } else { "token" }).data(serde_json::to_string(c).unwrap_or_default())
}

/// `POST /api/playground`.
pub async fn playground_create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<PlaygroundRequest>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    check_id("experiment", &req.experiment)?;
    check_request(&req)?;
    let spec: Option<String> = s.db.with(|c| {
        use rusqlite::OptionalExtension;
        c.query_row("SELECT spec FROM experiments WHERE id = ?1", [&req.experiment], |r| r.get(0)).optional()
    })?;
    let spec: ExperimentCreate =
        serde_json::from_str(&spec.ok_or_else(|| ApiError::not_found("experiment", &req.experiment))?)?;
    let adapter_dir = match req.run {
        None => None,
        Some(run_id) => Some(adapter_dir(&s, &req, run_id)?),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(256);
    let state = s.clone();
    // Fail fast on loading problems, before the stream starts.
    let model = tokio::task::spawn_blocking(move || state.model(&spec.model)).await??;
    let (adapter, heads) = match &adapter_dir {
        None => (None, None),
        Some((dir, true)) => {
            let mh = MultiHead::load(dir, &model.model)?;
            (Some(mh.adapter.clone()), Some(mh))
        }
        Some((dir, false)) => {
            (Some(multitune::adapter::peft::load_adapter(dir, &model.model.cfg, model.model.device())?), None)
        }
    };
    tokio::task::spawn_blocking(move || {
        let send = |c: PlaygroundChunk| tx.blocking_send(chunk(&c)).is_ok();
        let fail = |e: &dyn std::fmt::Display| {
            let _ = send(PlaygroundChunk { text: format!("[error: {e}]"), done: true, labels: vec![] });
        };
        let mut gen_model = model.model.clone();
        if let (Some(mh), Some(task)) = (&heads, req.task.as_deref()) {
            match mh.answer(&model.model, &model.tokenizer, task, None, &req.prompt) {
                Ok(Some(Answer::Labels(probs))) => {
                    send(PlaygroundChunk { text: probs[0].0.clone(), done: true, labels: probs });
                    return;
                }
                Ok(Some(Answer::Generate(m))) => gen_model = *m,
                Ok(None) => {}
                Err(e) => return fail(&e),
            }
        }
        let cfg = GenerateConfig {
            max_new_tokens: req.max_new_tokens,
            temperature: req.temperature,
            top_p: 0.95,
            ..Default::default()
        };
        let mut open = true;
        let r = generate_text(&gen_model, &model.tokenizer, adapter.as_ref(), None, &req.prompt, &cfg, &mut |piece| {
            if open {
                open = send(PlaygroundChunk { text: piece.into(), done: false, labels: vec![] });
            }
        });
        match r {
            Ok(text) => {
                send(PlaygroundChunk { text, done: true, labels: vec![] });
            }
            Err(e) => fail(&e),
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The request's own limits, every problem listed.
fn check_request(req: &PlaygroundRequest) -> ApiResult<()> {
    let mut errors = Vec::new();
    if req.prompt.trim().is_empty() || req.prompt.chars().count() > 20_000 {
        errors.push("prompt: give 1 to 20000 characters".to_string());
    }
    if req.max_new_tokens == 0 || req.max_new_tokens > 1024 {
        errors.push(format!("max_new_tokens: must be 1 to 1024, not {}", req.max_new_tokens));
    }
    if !(0.0..=2.0).contains(&req.temperature) {
        errors.push(format!("temperature: must be 0 to 2, not {}", req.temperature));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("the playground request is not valid", errors))
    }
}

/// The adapter folder of run `run_id` that serves this request (a routed run has one
/// per task: the request's `task` picks it), and whether heads lie beside it.
fn adapter_dir(s: &AppState, req: &PlaygroundRequest, run_id: i64) -> ApiResult<(std::path::PathBuf, bool)> {
    let (run, dirs) = super::runs::find(s, &run_id.to_string())?;
    if run.experiment_id != req.experiment {
        return Err(ApiError::bad_request(format!("run {run_id} is not part of experiment {}", req.experiment)));
    }
    let base = s.data.experiment(&run.experiment_id);
    let pick = match dirs.len() {
        0 => return Err(ApiError::conflict("this run has no adapter yet")),
        1 => dirs[0].clone(),
        _ => {
            let task = req
                .task
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("a routed run has one adapter per task: say which `task`"))?;
            let want = multitune::strategy::separate::adapter_dir_name(task);
            dirs.iter()
                .find(|d| d.ends_with(&want))
                .cloned()
                .ok_or_else(|| ApiError::bad_request(format!("this run has no adapter for task `{task}`")))?
        }
    };
    Ok((base.join(pick), run.has_heads))
}
