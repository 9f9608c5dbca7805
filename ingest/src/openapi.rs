//! The edge's OpenAPI 3.0 document, built from the code: every route of [`crate::server::router`];
//! a command's body is the schema of the type `riverbank_ingest_core::commands::decode` reads for its
//! [`Endpoint`], its roles are the endpoint's; a webhook's security is the signature scheme of each
//! built-in provider definition (`ingest/providers/*.toml`); every 4xx and 5xx is the one error shape
//! (`riverbank_runtime::http::HttpError`). Served at `GET /openapi.json` (no key) and checked in as
//! `ingest/openapi.json`: a test keeps the file equal to what the code builds (regenerate with
//! `RIVERBANK_BLESS=1 cargo test -p riverbank-ingest openapi`), another that every route of the
//! router's source is in the document, and no other.
use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use riverbank_ingest_core::commands::{Endpoint, KycUserAction};
use riverbank_ingest_core::provider::{self, ProviderDef};
use riverbank_ingest_core::schemes::Scheme;
use riverbank_ingest_core::standard_webhooks as sw;
use schemars::gen::SchemaSettings;
use serde_json::{json, Map, Value};

/// The checked-in copy, relative to the crate.
pub const CHECKED_IN: &str = "openapi.json";

/// The commands: (method, route, endpoint, summary).
const COMMANDS: [(&str, &str, Endpoint, &str); 16] = [
    ("post", "/v1/transfers", Endpoint::CreateTransfer, "Request a transfer"),
    ("post", "/v1/transfers/{id}/approve", Endpoint::ApproveTransfer, "Approve a transfer awaiting approval"),
    ("post", "/v1/transfers/{id}/reject", Endpoint::RejectTransfer, "Reject a transfer awaiting approval"),
    ("post", "/v1/transfers/{id}/cancel", Endpoint::CancelTransfer, "Cancel a transfer"),
    ("post", "/v1/fx/quotes", Endpoint::FxQuote, "Request an FX quote"),
    ("post", "/v1/fx/conversions", Endpoint::FxConversion, "Convert on a quote"),
    ("post", "/v1/fx/rates", Endpoint::FxRates, "Publish FX rates"),
    (
        "post",
        "/v1/fx/conversions/{id}/decision",
        Endpoint::FxConversionDecision,
        "Approve or reject a conversion above the OTC threshold",
    ),
    ("put", "/v1/billing/plan", Endpoint::BillingPlan, "Set the tenant's subscription plan"),
    ("put", "/v1/fees/{id}", Endpoint::FeeConfig, "Set the fee of a transfer kind"),
    ("post", "/v1/kyc/users/{id}/freeze", Endpoint::KycUser(KycUserAction::Freeze), "Freeze a user"),
    ("post", "/v1/kyc/users/{id}/unfreeze", Endpoint::KycUser(KycUserAction::Unfreeze), "Unfreeze a user"),
    ("post", "/v1/kyc/users/{id}/close", Endpoint::KycUser(KycUserAction::Close), "Close a user"),
    ("post", "/v1/kyc/cases/{id}/decision", Endpoint::KycReviewDecision, "Decide a KYC case in review"),
    (
        "post",
        "/v1/risk/reviews/{id}/decision",
        Endpoint::RiskReviewDecision,
        "Decide a transfer in risk review",
    ),
    ("post", "/v1/users/{id}/consents", Endpoint::Consent, "Record a user's consent or its withdrawal"),
];

/// `GET /openapi.json`: the document (built once).
pub async fn serve() -> Response {
    static DOC: OnceLock<Value> = OnceLock::new();
    axum::Json(DOC.get_or_init(document)).into_response()
}

/// The document as checked in: pretty JSON and a final newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_else(|e| panic!("{e}"));
    text.push('\n');
    text
}

/// Every operation of the edge, as OpenAPI 3.0.
pub fn document() -> Value {
    let mut gen = SchemaSettings::openapi3().into_generator();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut add = |method: &str, path: &str, op: Value| {
        let prev = paths.entry(path.to_owned()).or_default().insert(method.to_owned(), op);
        assert!(prev.is_none(), "{method} {path} twice");
    };
    let providers = provider::load(&[]).unwrap_or_else(|e| panic!("built-in provider definitions: {e}"));

    // Webhooks: the key that verifies the signature decides the tenant.
    let (webhook_params, webhook_security) = webhook_security(&providers);
    let names: Vec<&str> = providers.keys().map(String::as_str).collect();
    let provider_param = json!({"name": "provider", "in": "path", "required": true,
        "description": "A provider definition's name: the built-in ones; a deployment's `ingest.providers_dir` adds its own",
        "schema": {"type": "string", "enum": names}});
    let delivered = json!({"type": "object", "required": ["event_id", "status"], "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": ["accepted", "dead_lettered"],
            "description": "dead_lettered: authentic but not mappable; parked for `riverbank dlq redrive`"}}});
    for (path, tenant_in_path) in
        [("/v1/webhooks/{provider}", false), ("/v1/webhooks/{provider}/{tenant_id}", true)]
    {
        let mut params = vec![provider_param.clone()];
        if tenant_in_path {
            params
                .push(json!({"name": "tenant_id", "in": "path", "required": true, "schema": tenant_schema(),
                "description": "Only this tenant's keys verify the delivery"}));
        } else {
            params.push(
                json!({"name": "x-tenant-id", "in": "header", "required": false, "schema": tenant_schema(),
                "description": "Narrows which tenants' keys are tried; only a verifying key decides"}),
            );
        }
        params.extend(webhook_params.iter().cloned());
        params.push(trace_param());
        let suffix = if tenant_in_path { "_for_tenant" } else { "" };
        add(
            "post",
            path,
            json!({
                "operationId": format!("webhook{suffix}"),
                "tags": ["webhooks"],
                "summary": "A provider's webhook delivery",
                "description": "Verified with the provider's declared signature scheme against the tenants' keys, \
                    mapped, deduplicated on the provider's event id and produced. A redelivery is answered \
                    as the first delivery was.",
                "parameters": params,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "description": "The provider's event, as it signed it"}}}},
                "security": webhook_security,
                "responses": responses(json!({"202": {"description": "Accepted (or parked as a dead letter)",
                    "content": {"application/json": {"schema": delivered}}}})),
            }),
        );
    }

    // Commands: the tenant comes from the key.
    let accepted = json!({"type": "object", "required": ["event_id", "event_type", "entity_id", "status"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"},
            "event_type": {"type": "string"},
            "entity_id": {"type": "string", "description": "The transfer, quote, user or case the command is about"},
            "status": {"type": "string", "enum": ["accepted"]}}});
    for (method, path, endpoint, summary) in COMMANDS {
        let mut params: Vec<Value> = path_params(path)
            .into_iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.push(json!({"name": "x-environment", "in": "header", "required": false,
            "description": "Must be the key's environment",
            "schema": {"type": "string", "enum": ["live", "sandbox"], "default": "live"}}));
        params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "The same request under the same key gets the same answer and produces one event \
                (also read as `x-idempotency-key`); printable ASCII (HTTP drops spaces around a header value)",
            "schema": {"type": "string", "minLength": 1,
                "maxLength": crate::commands::IDEMPOTENCY_KEY_BYTES_MAX, "pattern": "^[!-~]([ -~]*[!-~])?$"}}));
        params.push(json!({"name": "x-user-id", "in": "header", "required": false,
            "description": "The person acting, when the tenant's backend names one (maker-checker)",
            "schema": {"type": "string"}}));
        params.push(trace_param());
        let roles: Vec<&str> = endpoint.roles().iter().map(|r| r.as_str()).collect();
        let body = serde_json::to_value(endpoint.body_schema(&mut gen)).unwrap_or_else(|e| panic!("{e}"));
        add(
            method,
            path,
            json!({
                "operationId": endpoint.name(),
                "tags": [path.split('/').nth(2).unwrap_or("commands")],
                "summary": summary,
                "description": format!("Roles: {}.", roles.join(", ")),
                "x-roles": roles,
                "parameters": params,
                "requestBody": {"required": true, "content": {"application/json": {"schema": body}}},
                "security": [{"apiKey": []}],
                "responses": responses(json!({"202": {"description": "Accepted: the event is produced",
                    "content": {"application/json": {"schema": accepted}}}})),
            }),
        );
    }

    add(
        "get",
        "/health",
        json!({
            "operationId": "health", "tags": ["operations"], "summary": "Whether the broker and Postgres answer",
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": health_schema()}}},
                "503": {"description": "A dependency is down", "content": {"application/json": {"schema": health_schema()}}},
                "4XX": error_response("The request is refused; the code says why."),
            },
        }),
    );
    add(
        "get",
        "/openapi.json",
        json!({
            "operationId": "openapi", "tags": ["operations"], "summary": "This document",
            "responses": responses(json!({"200": {"description": "OK",
                "content": {"application/json": {"schema": {"type": "object"}}}}})),
        }),
    );

    let mut schemas: Map<String, Value> = gen
        .definitions()
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_else(|e| panic!("{e}"))))
        .collect();
    schemas.insert("Error".into(), error_schema());
    let mut security_schemes = Map::new();
    security_schemes.insert("apiKey".into(), json!({"type": "http", "scheme": "bearer",
        "description": "A tenant API key (`riverbank keys create`), as `Authorization: Bearer rbk_…`; the tenant is the key's."}));
    for (name, def) in &providers {
        security_schemes.insert(format!("webhook_{name}"), scheme_of(def));
    }
    let paths: Map<String, Value> = paths.into_iter().map(|(k, v)| (k, Value::Object(v))).collect();
    integral(json!({
        "openapi": "3.0.3",
        "info": {"title": "riverbank ingest", "version": env!("CARGO_PKG_VERSION"),
            "description": "The edge: provider webhooks and tenant commands, produced to the broker. Every 4xx \
                and 5xx answers `{\"error\":{\"code\",\"message\"}}`."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": security_schemes},
    }))
}

/// The signature headers of every built-in provider (optional parameters: each provider needs its
/// own), and one security requirement per provider (any one verifies).
fn webhook_security(providers: &BTreeMap<String, ProviderDef>) -> (Vec<Value>, Value) {
    let mut headers = std::collections::BTreeSet::new();
    for def in providers.values() {
        headers.extend(def.signature.required_headers().into_iter().map(str::to_owned));
    }
    let params = headers
        .into_iter()
        .map(|h| {
            json!({"name": h, "in": "header", "required": false, "schema": {"type": "string"},
                "description": "A signature header of some providers' schemes (see the security schemes)"})
        })
        .collect();
    let security = providers.keys().map(|n| json!({format!("webhook_{n}"): []})).collect();
    (params, Value::Array(security))
}

/// A provider's signature scheme as an OpenAPI security scheme: the header carrying the signature,
/// and what else the scheme needs.
fn scheme_of(def: &ProviderDef) -> Value {
    let s = &def.signature;
    let header = match s {
        Scheme::StandardWebhooks { .. } => sw::HEADER_SIGNATURE,
        Scheme::HmacSha256 { header, .. } | Scheme::PayloadDigest { header, .. } => header.as_str(),
        Scheme::Ed25519 { signature_header, .. } => signature_header.as_str(),
    };
    json!({"type": "apiKey", "in": "header", "name": header,
        "description": format!("{}: `{}` over the raw body; headers {}",
            def.name, s.name(), s.required_headers().join(", "))})
}

fn tenant_schema() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})
}

fn trace_param() -> Value {
    json!({"name": "x-trace-id", "in": "header", "required": false,
        "description": "Carried into the event (at most 128 printable ASCII bytes; otherwise ignored)",
        "schema": {"type": "string"}})
}

fn health_schema() -> Value {
    json!({"type": "object", "required": ["status", "broker", "postgres"], "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "broker": {"type": "object"}, "postgres": {"type": "object"}}})
}

/// `ok` with the error answers every operation has.
fn responses(ok: Value) -> Value {
    let mut r = ok;
    r["4XX"] =
        error_response("The request is refused; the code (and for a field, `field` and `rule`) says why.");
    r["5XX"] = error_response("Not accepted (nothing was produced); retry after `Retry-After`.");
    r
}

fn error_response(description: &str) -> Value {
    json!({"description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// `riverbank_runtime::http::HttpError` as JSON.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "The one error shape of every 4xx and 5xx.",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable, e.g. invalid_request"},
                "message": {"type": "string", "description": "What to fix (4xx); a trace id (5xx)"},
                "field": {"type": "string", "description": "Validation errors: the field at fault"},
                "rule": {"type": "string", "description": "Validation errors: the rule it breaks"}
            }
        }}
    })
}

/// `{name}` segments of a route template.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

/// Whole numbers schemars writes as floats (`"minimum": 0.0`) as integers.
fn integral(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(integral).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, integral(v))).collect()),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_document_equals_generated() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
        let how = "RIVERBANK_BLESS=1 cargo test -p riverbank-ingest openapi";
        riverbank_runtime::http::check_checked_in(&path, &render(), how).unwrap_or_else(|e| panic!("{e}"));
    }

    /// What `GET /openapi.json` answers is the checked-in file.
    #[tokio::test]
    async fn served_document_equals_checked_in() {
        let resp = serve().await;
        assert_eq!(resp.status(), axum::http::StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap_or_else(|e| panic!("{e}"));
        let served: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let checked_in: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(served == checked_in, "GET /openapi.json differs from {}", path.display());
    }

    /// Every route registered in the router's source is in the document, and the document has no
    /// other: a new route without a spec entry fails here.
    #[test]
    fn every_route_is_documented() {
        let routes = routes(include_str!("server.rs"));
        assert!(routes.len() > 15, "routes read from server.rs: {routes:?}");
        let doc = document();
        let mut documented = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for (method, _) in ops.as_object().into_iter().flatten() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let missing: Vec<_> = routes.difference(&documented).collect();
        assert!(missing.is_empty(), "routes of the router missing from the OpenAPI document: {missing:?}");
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(extra.is_empty(), "operations of the document the router does not serve: {extra:?}");
    }

    /// Every command endpoint has its route, once, and a body schema.
    #[test]
    fn every_command_endpoint_is_documented_once() {
        for e in Endpoint::ALL {
            let n = COMMANDS.iter().filter(|(_, _, c, _)| *c == e).count();
            assert_eq!(n, 1, "{}", e.name());
        }
        let doc = document();
        for (method, path, e, _) in COMMANDS {
            let op = &doc["paths"][path][method];
            assert_eq!(op["operationId"], e.name(), "{method} {path}");
            assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object());
        }
    }

    /// (method, path) of every `.route(` call in a router's source.
    fn routes(src: &str) -> std::collections::BTreeSet<(String, String)> {
        riverbank_runtime::http::routes_in_source(src).unwrap_or_else(|e| panic!("{e}")).into_iter().collect()
    }
}
