"""schemathesis hooks for tests/schemathesis/run (loaded through SCHEMATHESIS_HOOKS).

`error_shape`: every 4xx and 5xx answer is the one error shape of riverbank_runtime::http::HttpError,
`{"error": {"code": "<non-empty string>", "message": "<string>", ...}}`, served as application/json
(but for /health's 503, which says which dependency is down in the shape the document gives it).
"""
import json

import schemathesis


@schemathesis.check
def error_shape(ctx, response, case):
    """Every 4xx/5xx body is {"error": {"code", "message"}} (JSON)."""
    if response.status_code < 400:
        return None
    # /health answers 503 in its own documented shape (which dependency is down), not as an error.
    if case.path == "/health" and response.status_code == 503:
        return None
    label = f"{case.method} {case.formatted_path} -> {response.status_code}"
    content_type = response.headers.get("content-type", [""])
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else ""
    if not content_type.startswith("application/json"):
        raise AssertionError(f"{label}: content-type {content_type!r}, not application/json")
    try:
        body = json.loads(response.content or b"")
    except ValueError as e:
        raise AssertionError(f"{label}: body is not JSON ({e}): {response.content[:200]!r}")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(body) != {"error"}:
        raise AssertionError(f"{label}: not {{\"error\": {{...}}}}: {str(body)[:200]}")
    if not isinstance(error.get("code"), str) or not error["code"]:
        raise AssertionError(f"{label}: error.code missing or empty: {error}")
    if not isinstance(error.get("message"), str):
        raise AssertionError(f"{label}: error.message missing: {error}")
    return None
