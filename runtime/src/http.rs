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
