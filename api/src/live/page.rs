//! The dashboard page (`GET /dashboard`, `/` redirects there): three files under `api/static/`, embedded
//! in the binary, no build step. The page reads `GET /v1/live` with the key the user types (kept in the
//! tab's sessionStorage, never in a URL) and draws with plain SVG. It is served with a strict content
//! security policy: its own scripts, styles and connections only.
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use riverbank_runtime::http::HttpError;

const HTML: &str = include_str!("../../static/dashboard.html");
const JS: &str = include_str!("../../static/dashboard.js");
const CSS: &str = include_str!("../../static/dashboard.css");

/// Everything the page may load or connect to: itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: to the dashboard.
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// `GET /dashboard`.
pub async fn page() -> Response {
    file("text/html; charset=utf-8", HTML)
}

/// `GET /dashboard/{file}`: the page's script and style sheet.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "dashboard.js" => file("text/javascript; charset=utf-8", JS),
        "dashboard.css" => file("text/css; charset=utf-8", CSS),
        _ => HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response(),
    }
}
