//! What several resources serve the same way: live event streams that replay from SQLite
//! (`Last-Event-ID` / `?after=`) and then follow the broadcast, and files sent as
//! downloads.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use multitune_api::{Event, Status};
use rusqlite::params;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Streams a file as a download.
pub async fn send_file(path: &std::path::Path, ty: &str, filename: &str) -> ApiResult<Response> {
    let f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok((
        [
            (header::CONTENT_TYPE, ty.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        body,
    )
        .into_response())
}

/// Where a client resumes an event stream: `Last-Event-ID`, or `?after=`.
#[derive(Debug, Deserialize)]
pub struct After {
    after: Option<i64>,
}

/// Where an event stream resumes: `Last-Event-ID`, else `?after=`, else the start.
pub fn last_event_id(headers: &HeaderMap, q: &After) -> ApiResult<i64> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id")),
        None => Ok(q.after.unwrap_or(0)),
    }
}

fn backlog(s: &AppState, id: &str, after: i64) -> rusqlite::Result<Vec<(i64, Event)>> {
    s.db.with(|c| {
        let mut st =
            c.prepare("SELECT id, data FROM events WHERE experiment_id = ?1 AND id > ?2 ORDER BY id LIMIT 5000")?;
        let rows = st
            .query_map(params![id, after], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .filter_map(|r| r.ok().and_then(|(i, d)| serde_json::from_str(&d).ok().map(|e| (i, e))))
            .collect();
        Ok(rows)
    })
}

/// An experiment's events after `after` (optionally one run's): first what the database
/// holds, then live ones; no gap and no repeat, because the live subscription starts
/// before the database is read and ids only grow. The stream ends after the experiment
/// reaches a final status.
pub fn follow(
    s: AppState,
    id: String,
    run: Option<String>,
    after: i64,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let mut last = after;
        let wanted = |e: &Event| run.is_none() || matches!(e, Event::Status { .. }) || e.run() == run.as_deref();
        let sse = |i: i64, e: &Event| {
            SseEvent::default().id(i.to_string()).event(e.kind()).data(serde_json::to_string(e).unwrap_or_default())
        };
        let mut sub = s.events.subscribe();
        loop {
            let final_before: bool = s
                .db
                .with(|c| c.query_row("SELECT status FROM experiments WHERE id = ?1", [&id], |r| r.get::<_, String>(0)))
                .ok()
                .and_then(|st| Status::parse(&st))
                .is_none_or(Status::is_final);
            loop {
                let Ok(batch) = backlog(&s, &id, last) else { return };
                if batch.is_empty() {
                    break;
                }
                for (i, e) in batch {
                    last = i;
                    if wanted(&e) && tx.send(sse(i, &e)).await.is_err() {
                        return;
                    }
                }
            }
            if final_before {
                return;
            }
            loop {
                match sub.recv().await {
                    Ok(env) if env.experiment_id == id && env.id > last => {
                        last = env.id;
                        if wanted(&env.event) && tx.send(sse(env.id, &env.event)).await.is_err() {
                            return;
                        }
                        if let Event::Status { status, .. } = env.event {
                            if status.is_final() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    // Missed some: read them from the database.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
