//! All HTTP: JSON requests, uploads with progress, event streams. Non-2xx answers become
//! the API's own error type, so pages show the server's message and details.

use multitune_api::{ApiError, Dataset, ErrorBody, PlaygroundChunk};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

const TOKEN_KEY: &str = "multitune-token";

// The token lives in the tab's session storage: it survives reloads and in-app
// navigation, is never sent by the browser on its own (so a cross-site request cannot
// carry it, unlike a cookie), and is gone when the tab closes; the server's start-up URL
// (or the token form) brings it back.

/// The access token of this tab, if any.
pub fn token() -> Option<String> {
    web_sys::window()?.session_storage().ok()??.get_item(TOKEN_KEY).ok()?.filter(|t| !t.is_empty())
}

/// Remembers the access token for this tab.
pub fn set_token(t: &str) {
    if let Some(s) = web_sys::window().and_then(|w| w.session_storage().ok().flatten()) {
        let _ = s.set_item(TOKEN_KEY, t);
    }
}

/// A URL query (`?a=1&token=x&b=2`) split into its `token` value and the query without it
/// (`?a=1&b=2`, or empty).
pub fn split_token(search: &str) -> (Option<String>, String) {
    let mut token = None;
    let rest: Vec<&str> = search
        .trim_start_matches('?')
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| match kv.strip_prefix("token=") {
            Some(t) => {
                token = Some(js_decode(t));
                false
            }
            None => true,
        })
        .collect();
    (token.filter(|t| !t.is_empty()), if rest.is_empty() { String::new() } else { format!("?{}", rest.join("&")) })
}

fn js_decode(s: &str) -> String {
    if cfg!(target_arch = "wasm32") {
        js_sys::decode_uri_component(s).ok().and_then(|v| v.as_string()).unwrap_or_else(|| s.to_string())
    } else {
        s.to_string()
    }
}

/// Takes the token from the address bar (the server prints the dashboard's URL with
/// it), keeps it for this tab, and removes it from the address bar and the history.
pub fn adopt_url_token() {
    let Some(w) = web_sys::window() else { return };
    let loc = w.location();
    let (Ok(search), Ok(path), Ok(hash)) = (loc.search(), loc.pathname(), loc.hash()) else { return };
    let (Some(t), rest) = split_token(&search) else { return };
    set_token(&t);
    if let Ok(h) = w.history() {
        let _ = h.replace_state_with_url(&JsValue::NULL, "", Some(&format!("{path}{rest}{hash}")));
    }
}

/// `path` with the token as a query parameter (for links and event streams, which
/// cannot carry headers).
pub fn url(path: &str) -> String {
    match token() {
        Some(t) => {
            format!("{path}{}token={}", if path.contains('?') { '&' } else { '?' }, js_sys::encode_uri_component(&t))
        }
        None => path.to_string(),
    }
}

fn local(message: impl Into<String>) -> ApiError {
    ApiError { code: "network".into(), message: message.into(), details: vec![] }
}

fn js_err(e: JsValue) -> ApiError {
    local(e.as_string().unwrap_or_else(|| "the request failed (is the server running?)".into()))
}

/// The error an unsuccessful response carries.
pub fn error_from(status: u16, text: &str) -> ApiError {
    serde_json::from_str::<ErrorBody>(text).map(|b| b.error).unwrap_or_else(|_| ApiError {
        code: "http".into(),
        message: format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()),
        details: vec![],
    })
}

async fn request(method: &str, path: &str, body: Option<String>) -> Result<(u16, String), ApiError> {
    let opts = web_sys::RequestInit::new();
    opts.set_method(method);
    if let Some(b) = &body {
        opts.set_body(&JsValue::from_str(b));
    }
    let req = web_sys::Request::new_with_str_and_init(path, &opts).map_err(js_err)?;
    let headers = req.headers();
    if body.is_some() {
        headers.set("Content-Type", "application/json").map_err(js_err)?;
    }
    if let Some(t) = token() {
        headers.set("Authorization", &format!("Bearer {t}")).map_err(js_err)?;
    }
    let window = web_sys::window().ok_or_else(|| local("no window"))?;
    let resp: web_sys::Response =
        JsFuture::from(window.fetch_with_request(&req)).await.map_err(js_err)?.dyn_into().map_err(js_err)?;
    let text = JsFuture::from(resp.text().map_err(js_err)?).await.map_err(js_err)?.as_string().unwrap_or_default();
    Ok((resp.status(), text))
}

async fn json<T: DeserializeOwned>(method: &str, path: &str, body: Option<String>) -> Result<T, ApiError> {
    let (status, text) = request(method, path, body).await?;
    if !(200..300).contains(&status) {
        return Err(error_from(status, &text));
    }
    serde_json::from_str(&text).map_err(|e| local(format!("unexpected answer from {path}: {e}")))
}

/// `GET` JSON.
pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    json("GET", path, None).await
}

/// `POST` JSON, JSON back.
pub async fn post<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ApiError> {
    json("POST", path, Some(serde_json::to_string(body).map_err(|e| local(e.to_string()))?)).await
}

/// `POST` without a body.
pub async fn post_empty<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    json("POST", path, None).await
}

/// `POST` JSON, raw text back (server-sent events read whole).
pub async fn post_text<B: Serialize>(path: &str, body: &B) -> Result<String, ApiError> {
    let (status, text) =
        request("POST", path, Some(serde_json::to_string(body).map_err(|e| local(e.to_string()))?)).await?;
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        Err(error_from(status, &text))
    }
}

/// `DELETE`.
pub async fn delete(path: &str) -> Result<(), ApiError> {
    let (status, text) = request("DELETE", path, None).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(error_from(status, &text))
    }
}

/// Uploads a dataset file, reporting progress (0..1), then the result.
pub fn upload(
    file: web_sys::File,
    on_progress: impl Fn(f64) + 'static,
    on_done: impl FnOnce(Result<Dataset, ApiError>) + 'static,
) {
    let start = || -> Result<web_sys::XmlHttpRequest, JsValue> {
        let xhr = web_sys::XmlHttpRequest::new()?;
        xhr.open("POST", "/api/datasets")?;
        if let Some(t) = token() {
            xhr.set_request_header("Authorization", &format!("Bearer {t}"))?;
        }
        Ok(xhr)
    };
    let xhr = match start() {
        Ok(x) => x,
        Err(e) => return on_done(Err(js_err(e))),
    };
    let progress = Closure::<dyn Fn(web_sys::ProgressEvent)>::new(move |e: web_sys::ProgressEvent| {
        if e.length_computable() && e.total() > 0.0 {
            on_progress(e.loaded() / e.total());
        }
    });
    if let Ok(up) = xhr.upload() {
        up.set_onprogress(Some(progress.as_ref().unchecked_ref()));
    }
    progress.forget();
    let done = std::rc::Rc::new(std::cell::RefCell::new(Some(on_done)));
    let x2 = xhr.clone();
    let d2 = done.clone();
    let loaded = Closure::<dyn Fn()>::new(move || {
        let status = x2.status().unwrap_or(0);
        let text = x2.response_text().ok().flatten().unwrap_or_default();
        let r = if (200..300).contains(&status) {
            serde_json::from_str(&text).map_err(|e| local(e.to_string()))
        } else {
            Err(error_from(status, &text))
        };
        if let Some(f) = d2.borrow_mut().take() {
            f(r);
        }
    });
    xhr.set_onload(Some(loaded.as_ref().unchecked_ref()));
    loaded.forget();
    let failed = Closure::<dyn Fn()>::new(move || {
        if let Some(f) = done.borrow_mut().take() {
            f(Err(local("the upload failed (connection closed; is the file too large?)")));
        }
    });
    xhr.set_onerror(Some(failed.as_ref().unchecked_ref()));
    failed.forget();
    let form = match web_sys::FormData::new() {
        Ok(f) => f,
        Err(_) => return,
    };
    let _ = form.append_with_blob_and_filename("file", &file, &file.name());
    let _ = xhr.send_with_opt_form_data(Some(&form));
}

/// Parses a server-sent event body into `(event, data)` pairs.
pub fn parse_sse(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = "message".to_string();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            (!data.is_empty()).then(|| (event, data.join("\n")))
        })
        .collect()
}

/// The final text (and label probabilities) of a playground answer's event stream.
pub fn answer_of(sse: &str) -> Option<PlaygroundChunk> {
    parse_sse(sse)
        .into_iter()
        .filter(|(e, _)| e == "done")
        .filter_map(|(_, d)| serde_json::from_str(&d).ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_split_from_the_query() {
        assert_eq!(split_token("?token=abc"), (Some("abc".into()), String::new()));
        assert_eq!(split_token("?a=1&token=abc&b=2"), (Some("abc".into()), "?a=1&b=2".into()));
        assert_eq!(split_token("?a=1"), (None, "?a=1".into()));
        assert_eq!(split_token(""), (None, String::new()));
        assert_eq!(split_token("?token="), (None, String::new()));
    }

    #[test]
    fn sse_bodies_parse() {
        let t = "event: token\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: done\ndata: x\ndata: y\n\n";
        assert_eq!(
            parse_sse(t),
            vec![("token".to_string(), "{\"a\":1}".to_string()), ("done".to_string(), "x\ny".to_string())]
        );
    }

    #[test]
    fn errors_keep_the_server_message() {
        let e = error_from(422, r#"{"error":{"code":"invalid_dataset","message":"bad","details":["line 2: x"]}}"#);
        assert_eq!((e.code.as_str(), e.details.len()), ("invalid_dataset", 1));
        let e = error_from(502, "gateway");
        assert!(e.message.starts_with("HTTP 502"));
    }

    #[test]
    fn the_done_event_carries_the_answer() {
        let t = "event: token\ndata: {\"text\":\"Pa\",\"done\":false}\n\nevent: done\ndata: {\"text\":\"Paris\",\"done\":true,\"labels\":[]}\n\n";
        assert_eq!(answer_of(t).unwrap().text, "Paris");
        assert!(answer_of("event: token\ndata: {}\n\n").is_none());
    }
}
