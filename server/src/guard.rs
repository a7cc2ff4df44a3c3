//! The trust boundary of a server on loopback: any web page the user opens can send
//! requests to 127.0.0.1, and a DNS-rebinding page (a domain that re-resolves to
//! 127.0.0.1) can read the answers. So every request's `Host` must name this server
//! (defeats rebinding), every state-changing request must come from this server's own
//! pages (`Origin`/`Referer`, `Sec-Fetch-Site`: defeats CSRF), and every response carries
//! the headers a careful local web app sends. CLI clients (curl, scripts) send no
//! `Origin` and keep working.

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// The host part of a `Host` header value (`name[:port]`, `[v6]:port`), lowercased.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .map_or(host, |(n, port)| if port.bytes().all(|b| b.is_ascii_digit()) { n } else { host }),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request naming `host` may reach this server: loopback names, IP addresses
/// (a rebinding page always uses a domain name, and a page's origin is the address it
/// names), and the names given with `--allowed-host`. The port is not checked: a page
/// cannot make the browser send another site's host name.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok()
        || allowed.iter().any(|a| a.trim().trim_end_matches('.').eq_ignore_ascii_case(&name))
}

/// Refuses requests whose `Host` names another site (403, saying how to allow a name).
pub async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(host) = req.headers().get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !host_allowed(host, &state.cfg.allowed_hosts) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "requests for host `{}` are refused (DNS rebinding protection); to reach this server by that name, \
                     start it with --allowed-host {} (or MULTITUNE_ALLOWED_HOSTS)",
                    crate::files::truncate(host, 80),
                    crate::files::truncate(&host_name(host), 80)
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Why a state-changing request is refused as cross-site, if it is: a `Sec-Fetch-Site`
/// of `cross-site` or `same-site`, or an `Origin` (failing that, a `Referer`) that is not
/// `http(s)://<Host>`. Requests without these headers (CLI clients) pass.
pub fn cross_site(method: &Method, headers: &HeaderMap) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let get = |h: header::HeaderName| headers.get(h).map(|v| v.to_str().unwrap_or("?").to_string());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site == "cross-site" || site == "same-site" {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    let host = get(header::HOST)?;
    let origin = match (get(header::ORIGIN), get(header::REFERER)) {
        (Some(o), _) => o,
        (None, Some(r)) => {
            let rest = r.split_once("://").map_or("", |(_, rest)| rest);
            let end = rest.find('/').unwrap_or(rest.len());
            format!("{}://{}", r.split("://").next().unwrap_or(""), &rest[..end])
        }
        (None, None) => return None,
    };
    let own = ["http", "https"].iter().any(|s| origin.eq_ignore_ascii_case(&format!("{s}://{host}")));
    (!own).then(|| format!("Origin {}", crate::files::truncate(&origin, 80)))
}

/// Refuses cross-site state-changing requests (CSRF) with 403.
pub async fn check_origin(req: Request, next: Next) -> Response {
    if let Some(why) = cross_site(req.method(), req.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            format!(
                "a {} request from another site is refused ({why}); use the dashboard or a CLI client",
                req.method()
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// The dashboard's content security policy: everything from this origin only, wasm
/// allowed to compile (`'wasm-unsafe-eval'`), and of inline scripts only those the built
/// `index.html` holds (the loader `scripts/build-ui.py` writes), by their SHA-256, read from
/// `index` at start-up.
pub fn content_security_policy(index: Option<&str>) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut hashes = String::new();
    let mut rest = index.unwrap_or("");
    while let Some(open) = rest.find("<script") {
        let after = &rest[open..];
        let (Some(gt), Some(close)) = (after.find('>'), after.find("</script>")) else { break };
        if gt < close {
            let body = &after[gt + 1..close];
            if !body.trim().is_empty() {
                let digest = sha2::Sha256::digest(body.as_bytes());
                hashes.push_str(&format!(" 'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)));
            }
        }
        rest = &after[close + "</script>".len()..];
    }
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{hashes}; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         frame-ancestors 'none'; form-action 'self'"
    )
}

/// The headers every response carries: no MIME sniffing, no referrer, never framed, and
/// the content security policy `csp`.
pub async fn security_headers(State(csp): State<std::sync::Arc<HeaderValue>>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, (*csp).clone());
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// The access token kept in `data_dir/token` (mode 0600), made on first start (128 random
/// bits, hex) and reused after, as Jupyter does: a token by default, even on loopback.
pub fn load_or_create_token(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() >= 16 {
            return Ok(t);
        }
    }
    let token: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
    multitune::persist::write_atomic_private(&path, token.as_bytes()).map_err(std::io::Error::other)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create_token(&dir.path().join("data")).unwrap();
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(load_or_create_token(&dir.path().join("data")).unwrap(), t, "reused across restarts");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("data/token")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_token(other.path()).unwrap(), t, "random per data folder");
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_scripts_of_the_page() {
        use base64::Engine;
        use sha2::Digest;
        let page = "<script type=\"module\">\nimport init from '/a.js';\n</script><script src=\"/b.js\"></script>";
        let want =
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"\nimport init from '/a.js';\n"));
        let csp = content_security_policy(Some(page));
        assert!(csp.contains(&format!("'sha256-{want}'")), "{csp}");
        assert_eq!(csp.matches("'sha256-").count(), 1, "an external script needs no hash: {csp}");
        assert!(csp.contains("'wasm-unsafe-eval'") && csp.contains("frame-ancestors 'none'"));
        assert!(!content_security_policy(None).contains("sha256"));
    }

    #[test]
    fn hosts_are_loopback_addresses_or_allowed_names() {
        let allowed = vec!["lab.example".to_string()];
        for ok in [
            "127.0.0.1:3000",
            "localhost:3000",
            "LOCALHOST",
            "[::1]:3000",
            "10.1.2.3",
            "lab.example:3000",
            "app.localhost",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "attacker.test",
            "attacker.test:3000",
            "127.0.0.1.attacker.test",
            "localhost.attacker.test",
            "",
            "lab.example.evil",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn only_same_origin_or_header_less_writes_pass() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let host = ("host", "127.0.0.1:3000");
        assert!(cross_site(&Method::POST, &h(&[host])).is_none(), "a CLI client");
        assert!(cross_site(&Method::POST, &h(&[host, ("origin", "http://127.0.0.1:3000")])).is_none());
        assert!(cross_site(&Method::DELETE, &h(&[host, ("referer", "http://127.0.0.1:3000/experiments/1")])).is_none());
        assert!(cross_site(&Method::GET, &h(&[host, ("origin", "http://attacker.test")])).is_none(), "reads pass");
        for bad in [
            vec![host, ("origin", "http://attacker.test")],
            vec![host, ("origin", "http://127.0.0.1:8000")],
            vec![host, ("origin", "null")],
            vec![host, ("referer", "http://attacker.test/page")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site"), ("origin", "http://127.0.0.1:3000")],
        ] {
            assert!(cross_site(&Method::POST, &h(&bad)).is_some(), "{bad:?}");
        }
    }
}
