//! One error type for every handler: client mistakes become 4xx with a message that
//! names what is wrong; anything else is logged and answered with an opaque 500.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::FromRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use multitune_api::{ApiError as Body, ErrorBody};

/// A failed request.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// Itemised problems.
    pub details: Vec<String>,
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 with a list of problems.
    pub fn invalid(message: impl Into<String>, details: Vec<String>) -> Self {
        Self { details, ..Self::new(StatusCode::BAD_REQUEST, "invalid", message) }
    }

    /// 404.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} with id `{id}`"))
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 507: the disk holding the data folder is full. Nothing was stored.
    pub fn disk_full() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            "the disk holding Multitune's data folder is full: nothing was stored; free some space and try again",
        )
    }

    /// 500: the message is logged, the client sees only that something failed.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {err}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }

    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: vec![] }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: Body { code: self.code.into(), message: self.message, details: self.details } };
        (self.status, Json(body)).into_response()
    }
}

/// Whether an I/O error says the disk (or the user's quota on it) is full.
pub fn is_disk_full_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
}

/// Whether a database error says the disk is full (SQLite's `SQLITE_FULL`, or the I/O
/// error underneath).
pub fn is_disk_full_db(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Whether any error in a chain says the disk is full.
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some_and(is_disk_full_io)
            || e.downcast_ref::<rusqlite::Error>().is_some_and(is_disk_full_db)
        {
            return true;
        }
        next = e.source();
    }
    false
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        if is_disk_full_db(&e) {
            return Self::disk_full();
        }
        Self::internal(format!("database: {e}"))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        if is_disk_full_io(&e) {
            return Self::disk_full();
        }
        Self::internal(format!("io: {e}"))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        Self::internal(format!("json: {e}"))
    }
}

impl From<multitune::Error> for ApiError {
    fn from(e: multitune::Error) -> Self {
        match e {
            multitune::Error::Invalid(m) => Self::bad_request(m),
            other if is_disk_full(&other) => Self::disk_full(),
            other => Self::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("task: {e}"))
    }
}

/// `Json` whose rejections (malformed JSON, missing fields, wrong content type) answer in
/// our error shape.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::new(r.status(), "bad_json", r.body_text())
    }
}

/// `Query` whose rejections answer in our error shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(r.status(), "bad_query", r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_through_the_chain_and_answers_507() {
        let enospc = || std::io::Error::from_raw_os_error(28);
        assert!(is_disk_full_io(&enospc()));
        assert!(!is_disk_full_io(&std::io::Error::from_raw_os_error(2)));
        let engine = multitune::Error::File { path: "x/checkpoint.safetensors".into(), source: enospc() };
        assert!(is_disk_full(&engine));
        let wrapped = anyhow::Error::new(engine).context("run combined");
        assert!(wrapped.chain().any(is_disk_full));
        let sqlite = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(13), None);
        assert!(is_disk_full_db(&sqlite));
        let e = ApiError::from(sqlite);
        assert_eq!((e.status.as_u16(), e.code), (507, "disk_full"));
        assert_eq!(ApiError::from(enospc()).status.as_u16(), 507);
        assert_eq!(ApiError::from(std::io::Error::from_raw_os_error(13)).status.as_u16(), 500);
    }
}
