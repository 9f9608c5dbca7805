//! The api's OpenAPI 3.0 document, built from the code: every route of [`super::router`] with its
//! path and query parameters (from the handlers' query types, which derive `JsonSchema`), its answer
//! (the handlers' answer types) and the one error shape (`riverbank_runtime::http::HttpError`).
//! Served at `GET /openapi.json` (no key) and checked in as `api/openapi.json`: a test keeps the file
//! equal to what the code builds (regenerate with `RIVERBANK_BLESS=1 cargo test -p riverbank-api
//! openapi`), and another that every route of the router's source is in the document, and no other.
use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use super::{analytics, audit, fx_billing, personal, risk};

/// The checked-in copy, relative to the crate.
pub const CHECKED_IN: &str = "openapi.json";

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

/// Every operation of the api, as OpenAPI 3.0.
pub fn document() -> Value {
    let mut d = Doc::new();
    let read = "Authorization: Bearer <api key> of `tenant_id`, for `environment`, of a role that reads \
                (any but rates_publisher); without a key only where `api.require_api_key` is off.";
    let analytics = "Authorization: Bearer <api key> of `tenant_id` or of the platform tenant (`platform`: \
                     any tenant's analytics), for `environment`, of a role that reads (any but rates_publisher); \
                     without a key only where `api.require_api_key` is off.";

    // Audit trail.
    d.op(
        "get",
        "/v1/audit",
        "audit_search",
        "audit",
        "Search one (tenant, environment) audit log, in log order",
    )
    .query::<audit::SearchQuery>()
    .ok::<audit::SearchPage>()
    .key(read);
    d.op(
        "get",
        "/v1/audit/export",
        "audit_export",
        "audit",
        "Export the audit log with the checkpoints covering it",
    )
    .query::<audit::ExportQuery>()
    .ok_content(json!({
        "application/x-ndjson": {"schema": {"type": "string", "description": "JSON lines of ExportRow"}},
        "text/csv; charset=utf-8": {"schema": {"type": "string"}},
    }))
    .key("an admin, auditor or compliance_officer key of `tenant_id`; the export is audited first.");
    let public_key = d_ref::<audit::PublicKey>(&mut d.gen);
    d.op("get", "/v1/audit/keys", "audit_keys", "audit", "The public keys audit checkpoints are signed with")
        .ok_schema(object(&[("keys", array(public_key))], &["keys"]));
    d.op("get", "/v1/audit/{audit_id}/proof", "audit_proof", "audit", "An audit record's inclusion proof")
        .query::<audit::ProofQuery>()
        .ok::<audit::Proof>()
        .key("an admin, auditor or compliance_officer key of `tenant_id`.");
    d.op(
        "get",
        "/v1/users/{user_id}/consents",
        "user_consents",
        "audit",
        "A user's consents, now and over time",
    )
    .query::<audit::ConsentQuery>()
    .ok::<audit::Consents>()
    .key(read);

    // Volumes and transfers.
    d.op("get", "/v1/analytics/audit-volume", "audit_volume", "analytics", "Audit events per hour")
        .query::<super::VolumeQuery>()
        .ok::<super::Volume>()
        .key(analytics);
    d.op(
        "get",
        "/v1/analytics/transfer-volume",
        "transfer_volume",
        "analytics",
        "Status changes per hour, currency and status",
    )
    .query::<super::VolumeQuery>()
    .ok::<super::TransferVolume>()
    .key(analytics);
    d.op(
        "get",
        "/v1/transfers/{transfer_id}",
        "transfer",
        "transfers",
        "One transfer and its status history",
    )
    .query::<super::ScopeQuery>()
    .ok::<super::TransferWithHistory>()
    .key(read);
    let balance = d_ref::<super::BalanceView>(&mut d.gen);
    d.op("get", "/v1/balances", "balances", "transfers", "A tenant's account balances, a page at a time")
        .query::<super::BalancesQuery>()
        .ok_schema(page("balances", balance))
        .key(read);

    // Risk and KYC.
    d.op("get", "/v1/risk/reviews", "risk_reviews", "risk", "The open manual review queue")
        .query::<super::TenantQuery>()
        .ok::<risk::ReviewQueue>()
        .key(read);
    d.op("get", "/v1/risk/decisions", "risk_decisions", "risk", "A transfer's risk decisions")
        .query::<risk::DecisionsQuery>()
        .ok::<risk::TransferDecisions>()
        .key(read);
    d.op(
        "get",
        "/v1/risk/shadow/diff",
        "risk_shadow_diff",
        "risk",
        "Where the shadow rule set decided differently",
    )
    .query::<risk::ShadowDiffQuery>()
    .ok::<risk::ShadowDiff>()
    .key(read);
    d.op("get", "/v1/users/{user_id}/kyc", "user_kyc", "kyc", "A user's KYC state, cases and history")
        .query::<super::ScopeQuery>()
        .ok::<super::UserKyc>()
        .key(read);
    d.op(
        "get",
        "/v1/users/{user_id}/personal-data",
        "user_personal_data",
        "personal",
        "A user's personal data, clear or masked by role",
    )
    .query::<personal::PersonalQuery>()
    .ok::<personal::PersonalData>()
    .key(read);

    // FX and billing.
    d.op("get", "/v1/fx/quotes/{quote_id}", "fx_quote", "fx", "One FX quote")
        .query::<fx_billing::ScopeQuery>()
        .ok::<fx_billing::QuoteView>()
        .key(read);
    d.op("get", "/v1/fx/conversions/{conversion_id}", "fx_conversion", "fx", "One FX conversion")
        .query::<fx_billing::ScopeQuery>()
        .ok::<fx_billing::ConversionView>()
        .key(read);
    let rate = d_ref::<fx_billing::RateView>(&mut d.gen);
    d.op("get", "/v1/fx/rates", "fx_rates", "fx", "The latest rate per pair, a page at a time")
        .query::<fx_billing::PageQuery>()
        .ok_schema(page("rates", rate))
        .key(read);
    let invoice = d_ref::<fx_billing::InvoiceSummary>(&mut d.gen);
    d.op("get", "/v1/invoices", "invoices", "billing", "Invoices, a page at a time")
        .query::<fx_billing::InvoicesQuery>()
        .ok_schema(page("invoices", invoice))
        .key(read);
    d.op("get", "/v1/invoices/{invoice_id}", "invoice", "billing", "One invoice with its lines")
        .query::<fx_billing::ScopeQuery>()
        .ok::<fx_billing::InvoiceView>()
        .key(read);
    let fee = d_ref::<fx_billing::FeeView>(&mut d.gen);
    d.op("get", "/v1/fees", "fees", "billing", "Fees charged, a page at a time")
        .query::<fx_billing::FeesQuery>()
        .ok_schema(page("fees", fee))
        .key(read);
    d.op("get", "/v1/analytics/fee-revenue", "fee_revenue", "analytics", "Fee revenue per day and currency")
        .query::<fx_billing::RangeQuery>()
        .ok::<fx_billing::FeeRevenue>()
        .key(analytics);
    d.op("get", "/v1/analytics/fx-volume", "fx_volume", "analytics", "FX volume per day and pair")
        .query::<fx_billing::RangeQuery>()
        .ok::<fx_billing::FxVolume>()
        .key(analytics);

    // Analytics over ClickHouse.
    d.op(
        "get",
        "/v1/analytics/transfers",
        "analytics_transfers",
        "analytics",
        "Transfer volume and counts by currency, kind, status and bucket",
    )
    .query::<analytics::AnalyticsQuery>()
    .ok::<analytics::Transfers>()
    .key(analytics);
    d.op(
        "get",
        "/v1/analytics/risk-outcomes",
        "analytics_risk_outcomes",
        "analytics",
        "Risk outcomes and review rates",
    )
    .query::<analytics::AnalyticsQuery>()
    .ok::<analytics::RiskOutcomes>()
    .key(analytics);
    d.op(
        "get",
        "/v1/analytics/kyc-funnel",
        "analytics_kyc_funnel",
        "analytics",
        "KYC funnel and time to decision",
    )
    .query::<analytics::AnalyticsQuery>()
    .ok::<analytics::KycFunnel>()
    .key(analytics);
    d.op(
        "get",
        "/v1/analytics/transfer-latency",
        "analytics_transfer_latency",
        "analytics",
        "Accept-to-final latency percentiles",
    )
    .query::<analytics::AnalyticsQuery>()
    .ok::<analytics::TransferLatency>()
    .key(analytics);
    d.op("get", "/v1/analytics/rejections", "analytics_rejections", "analytics", "Dead letters by reason")
        .query::<analytics::AnalyticsQuery>()
        .ok::<analytics::Rejections>()
        .key(analytics);

    // Live monitoring (the stream never ends: described, not fuzzed).
    d.op("get", "/v1/live", "live", "live", "One multiplexed Server-Sent Events stream of live windows and gauges")
        .param(json!({"name": "tenant_id", "in": "query", "required": true,
            "schema": {"type": "string", "pattern": TENANT_ID_PATTERN},
            "description": "The tenant read, or `platform` (with a platform key) for every tenant"}))
        .param(json!({"name": "environment", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["live", "sandbox"], "default": "live"}}))
        .param(json!({"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"},
            "description": "`<epoch>-<seq>` of the last event seen: resume without gaps"}))
        .ok_content(json!({"text/event-stream": {"schema": {"type": "string",
            "description": "SSE frames: `id: <epoch>-<seq>`, `event: hello|snapshot|window|gauge|dead_letter|watermark`, `data: <one JSON object>`"}}}))
        .key(read);
    // The dashboard page (static, no key: the page asks for one and reads /v1/live with it).
    d.op("get", "/", "index", "dashboard", "To the dashboard").response(
        "303",
        json!({"description": "See Other: /dashboard",
            "headers": {"Location": {"schema": {"type": "string", "enum": ["/dashboard"]}}}}),
    );
    d.op("get", "/dashboard", "dashboard", "dashboard", "The live monitoring dashboard")
        .ok_content(json!({"text/html; charset=utf-8": {"schema": {"type": "string"}}}));
    d.op(
        "get",
        "/dashboard/{file}",
        "dashboard_asset",
        "dashboard",
        "The dashboard's script and style sheet",
    )
    .enum_path("file", &["dashboard.js", "dashboard.css"])
    .ok_content(json!({
        "text/javascript; charset=utf-8": {"schema": {"type": "string"}},
        "text/css; charset=utf-8": {"schema": {"type": "string"}},
    }));

    // Operations.
    d.op("get", "/health", "health", "operations", "Whether the broker, Postgres and ClickHouse answer")
        .ok_schema(json!({"type": "object", "required": ["status", "dependencies"], "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "dependencies": {"type": "object", "additionalProperties": {"type": "object"}}}}))
        .unavailable();
    d.op("get", "/openapi.json", "openapi", "operations", "This document")
        .ok_schema(json!({"type": "object"}));

    d.finish(
        "riverbank api",
        "The read side: tenant-scoped reads, analytics over ClickHouse and the live stream. Every 4xx and \
         5xx answers `{\"error\":{\"code\",\"message\"}}`.",
    )
}

fn d_ref<T: JsonSchema>(gen: &mut SchemaGenerator) -> Value {
    serde_json::to_value(gen.subschema_for::<T>()).unwrap_or_else(|e| panic!("{e}"))
}

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

fn object(props: &[(&str, Value)], required: &[&str]) -> Value {
    let properties: Map<String, Value> = props.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    json!({"type": "object", "required": required, "properties": properties})
}

/// A keyset page of `items`: the scope, the rows and the cursor of the next page.
fn page(name: &str, item: Value) -> Value {
    object(
        &[
            ("tenant_id", json!({"type": "string"})),
            ("environment", json!({"type": "string", "enum": ["live", "sandbox"]})),
            (name, array(item)),
            (
                "next_cursor",
                json!({"type": "string", "nullable": true,
                    "description": "Pass as `after` for the next page; null on the last page."}),
            ),
        ],
        &["tenant_id", "environment", name, "next_cursor"],
    )
}

/// The document under construction: answer types go to `components.schemas`, query types are
/// inlined into parameters.
struct Doc {
    gen: SchemaGenerator,
    inline: SchemaGenerator,
    paths: BTreeMap<String, Map<String, Value>>,
}

struct Op<'d> {
    doc: &'d mut Doc,
    method: String,
    path: String,
    op: Map<String, Value>,
    responses: Map<String, Value>,
}

impl Doc {
    fn new() -> Doc {
        let gen = SchemaSettings::openapi3().into_generator();
        let inline = SchemaSettings::openapi3()
            .with(|s| {
                s.inline_subschemas = true;
                s.option_nullable = false;
            })
            .into_generator();
        Doc { gen, inline, paths: BTreeMap::new() }
    }

    fn op<'d>(&'d mut self, method: &str, path: &str, id: &str, tag: &str, summary: &str) -> Op<'d> {
        let mut op = Map::new();
        op.insert("operationId".into(), json!(id));
        op.insert("summary".into(), json!(summary));
        op.insert("tags".into(), json!([tag]));
        let params: Vec<Value> = path_params(path)
            .into_iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        let mut responses = Map::new();
        responses.insert("4XX".into(), error_response("The request is refused; the code says why."));
        responses.insert("5XX".into(), error_response("A server-side failure; nothing internal is told."));
        let entry = self.paths.entry(path.to_owned()).or_default();
        assert!(!entry.contains_key(method), "{method} {path} twice");
        // The operation is written into `paths` when the builder drops.
        Op { doc: self, method: method.to_owned(), path: path.to_owned(), op, responses }
    }

    fn finish(self, title: &str, description: &str) -> Value {
        let mut schemas: Map<String, Value> = self
            .gen
            .definitions()
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_else(|e| panic!("{e}"))))
            .collect();
        schemas.insert("Error".into(), error_schema());
        let paths: Map<String, Value> = self.paths.into_iter().map(|(k, v)| (k, Value::Object(v))).collect();
        integral(json!({
            "openapi": "3.0.3",
            "info": {"title": title, "version": env!("CARGO_PKG_VERSION"), "description": description},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "apiKey": {"type": "http", "scheme": "bearer",
                        "description": "A tenant API key (`riverbank keys create`), as `Authorization: Bearer rbk_…`."}
                }
            }
        }))
    }
}

impl Op<'_> {
    /// Query parameters: the properties of `T`'s (inlined) schema.
    fn query<T: JsonSchema>(mut self) -> Self {
        let root =
            serde_json::to_value(self.doc.inline.root_schema_for::<T>()).unwrap_or_else(|e| panic!("{e}"));
        let required: Vec<&str> = root["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let props = root["properties"].as_object().cloned().unwrap_or_default();
        for (name, mut schema) in props {
            let description = schema.as_object_mut().and_then(|o| o.remove("description"));
            if let Some(o) = schema.as_object_mut() {
                o.remove("nullable");
                if name == "tenant_id" {
                    // `riverbank_runtime::config::is_tenant_id`.
                    o.insert("pattern".into(), json!(TENANT_ID_PATTERN));
                }
            }
            let mut p = json!({"name": name, "in": "query", "required": required.contains(&name.as_str()),
                "schema": schema});
            if let Some(d) = description {
                p["description"] = d;
            }
            self = self.param(p);
        }
        self
    }

    /// A path parameter that takes only `values`.
    fn enum_path(mut self, name: &str, values: &[&str]) -> Self {
        let params = self.op.get_mut("parameters").and_then(Value::as_array_mut);
        for p in params.into_iter().flatten().filter(|p| p["in"] == "path" && p["name"] == name) {
            p["schema"]["enum"] = json!(values);
        }
        self
    }

    /// An answer other than 200 (a redirect).
    fn response(mut self, status: &str, response: Value) -> Self {
        self.responses.insert(status.into(), response);
        self
    }

    fn param(mut self, p: Value) -> Self {
        let params = self.op.entry("parameters").or_insert_with(|| json!([]));
        if let Some(a) = params.as_array_mut() {
            a.push(p);
        }
        self
    }

    /// 200 with `T` as JSON.
    fn ok<T: JsonSchema>(self) -> Self {
        let schema = d_ref::<T>(&mut self.doc.gen);
        self.ok_schema(schema)
    }

    fn ok_schema(self, schema: Value) -> Self {
        self.ok_content(json!({"application/json": {"schema": schema}}))
    }

    fn ok_content(mut self, content: Value) -> Self {
        self.responses.insert("200".into(), json!({"description": "OK", "content": content}));
        self
    }

    /// 503 in the health answer's shape (not the error shape).
    fn unavailable(mut self) -> Self {
        let ok = self.responses.get("200").cloned().unwrap_or_default();
        let mut r = ok;
        r["description"] = json!("A dependency is down");
        self.responses.insert("503".into(), r);
        self.responses.remove("5XX");
        self
    }

    /// A tenant API key is needed (`who` says which).
    fn key(mut self, who: &str) -> Self {
        self.op.insert("security".into(), json!([{"apiKey": []}]));
        let summary = self.op.get("summary").and_then(Value::as_str).unwrap_or_default().to_owned();
        self.op.insert("description".into(), json!(format!("{summary}. Key: {who}")));
        self
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        let mut op = std::mem::take(&mut self.op);
        op.insert("responses".into(), Value::Object(std::mem::take(&mut self.responses)));
        let entry = self.doc.paths.entry(std::mem::take(&mut self.path)).or_default();
        entry.insert(std::mem::take(&mut self.method), Value::Object(op));
    }
}

/// A tenant id: 1-64 of ASCII letters, digits, '-', '_'.
const TENANT_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

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

/// `{name}` segments of a route template.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
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
                "code": {"type": "string", "description": "Stable, machine-readable, e.g. invalid_query"},
                "message": {"type": "string", "description": "What to fix (4xx); a trace id (5xx)"},
                "field": {"type": "string", "description": "Validation errors: the field at fault"},
                "rule": {"type": "string", "description": "Validation errors: the rule it breaks"}
            }
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_document_equals_generated() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
        let how = "RIVERBANK_BLESS=1 cargo test -p riverbank-api openapi";
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
        let src = include_str!("../server.rs");
        let routes = routes(src);
        assert!(routes.len() > 20, "routes read from server.rs: {routes:?}");
        let doc = document();
        let mut documented = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for method in ops.as_object().into_iter().flatten().map(|(m, _)| m) {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let missing: Vec<_> = routes.difference(&documented).collect();
        assert!(missing.is_empty(), "routes of the router missing from the OpenAPI document: {missing:?}");
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(extra.is_empty(), "operations of the document the router does not serve: {extra:?}");
    }

    #[test]
    fn every_operation_names_its_path_parameters_and_answers() {
        let doc = document();
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in ops.as_object().into_iter().flatten() {
                let names: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert_eq!(names, path_params(path), "{method} {path}");
                let answers = op["responses"].as_object().into_iter().flatten();
                let success = answers.filter(|(k, _)| k.starts_with('2') || k.starts_with('3')).count();
                assert_eq!(success, 1, "{method} {path}: one success answer");
                assert!(op["responses"]["4XX"].is_object(), "{method} {path}: no 4XX");
            }
        }
    }

    /// (method, path) of every `.route(` call in a router's source.
    pub(super) fn routes(src: &str) -> std::collections::BTreeSet<(String, String)> {
        riverbank_runtime::http::routes_in_source(src).unwrap_or_else(|e| panic!("{e}")).into_iter().collect()
    }
}
