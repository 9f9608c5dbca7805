//! Cross-tenant probes on every endpoint of the api and of ingest (issue 14, "Contract and safety"):
//! tenant A has real data (a verified user with personal data, deposits, one held for review, a fee, an
//! invoice, an FX quote and conversion, audit records, a consent), tenant B a little of its own. With
//! `api.require_api_key = true`, every route read from the routers' source (a route without a probe
//! fails the test) is called with each of B's keys (every role, both environments) and without a key,
//! naming A's tenant and A's ids in many parameter combinations. Never a 2xx body holding anything of
//! A's that the request did not name itself; never a 5xx; every 4xx in the one error shape. Commands
//! at ingest with B's keys act on B only: A's reads are the same after them.
//! The live stream (`GET /v1/live`) is probed like every read: a stream that opens is read for
//! `STREAM_READ` and what it sent is checked the same way; the dashboard's page and files are probed
//! too, and `tenant_id=platform` (the platform view) is one of the combinations.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use riverbank::money_loop::Flow;
use riverbank_ingest::core::schemes::sign;
use riverbank_schemas::Environment;

use crate::harness::Pipeline;

const A: &str = "aardvark-co";
const B: &str = "bison-co";
const A_SEED: u8 = 71;
const B_SEED: u8 = 72;
const IDCHECK_A: &str = "e2e-xt-idcheck-a-0123456789abcdef";
const RUN: &str = "aardv7";
const WAIT: Duration = Duration::from_secs(240);

const COMPONENTS: [&[&str]; 10] = [
    &["ingest"],
    &["process", "audit"],
    &["process", "transfers"],
    &["process", "risk"],
    &["process", "kyc"],
    &["process", "fx"],
    &["process", "billing"],
    &["sink", "postgres"],
    &["sink", "clickhouse"],
    &["api"],
];

/// B's identities: (label, token); `None` is no key at all.
const B_ROLES: [&str; 6] =
    ["viewer", "operator", "admin", "auditor", "compliance_officer", "rates_publisher"];

/// A route of a router: (method, path template), parsed from its source.
fn routes(file: &str) -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!src.contains(".nest(") && !src.contains(".merge("), "{file}: routes outside `.route(` lines");
    let out: Vec<(String, String)> = riverbank_runtime::http::routes_in_source(&src)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .into_iter()
        .map(|(m, template)| (m.to_uppercase(), template))
        .collect();
    assert!(!out.is_empty(), "{file}: no routes found");
    out
}

/// What A owns that nobody else may see.
struct Secrets {
    /// Strings that are A's wherever they appear.
    text: BTreeSet<String>,
    /// Amounts (minor units, decimal text): A's when they stand alone (not inside a longer number or token).
    numbers: BTreeSet<String>,
}

impl Secrets {
    /// A's strings in `body` that `request` did not name itself.
    fn leaked_text(&self, request: &str, body: &str) -> Vec<String> {
        self.text
            .iter()
            .filter(|s| !request.contains(s.as_str()) && body.contains(s.as_str()))
            .cloned()
            .collect()
    }

    /// The secrets in `body` that `request` did not name itself.
    fn leaked(&self, request: &str, body: &str) -> Vec<String> {
        let mut out = self.leaked_text(request, body);
        for n in &self.numbers {
            if request.contains(n.as_str()) {
                continue;
            }
            let standalone = body.match_indices(n.as_str()).any(|(i, _)| {
                let before = body[..i].chars().next_back();
                let after = body[i + n.len()..].chars().next();
                // Inside a longer number or a token (the hex of a random event id: "280da476-…") it is
                // not an amount.
                let digitish = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.');
                // A duration in ms (the live stream's window lengths) is not an amount.
                let duration = body[..i].ends_with("_ms\":");
                !digitish(before) && !digitish(after) && !duration
            });
            if standalone {
                out.push(n.clone());
            }
        }
        out
    }
}

/// A's ids the probes name, by path parameter.
#[derive(Default)]
struct Ids {
    user: String,
    account: String,
    transfers: Vec<String>,
    review: String,
    quote: String,
    conversion: String,
    invoice: String,
    audit: Vec<String>,
    case: String,
    references: Vec<String>,
    idempotency_key: String,
}

#[derive(Default)]
struct Tally {
    routes: BTreeSet<(String, String)>,
    sent: usize,
    by_status: BTreeMap<u16, usize>,
    violations: Vec<String>,
    /// Answers not in the error shape: (method, route, status) -> (count, an example).
    misshapen: BTreeMap<(String, String, u16), (usize, String)>,
}

impl Tally {
    fn violation(&mut self, v: String) {
        self.violations.push(v);
    }
}

struct Probe<'a> {
    method: &'a str,
    route: &'a str,
    url: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    who: &'a str,
}

/// Header or query pairs of a variant.
type Pairs<'a> = Vec<(&'a str, &'a str)>;

/// Requests in flight at once.
const CONCURRENCY: usize = 12;

/// How long an opened live stream is read before its text is checked.
const STREAM_READ: Duration = Duration::from_millis(1500);

async fn exec(p: &Pipeline, probe: &Probe<'_>) -> anyhow::Result<(u16, String)> {
    let method = reqwest::Method::from_bytes(probe.method.as_bytes())?;
    let mut req = p.http.request(method, &probe.url).query(&probe.query);
    for (k, v) in &probe.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(b) = &probe.body {
        req = req.header("content-type", "application/json").body(b.clone());
    }
    let mut resp = req.send().await?;
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type.starts_with("text/event-stream") {
        // A live stream never ends: what it sends within STREAM_READ is checked.
        let deadline = tokio::time::Instant::now() + STREAM_READ;
        let mut text = String::new();
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        return Ok((status, text));
    }
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// Send every probe (`CONCURRENCY` at a time) and check each answer; the answers in order.
async fn send_all(
    p: &Pipeline,
    s: &Secrets,
    t: &mut Tally,
    probes: &[Probe<'_>],
) -> anyhow::Result<Vec<(u16, String)>> {
    use futures::StreamExt as _;
    let answers: Vec<anyhow::Result<(u16, String)>> =
        futures::stream::iter(probes.iter().map(|pr| exec(p, pr))).buffered(CONCURRENCY).collect().await;
    let mut out = Vec::with_capacity(probes.len());
    for (probe, answer) in probes.iter().zip(answers) {
        let (status, text) = answer?;
        check(s, t, probe, status, &text);
        out.push((status, text));
    }
    Ok(out)
}

fn check(s: &Secrets, t: &mut Tally, probe: &Probe<'_>, status: u16, text: &str) {
    t.sent += 1;
    *t.by_status.entry(status).or_default() += 1;
    t.routes.insert((probe.method.to_owned(), probe.route.to_owned()));
    let request = format!(
        "{} {} {:?} {:?} {}",
        probe.method,
        probe.url,
        probe.query,
        probe.headers.iter().filter(|(k, _)| k != "authorization").collect::<Vec<_>>(),
        probe.body.as_deref().map(String::from_utf8_lossy).unwrap_or_default()
    );
    let what = format!("[{}] {request} -> {status}", probe.who);
    if status >= 500 {
        t.violation(format!("5xx: {what}: {}", cut(text)));
    }
    if (200..300).contains(&status) {
        // The dashboard's page and files are the same for everyone: only A's text could leak there
        // (their numbers are constants of the code).
        let page = probe.route == "/" || probe.route.starts_with("/dashboard");
        let leaked = if page { s.leaked_text(&request, text) } else { s.leaked(&request, text) };
        if !leaked.is_empty() {
            t.violation(format!("LEAK {leaked:?}: {what}: {}", cut(text)));
        }
        let names_a = probe.query.iter().any(|(k, v)| k == "tenant_id" && v == A);
        if names_a && text.contains(&format!("\"{A}\"")) {
            t.violation(format!("served A's scope: {what}: {}", cut(text)));
        }
    } else if (400..500).contains(&status) {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        let shaped = v["error"]["code"].is_string()
            && v["error"]["message"].is_string()
            && v.as_object().is_some_and(|o| o.len() == 1);
        if !shaped {
            let e = t
                .misshapen
                .entry((probe.method.to_owned(), probe.route.to_owned(), status))
                .or_insert_with(|| (0, format!("{what}: {}", cut(text))));
            e.0 += 1;
        }
        let leaked = s.leaked(&request, text);
        if !leaked.is_empty() {
            t.violation(format!("LEAK in an error {leaked:?}: {what}: {}", cut(text)));
        }
    }
}

fn cut(s: &str) -> String {
    s.chars().take(300).collect()
}

async fn key(p: &Pipeline, tenant: &str, env: &str, role: &str) -> anyhow::Result<String> {
    let out = p.cli(&["keys", "create", "--tenant", tenant, "--env", env, "--role", role], &[]).await?;
    Ok(out.trim().to_owned())
}

/// A's values for a path parameter of an api route (None: the route has no probe for it).
fn api_values(param: &str, ids: &Ids) -> Option<Vec<String>> {
    Some(match param {
        "transfer_id" => ids.transfers.clone(),
        "user_id" => vec![ids.user.clone()],
        "audit_id" => ids.audit.iter().take(2).cloned().collect(),
        "quote_id" => vec![ids.quote.clone()],
        "conversion_id" => vec![ids.conversion.clone()],
        "invoice_id" => vec![ids.invoice.clone()],
        "file" => ["dashboard.js", "dashboard.css", "..%2FCargo.toml", "nothing"].map(String::from).to_vec(),
        _ => return None,
    })
}

/// Every filling of a path template's `{params}` from `values`; None if a parameter has no values.
fn fill(template: &str, values: &dyn Fn(&str) -> Option<Vec<String>>) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        let j = rest[i..].find('}')? + i;
        let choices = values(&rest[i + 1..j])?;
        if choices.is_empty() {
            return None;
        }
        let head = &rest[..i];
        out = out.iter().flat_map(|o| choices.iter().map(move |c| format!("{o}{head}{c}"))).collect();
        rest = &rest[j + 1..];
    }
    Some(out.into_iter().map(|o| format!("{o}{rest}")).collect())
}

/// How many of `api_queries` name no filter.
const BASE_QUERIES: usize = 12;

/// Query parameter combinations for an api read.
fn api_queries(ids: &Ids) -> Vec<Vec<(String, String)>> {
    let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut out: Vec<Vec<(String, String)>> = vec![
        q(&[]),
        q(&[("tenant_id", A)]),
        q(&[("tenant_id", A), ("environment", "live")]),
        q(&[("tenant_id", A), ("environment", "sandbox")]),
        q(&[("tenant_id", B)]),
        q(&[("tenant_id", B), ("environment", "sandbox")]),
        q(&[("tenant_id", B), ("tenant_id", A)]),
        q(&[("tenant_id", A), ("tenant_id", B)]),
        q(&[("tenant_id", "AARDVARK-CO")]),
        q(&[("tenant_id", "")]),
        q(&[("environment", "live")]),
        q(&[("tenant_id", "platform")]),
    ];
    assert_eq!(out.len(), BASE_QUERIES);
    let filters: Vec<(&str, String)> = vec![
        ("limit", "1000".into()),
        ("after", "0".into()),
        ("after", format!("{}/USD", ids.account)),
        ("from", "2000-01-01T00:00:00Z".into()),
        ("to", "2100-01-01T00:00:00Z".into()),
        ("from_seq", "1".into()),
        ("format", "json".into()),
        ("format", "csv".into()),
        ("history", "true".into()),
        ("user_id", ids.user.clone()),
        ("transfer_id", ids.review.clone()),
        ("transfer_id", ids.transfers[0].clone()),
        ("account", ids.account.clone()),
        ("resource_id", ids.user.clone()),
        ("resource_type", "transfer".into()),
        ("actor", "user:treasurer-1".into()),
        ("quote_id", ids.quote.clone()),
        ("conversion_id", ids.conversion.clone()),
        ("period", ids.invoice.trim_start_matches("inv-").into()),
    ];
    for tenant in [A, B] {
        for (k, v) in &filters {
            out.push(vec![("tenant_id".into(), tenant.into()), (k.to_string(), v.clone())]);
        }
        out.push(vec![
            ("tenant_id".into(), tenant.into()),
            ("limit".into(), "1000".into()),
            ("from".into(), "2000-01-01T00:00:00Z".into()),
            ("to".into(), "2100-01-01T00:00:00Z".into()),
        ]);
    }
    out
}

/// The combinations sent to `template` by `who`: /health (slow: it checks every store) gets the
/// tenant-naming ones only; A-scoped filter variants go with B's live admin key only (any other
/// identity is refused on the tenant before a filter is read, which the plain tenant_id=A variants show).
fn queries_for<'q>(
    template: &str,
    who: &str,
    queries: &'q [Vec<(String, String)>],
) -> Vec<&'q Vec<(String, String)>> {
    queries
        .iter()
        .enumerate()
        .filter(|(i, q)| {
            if template == "/health" {
                return *i < 3;
            }
            let a_filter =
                q.len() > 1 && q[0] == ("tenant_id".to_owned(), A.to_owned()) && *i >= BASE_QUERIES;
            !a_filter || who == "B admin live"
        })
        .map(|(_, q)| q)
        .collect()
}

/// Bodies B sends to an ingest route (A's ids in them); None: no probe for the route.
fn ingest_bodies(
    method: &str,
    template: &str,
    ids: &Ids,
) -> Option<Vec<(String, Option<serde_json::Value>)>> {
    use serde_json::json;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let each = |paths: Vec<String>, body: serde_json::Value| -> Vec<(String, Option<serde_json::Value>)> {
        paths.into_iter().map(|p| (p, Some(body.clone()))).collect()
    };
    let transfers: Vec<String> = std::iter::once(ids.review.clone()).chain(ids.transfers.clone()).collect();
    let reason = json!({"reason": "cross-tenant probe"});
    Some(match (method, template) {
        ("GET", "/health") => vec![("/health".into(), None)],
        ("GET", "/openapi.json") => vec![("/openapi.json".into(), None)],
        ("POST", "/v1/transfers") => vec![(
            template.into(),
            Some(json!({"transfer_id": ids.review, "kind": "deposit", "amount": "37.00", "currency": "USD",
                "destination_account": ids.account, "user_id": ids.user, "provider": "acmepay",
                "provider_reference": ids.references[0]})),
        )],
        (
            "POST",
            "/v1/transfers/{id}/approve" | "/v1/transfers/{id}/reject" | "/v1/transfers/{id}/cancel",
        ) => each(transfers.iter().map(|t| template.replace("{id}", t)).collect(), reason),
        ("POST", "/v1/fx/quotes") => vec![(
            template.into(),
            Some(
                json!({"quote_id": ids.quote, "sell_currency": "USD", "buy_currency": "EUR", "sell_amount": "37.00"}),
            ),
        )],
        ("POST", "/v1/fx/conversions") => vec![(
            template.into(),
            Some(
                json!({"conversion_id": ids.conversion, "quote_id": ids.quote, "source_account": ids.account}),
            ),
        )],
        ("POST", "/v1/fx/rates") => vec![(template.into(), Some(riverbank::money_loop::demo_rates()))],
        ("POST", "/v1/fx/conversions/{id}/decision") => each(
            vec![template.replace("{id}", &ids.conversion)],
            json!({"decision": "approved", "reason": "cross-tenant probe"}),
        ),
        ("PUT", "/v1/billing/plan") => vec![(
            template.into(),
            Some(json!({"plan": "probe", "fee": "3.00", "currency": "USD", "effective_from": now})),
        )],
        ("PUT", "/v1/fees/{id}") => each(
            vec![template.replace("{id}", "deposit")],
            json!({"currency": "USD", "fixed": "0.10", "bps": 10, "min": "0.10", "max": "1.00", "effective_from": now}),
        ),
        (
            "POST",
            "/v1/kyc/users/{id}/freeze" | "/v1/kyc/users/{id}/unfreeze" | "/v1/kyc/users/{id}/close",
        ) => each(vec![template.replace("{id}", &ids.user)], reason),
        ("POST", "/v1/kyc/cases/{id}/decision") => each(
            vec![template.replace("{id}", &ids.case)],
            json!({"decision": "rejected", "tier": 0, "reason": "cross-tenant probe"}),
        ),
        ("POST", "/v1/risk/reviews/{id}/decision") => each(
            transfers.iter().map(|t| template.replace("{id}", t)).collect(),
            json!({"decision": "rejected", "reason": "cross-tenant probe"}),
        ),
        ("POST", "/v1/users/{id}/consents") => each(
            vec![template.replace("{id}", &ids.user)],
            json!({"purpose": "marketing", "granted": false, "ip": "198.51.100.9", "user_agent": "probe"}),
        ),
        ("POST", "/v1/webhooks/{provider}" | "/v1/webhooks/{provider}/{tenant_id}") => {
            // Webhooks are signed by providers, not keyed: handled by `webhook_probes`.
            vec![]
        }
        _ => return None,
    })
}

/// A's reads that B's commands must leave as they were.
async fn snapshot(
    p: &Pipeline,
    api: &str,
    token: &str,
    ids: &Ids,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut paths = vec![
        format!("/v1/users/{}/kyc", ids.user),
        format!("/v1/users/{}/consents", ids.user),
        format!("/v1/fx/conversions/{}", ids.conversion),
        format!("/v1/invoices/{}", ids.invoice),
        "/v1/balances".to_owned(),
        "/v1/fees".to_owned(),
        "/v1/risk/reviews".to_owned(),
    ];
    paths.extend(ids.transfers.iter().chain([&ids.review]).map(|t| format!("/v1/transfers/{t}")));
    let mut out = BTreeMap::new();
    for path in paths {
        let resp = p
            .http
            .get(format!("{api}{path}"))
            .query(&[("tenant_id", A), ("environment", "live")])
            .bearer_auth(token)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "A's own read {path}: {status} {text}");
        out.insert(path, text);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_keys_see_and_change_nothing_of_a_tenants_on_any_endpoint() -> anyhow::Result<()> {
    let api_routes = routes("api/src/server.rs");
    let ingest_routes = routes("ingest/src/server.rs");
    let extra = format!(
        "[kafka]\nadmin_timeout_ms = 60000\nmetadata_timeout_ms = 30000\n[fx]\notc_thresholds_default = [\"500000.00 USD\"]\n\
         [[ingest.webhooks]]\nprovider = \"idcheck\"\ntenant_id = \"{A}\"\nenvironment = \"live\"\nsecrets = [\"{IDCHECK_A}\"]\n{}",
        crate::audit::AUDIT_EXTRA
    );
    let mut p =
        Pipeline::start_with("cross_tenant", &[(A, A_SEED), (B, B_SEED)], &COMPONENTS, &extra).await?;
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;

    // A: a verified user with personal data, a completed deposit with its fee, a quote and a conversion,
    // the month's invoice; a deposit held for review; a consent; the audit trail of all of it.
    let (a_admin, a_officer) =
        (key(&p, A, "live", "admin").await?, key(&p, A, "live", "compliance_officer").await?);
    let http = p.http.clone();
    let fa = Flow {
        cfg: &cfg,
        client: &http,
        ingest_url: p.ingest_url.clone(),
        api_url: p.api_url.clone(),
        tenant: A.to_owned(),
        env: Environment::Live,
        kyc: riverbank::money_loop::sender_with("idcheck", A, Environment::Live, IDCHECK_A)?,
        payments: riverbank::money_loop::sender_with(
            "acmepay",
            A,
            Environment::Live,
            &crate::harness::secret_of(A_SEED),
        )?,
        admin_token: a_admin.clone(),
        officer_token: a_officer,
        run: RUN.to_owned(),
        wait: WAIT,
    };
    let shown = riverbank::money_loop::fx_and_billing(&fa).await?;
    let user = format!("usr_{RUN}_fx");
    let review = format!("dep-review-{RUN}");
    let review_ref = fa.deposit(&review, &user, &shown.account, "1500.00").await?;
    fa.until("A's deposit in the review queue", &format!("{}/v1/risk/reviews", p.api_url), |v| {
        v["reviews"].as_array().is_some_and(|r| r.iter().any(|x| x["transfer_id"] == review.as_str()))
    })
    .await?;
    let idempotency_key = format!("idem-{RUN}-consent");
    let consent = p
        .http
        .post(format!("{}/v1/users/{user}/consents", p.ingest_url))
        .bearer_auth(&a_admin)
        .header("x-environment", "live")
        .header("idempotency-key", &idempotency_key)
        .json(&serde_json::json!({"purpose": "marketing", "granted": true, "ip": "198.51.100.77", "user_agent": "App/2.1"}))
        .send()
        .await?;
    anyhow::ensure!(consent.status() == 202, "A's consent: {}", consent.status());
    let consent_answer = consent.text().await?;
    fa.until("A's consent read back", &format!("{}/v1/users/{user}/consents", p.api_url), |v| {
        v["history"].as_array().is_some_and(|h| h.len() == 1)
    })
    .await?;
    let trail = fa
        .until("A's audit records", &format!("{}/v1/audit?limit=1000", p.api_url), |v| {
            v["records"].as_array().is_some_and(|r| r.len() >= 10)
        })
        .await?;
    let audit: Vec<String> = trail["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["audit_id"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(audit.len() >= 10, "A's audit ids: {trail}");
    let ids = Ids {
        user: user.clone(),
        account: shown.account.clone(),
        transfers: vec![shown.deposit.clone()],
        review: review.clone(),
        quote: shown.quote.clone(),
        conversion: shown.conversion.clone(),
        invoice: shown.invoice.clone(),
        audit,
        case: format!("case_{RUN}_fx"),
        references: vec![review_ref.clone(), format!("dep_{}", shown.deposit)],
        idempotency_key: idempotency_key.clone(),
    };

    // B: a little of its own (a deposit for its own user, a consent).
    let b_admin = key(&p, B, "live", "admin").await?;
    let fb = Flow {
        tenant: B.to_owned(),
        kyc: riverbank::money_loop::sender_with("idcheck", B, Environment::Live, IDCHECK_A)?,
        payments: riverbank::money_loop::sender_with(
            "acmepay",
            B,
            Environment::Live,
            &crate::harness::secret_of(B_SEED),
        )?,
        admin_token: b_admin.clone(),
        officer_token: b_admin.clone(),
        run: "bisn3".to_owned(),
        ..fa
    };
    fb.deposit("dep-bisn3", "usr_bisn3", "acct_bisn3", "37.00").await?;
    fb.until("B's deposit", &format!("{}/v1/transfers/dep-bisn3", p.api_url), |v| v["status"].is_string())
        .await?;
    fb.command(
        &b_admin,
        "/v1/users/usr_bisn3/consents",
        None,
        serde_json::json!({"purpose": "marketing", "granted": true}),
    )
    .await?;

    // A's unmistakable strings.
    let mut text: BTreeSet<String> = [
        A,
        &ids.user,
        &ids.account,
        &ids.review,
        &ids.quote,
        &ids.conversion,
        &ids.case,
        &shown.deposit,
        &review_ref,
        &idempotency_key,
        "treasurer-1",
        // The idcheck fixture's personal data.
        "asha.demo@example.com",
        "DEMO00001",
        "000-00-0000",
        "+1 555 0100",
        "1 Demo Street",
        "1990-01-01",
        "198.51.100.0/24",
        "App/2.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    text.extend(ids.audit.iter().cloned());
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&consent_answer) {
        if let Some(e) = v["event_id"].as_str() {
            text.insert(e.to_owned());
        }
    }
    let secrets = Secrets {
        text,
        numbers: ["150000", "1500.00", "25000", "250.00", "10000", "100.00", "280", "2.80"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };

    // From here on keys are enforced: the API restarts with api.require_api_key = true.
    p.kill(&["api"]).await?;
    let api_addr = format!("127.0.0.1:{}", crate::harness::free_port());
    p.spawn_env(
        "api-keyed",
        &["api"],
        &[
            ("RIVERBANK__API__REQUIRE_API_KEY", "true".to_owned()),
            ("RIVERBANK__API__LISTEN_ADDR", api_addr.clone()),
        ],
    )?;
    let api = format!("http://{api_addr}");
    p.wait_healthy(&api).await?;
    let keyless = p.http.get(format!("{api}/v1/balances")).query(&[("tenant_id", A)]).send().await?.status();
    anyhow::ensure!(keyless == 401, "a keyless read with require_api_key = true: {keyless}");
    let before = snapshot(&p, &api, &a_admin, &ids).await?;

    // B's identities: every role in live, an admin and a viewer in sandbox, and no key.
    let mut who: Vec<(String, Option<String>)> = vec![("no key".to_owned(), None)];
    for role in B_ROLES {
        who.push((format!("B {role} live"), Some(key(&p, B, "live", role).await?)));
    }
    for role in ["admin", "viewer"] {
        who.push((format!("B {role} sandbox"), Some(key(&p, B, "sandbox", role).await?)));
    }

    let mut t = Tally::default();
    let mut unprobed = Vec::new();
    let started = Instant::now();

    // The api: every route, every identity, every combination.
    let queries = api_queries(&ids);
    let mut probes = Vec::new();
    for (method, template) in &api_routes {
        let Some(paths) = fill(template, &|param: &str| api_values(param, &ids)) else {
            unprobed.push(format!("api {method} {template}"));
            continue;
        };
        for path in &paths {
            for (label, token) in &who {
                for q in queries_for(template, label, &queries) {
                    let mut headers = Vec::new();
                    if let Some(tok) = token {
                        headers.push(("authorization".to_owned(), format!("Bearer {tok}")));
                    }
                    let probe = Probe {
                        method,
                        route: template,
                        url: format!("{api}{path}"),
                        query: q.clone(),
                        headers: headers.clone(),
                        body: None,
                        who: label,
                    };
                    probes.push(probe);
                }
                // The tenant named elsewhere than the query.
                let mut headers = headers_of(token);
                headers.push(("x-tenant-id".to_owned(), A.to_owned()));
                let probe = Probe {
                    method,
                    route: template,
                    url: format!("{api}{path}"),
                    query: vec![],
                    headers,
                    body: None,
                    who: label,
                };
                probes.push(probe);
            }
        }
    }
    send_all(&p, &secrets, &mut t, &probes).await?;
    let api_sent = t.sent;
    let mut probes = Vec::new();

    // Ingest: every command with each of B's keys (and none), naming A's ids and A's tenant.
    for (method, template) in &ingest_routes {
        let Some(calls) = ingest_bodies(method, template, &ids) else {
            unprobed.push(format!("ingest {method} {template}"));
            continue;
        };
        for (path, body) in &calls {
            let body = body.as_ref().map(serde_json::to_vec).transpose()?;
            for (label, token) in &who {
                let variants: [(Pairs, Pairs); 5] = [
                    (vec![], vec![]),
                    (vec![("x-environment", "live")], vec![]),
                    (vec![("x-environment", "sandbox")], vec![]),
                    (vec![("x-environment", "live"), ("x-tenant-id", A)], vec![("tenant_id", A)]),
                    (vec![("x-environment", "live"), ("idempotency-key", &ids.idempotency_key)], vec![]),
                ];
                for (h, q) in variants {
                    let mut headers = headers_of(token);
                    headers.extend(h.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                    let probe = Probe {
                        method,
                        route: template,
                        url: format!("{}{path}", p.ingest_url),
                        query: q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        headers,
                        body: body.clone(),
                        who: label,
                    };
                    probes.push(probe);
                }
            }
        }
    }
    send_all(&p, &secrets, &mut t, &probes).await?;
    webhook_probes(&p, &secrets, &mut t, &ids, &who).await?;
    for (method, template) in ingest_routes.iter().chain(&api_routes) {
        if !t.routes.contains(&(method.clone(), template.clone()))
            && !unprobed.iter().any(|u| u.ends_with(&format!("{method} {template}")))
        {
            unprobed.push(format!("{method} {template} (no request sent)"));
        }
    }

    // B's commands are processed (B's own marker is read back), then A's reads are as they were.
    fb.command(
        &b_admin,
        "/v1/users/usr_bisn3_marker/consents",
        None,
        serde_json::json!({"purpose": "marketing", "granted": true}),
    )
    .await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let v: serde_json::Value = p
            .http
            .get(format!("{api}/v1/users/usr_bisn3_marker/consents"))
            .query(&[("tenant_id", B)])
            .bearer_auth(&b_admin)
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        if v["history"].as_array().is_some_and(|h| !h.is_empty()) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "B's marker consent never read back: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = snapshot(&p, &api, &a_admin, &ids).await?;
    for (path, was) in &before {
        if after.get(path) != Some(was) {
            t.violation(format!(
                "A changed by B's commands: {path}\n  before {was}\n  after  {:?}",
                after.get(path)
            ));
        }
    }
    let review_now: serde_json::Value = serde_json::from_str(&after[&format!("/v1/transfers/{review}")])?;
    if review_now["status"] == "APPROVED"
        || review_now["status"] == "REJECTED"
        || review_now["status"] == "CANCELLED"
    {
        t.violation(format!("A's held deposit decided by B: {review_now}"));
    }

    println!(
        "[cross-tenant] routes: api {}, ingest {}; probed {}; requests {} (api {api_sent}, ingest {}) in {:?}; by status {:?}",
        api_routes.len(),
        ingest_routes.len(),
        t.routes.len(),
        t.sent,
        t.sent - api_sent,
        started.elapsed(),
        t.by_status
    );
    for v in &t.violations {
        println!("[cross-tenant] VIOLATION {v}");
    }
    let misshapen: usize = t.misshapen.values().map(|(n, _)| n).sum();
    for ((method, route, status), (n, example)) in &t.misshapen {
        println!(
            "[cross-tenant] NOT IN THE ERROR SHAPE {method} {route} {status}: {n} answers, e.g. {example}"
        );
    }
    assert!(unprobed.is_empty(), "routes without a probe: {unprobed:?}");
    assert!(misshapen == 0, "{misshapen} 4xx answers not in the error shape (printed above)");
    assert!(
        t.violations.is_empty(),
        "{} violations (printed above), first: {}",
        t.violations.len(),
        t.violations[0]
    );
    p.finish().await
}

fn headers_of(token: &Option<String>) -> Vec<(String, String)> {
    token.iter().map(|t| ("authorization".to_owned(), format!("Bearer {t}"))).collect()
}

/// Webhooks: B's key is no signature (401 on A's and B's paths); B's provider secret signs for B only
/// (401 on A's path); a completion of A's references signed for B acts on B (A's transfers unchanged,
/// checked by the snapshot).
async fn webhook_probes(
    p: &Pipeline,
    secrets: &Secrets,
    t: &mut Tally,
    ids: &Ids,
    who: &[(String, Option<String>)],
) -> anyhow::Result<()> {
    let b_signer = crate::harness::sender(B, B_SEED);
    for reference in &ids.references {
        let body = serde_json::to_vec(&serde_json::json!({
            "type": "deposit.completed", "api_version": "2024-06-01",
            "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": {"object": "deposit", "id": reference, "amount": {"value": "1500.00", "currency": "USD"},
                     "destination_account": ids.account}
        }))?;
        let targets = [
            ("/v1/webhooks/{provider}/{tenant_id}", format!("/v1/webhooks/acmepay/{A}")),
            ("/v1/webhooks/{provider}/{tenant_id}", format!("/v1/webhooks/acmepay/{B}")),
            ("/v1/webhooks/{provider}/{tenant_id}", format!("/v1/webhooks/idcheck/{A}")),
            ("/v1/webhooks/{provider}", "/v1/webhooks/acmepay".to_owned()),
        ];
        for (i, (route, path)) in targets.iter().enumerate() {
            // Signed with B's secret.
            let id = format!("wh-xt-{reference}-{i}");
            let mut headers: Vec<(String, String)> =
                sign::headers(&b_signer.scheme, &b_signer.signer, &id, chrono::Utc::now().timestamp(), &body);
            headers.push(("x-environment".to_owned(), "live".to_owned()));
            let probe = Probe {
                method: "POST",
                route,
                url: format!("{}{path}", p.ingest_url),
                query: vec![],
                headers,
                body: Some(body.clone()),
                who: "B's acmepay secret",
            };
            let (status, text) = send_all(p, secrets, t, &[probe]).await?.remove(0);
            if path.ends_with(A) && (200..300).contains(&status) {
                t.violation(format!("B's signature accepted for A: POST {path} -> {status} {text}"));
            }
            // Unsigned, with each of B's keys.
            for (label, token) in who {
                let probe = Probe {
                    method: "POST",
                    route,
                    url: format!("{}{path}", p.ingest_url),
                    query: vec![("tenant_id".to_owned(), A.to_owned())],
                    headers: headers_of(token),
                    body: Some(body.clone()),
                    who: label,
                };
                let (status, text) = send_all(p, secrets, t, &[probe]).await?.remove(0);
                if (200..300).contains(&status) {
                    t.violation(format!(
                        "an unsigned webhook accepted: POST {path} [{label}] -> {status} {text}"
                    ));
                }
            }
        }
    }
    Ok(())
}
