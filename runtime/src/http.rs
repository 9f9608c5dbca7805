//! The one HTTP error shape: `{ "error": { "code": "...", "message": "..." } }`.
//! 4xx say what to fix; 5xx say nothing internal (the detail is logged with a trace id).
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// For validation errors: the field at fault and the rule it breaks.
    pub field: Option<(String, &'static str)>,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError { status, code, message: message.into(), retry_after_s: None, field: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422: a request that parsed but breaks a rule; names the field and the rule.
    pub fn invalid_field(field: impl Into<String>, rule: &'static str, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        HttpError {
            field: Some((field, rule)),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
        }
    }

    /// A server-side failure: the detail goes to the log under a fresh trace id, the client gets the id.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        let trace_id = uuid::Uuid::new_v4();
        tracing::error!(%trace_id, error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error; trace id {trace_id}"),
        )
    }

    /// A dependency is down: retry later.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_s: u64) -> Self {
        HttpError {
            retry_after_s: Some(retry_after_s),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some((field, rule)) = &self.field {
            error["field"] = serde_json::json!(field);
            error["rule"] = serde_json::json!(rule);
        }
        let body = serde_json::json!({ "error": error });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Bound in-flight requests: past `max`, answer 503 at once instead of queueing without limit.
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    retry_after_s: u64,
}

impl InFlight {
    pub fn new(max: usize, retry_after_s: u64) -> Self {
        InFlight { permits: std::sync::Arc::new(tokio::sync::Semaphore::new(max)), retry_after_s }
    }

    pub fn enter(&self) -> Result<tokio::sync::OwnedSemaphorePermit, HttpError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            HttpError::unavailable(
                "overloaded",
                "too many requests in flight; retry later",
                self.retry_after_s,
            )
        })
    }
}

/// Run a handler's work within `timeout`; past it the client gets 408 with the JSON error shape.
pub async fn within<T>(
    timeout: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("request not completed within {} ms", timeout.as_millis()),
        )),
    }
}

/// Limits of the HTTP server itself (below the handlers).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Open connections at most; past it, new connections wait in the kernel's backlog.
    pub connections_max: usize,
    /// A client must have sent its request head within this long, or the connection is closed.
    pub header_read_timeout: std::time::Duration,
    /// Read buffer per connection (bounds the request head), in bytes.
    pub read_buffer_bytes_max: usize,
    /// After shutdown is signalled, in-flight requests get this long to finish.
    pub drain_timeout: std::time::Duration,
}

impl ServerLimits {
    /// From config values; in-flight requests drain for one request timeout.
    pub fn from_ms(
        connections_max: usize,
        header_read_timeout_ms: u64,
        read_buffer_bytes_max: usize,
        request_timeout_ms: u64,
    ) -> ServerLimits {
        ServerLimits {
            connections_max,
            header_read_timeout: std::time::Duration::from_millis(header_read_timeout_ms),
            read_buffer_bytes_max,
            drain_timeout: std::time::Duration::from_millis(request_timeout_ms),
        }
    }
}

/// Serve `router` on `listener` (HTTP/1.1) until `shutdown`, with bounded connections, a deadline for
/// the request head (a client trickling its headers is cut off, not kept forever) and a bounded read
/// buffer. Handlers bound bodies and total request time themselves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ServerLimits,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.read_buffer_bytes_max);
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?limits.drain_timeout, "connections still open after the drain timeout");
    }
    Ok(())
}

/// The (method, path) of every `.route("/path", get(…).post(…))` call in a router's source, methods in
/// lower case: what tests compare with the OpenAPI documents and probe across tenants, so a route added
/// to a router without a spec entry or a probe fails them. An error names a call it cannot read.
pub fn routes_in_source(src: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, _) in src.match_indices(".route(") {
        let rest = &src[i + ".route(".len()..];
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(j, _)| j)
            .ok_or("unbalanced .route(")?;
        let call = &rest[..end];
        let path = call.split('"').nth(1).ok_or_else(|| format!("no path in .route({call})"))?;
        let before = out.len();
        for m in ["get", "post", "put", "patch", "delete"] {
            let hit = call.match_indices(&format!("{m}(")).any(|(k, _)| {
                k == 0 || !call.as_bytes()[k - 1].is_ascii_alphanumeric() && call.as_bytes()[k - 1] != b'_'
            });
            if hit {
                out.push((m.to_owned(), path.to_owned()));
            }
        }
        if out.len() == before {
            return Err(format!("no method in .route({call})"));
        }
    }
    Ok(out)
}

/// An unknown path, in the one error shape (axum's own answer has an empty body): both servers'
/// router fallback.
pub async fn not_found() -> HttpError {
    HttpError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A known path with a method it does not take, in the one error shape: both servers' fallback.
pub async fn method_not_allowed() -> HttpError {
    HttpError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method",
    )
}

/// For a test keeping a checked-in generated file equal to what the code builds: with
/// `RIVERBANK_BLESS` set, write `built` to `path`; otherwise an error when they differ, saying `how`
/// to bless it.
pub fn check_checked_in(path: &std::path::Path, built: &str, how: &str) -> Result<(), String> {
    if std::env::var_os("RIVERBANK_BLESS").is_some() {
        return std::fs::write(path, built).map_err(|e| format!("write {}: {e}", path.display()));
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    if on_disk == built {
        Ok(())
    } else {
        Err(format!("{} differs from what the code builds; run {how}", path.display()))
    }
}

#[cfg(test)]
mod route_tests {
    use super::routes_in_source;

    #[test]
    fn routes_are_read_from_a_routers_source() {
        let src = r#"Router::new()
            .route("/a/{id}", get(a::read).post(write))
            .route("/b", put(b))
            .route("/health", get(health))"#;
        let routes = routes_in_source(src).expect("reads");
        let want = [("get", "/a/{id}"), ("post", "/a/{id}"), ("put", "/b"), ("get", "/health")];
        assert_eq!(routes, want.map(|(m, p)| (m.to_owned(), p.to_owned())).to_vec());
        assert!(routes_in_source(r#".route("/x", handler)"#).is_err(), "no method");
        assert!(routes_in_source(r#".route("/x", get(h)"#).is_err(), "unbalanced");
        assert!(routes_in_source(r#".route("/x", target(h))"#).is_err(), "get( inside another name");
    }
}
