//! FX and billing on a fresh pipeline, over the real edges only (signed provider webhooks and the tenant
//! API in, the read API out): rates published, a quote and a conversion whose legs reach the ledger, a
//! quote that expires and the conversion refused against it, an OTC conversion approved by a second
//! person (and not by its requester), fees charged on completed deposits, last month's invoice finalized
//! by its timer, a deposit whose completion (provider event time) falls in that closed month billed as an
//! adjustment on this month's invoice naming it, a subscription plan charged once in each month, and
//! `riverbank reconcile` clean.
//!
//! Time: the billing processor closes a month at its end + `billing.lateness_ms` on the partition's
//! clock; the test sets the lateness so that last month closes about a minute after it starts.
use std::time::Duration;

use riverbank::money_loop::{month_start, Flow};
use riverbank_schemas::billing::{invoice_id, period_of};
use riverbank_schemas::Environment;

use crate::harness::Pipeline;

const TENANT: &str = "fxb";
const IDCHECK_SECRET: &str = "e2e-idcheck-secret-fx-0123456789";
const QUOTE_TTL_MS: u64 = 15_000;
/// Last month closes this long after the test computes the lateness.
const CLOSE_AFTER_MS: i64 = 60_000;

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

async fn key(p: &Pipeline, role: &str) -> anyhow::Result<String> {
    let out = p.cli(&["keys", "create", "--tenant", TENANT, "--env", "live", "--role", role], &[]).await?;
    Ok(out.trim().to_owned())
}

fn minor(v: &serde_json::Value) -> i64 {
    v["amount_minor"].as_i64().unwrap_or(i64::MIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_quotes_conversions_fees_and_invoices_across_a_month_boundary() -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let this_month = month_start(now);
    let last_month_day = this_month - chrono::Duration::days(10);
    let lateness_ms = (now - this_month).num_milliseconds() + CLOSE_AFTER_MS;
    let extra = format!(
        "[fx]\nquote_ttl_ms = {QUOTE_TTL_MS}\notc_thresholds_default = [\"500.00 USD\"]\n[billing]\nlateness_ms = {lateness_ms}\n\
         [[ingest.webhooks]]\nprovider = \"idcheck\"\ntenant_id = \"{TENANT}\"\nenvironment = \"live\"\nsecrets = [\"{IDCHECK_SECRET}\"]\n{}",
        crate::audit::AUDIT_EXTRA
    );
    let p = Pipeline::start_with("fx_billing", &[(TENANT, 43)], &COMPONENTS, &extra).await?;
    let cfg = riverbank_runtime::Config::load(Some(&p.config))?;
    let (admin_token, officer_token) = (key(&p, "admin").await?, key(&p, "compliance_officer").await?);
    let f = Flow {
        cfg: &cfg,
        client: &p.http,
        ingest_url: p.ingest_url.clone(),
        api_url: p.api_url.clone(),
        tenant: TENANT.to_owned(),
        env: Environment::Live,
        kyc: riverbank::money_loop::sender_with("idcheck", TENANT, Environment::Live, IDCHECK_SECRET)?,
        payments: riverbank::money_loop::sender_with(
            "acmepay",
            TENANT,
            Environment::Live,
            &crate::harness::secret_of(43),
        )?,
        admin_token: admin_token.clone(),
        officer_token,
        run: "e2e".to_owned(),
        wait: Duration::from_secs(60),
    };

    // A subscription plan from the start of last month: charged once for each month.
    let plan_from = month_start(last_month_day).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let plan =
        serde_json::json!({"plan": "growth", "fee": "49.00", "currency": "USD", "effective_from": plan_from});
    f.command_with(reqwest::Method::PUT, &admin_token, "/v1/billing/plan", None, plan).await?;

    // Steps 6-7 of the demo: fee config, rates, a deposit and its fee, a quote and a conversion.
    let shown = riverbank::money_loop::fx_and_billing(&f).await?;
    let (user, account) = ("usr_e2e_fx", shown.account.as_str());

    // The conversion's legs: sold 100.00 USD; B + F + R = M in EUR; the residue explained.
    let c = f.read(&format!("/v1/fx/conversions/{}", shown.conversion)).await?;
    let a = &c["amounts"];
    anyhow::ensure!(minor(&a["sell"]) == 10_000, "sold {}", a["sell"]);
    let (b, fee, r, m) = (minor(&a["buy"]), minor(&a["fee"]), minor(&a["residue"]), minor(&a["mid_value"]));
    anyhow::ensure!(b + fee + r == m, "B {b} + F {fee} + R {r} != M {m}: {c}");
    anyhow::ensure!(r.abs() <= 2 && b > 0 && fee > 0, "{c}");

    // A quote left to expire: the conversion against it is refused with the reason.
    let body = serde_json::json!({"quote_id": "q-expiring", "sell_currency": "USD", "buy_currency": "EUR", "sell_amount": "50.00"});
    f.command(&admin_token, "/v1/fx/quotes", Some("treasurer-1"), body).await?;
    f.read_until("/v1/fx/quotes/q-expiring", "status", &["issued"]).await?;
    f.read_until("/v1/fx/quotes/q-expiring", "status", &["expired"]).await?;
    let body =
        serde_json::json!({"conversion_id": "c-late", "quote_id": "q-expiring", "source_account": account});
    f.command(&admin_token, "/v1/fx/conversions", Some("treasurer-1"), body).await?;
    let late = f.read_until("/v1/fx/conversions/c-late", "status", &["rejected", "completed"]).await?;
    anyhow::ensure!(
        late["status"] == "rejected" && late["reason"].as_str().is_some_and(|r| r.contains("expired")),
        "{late}"
    );

    // OTC: above 500.00 USD a second person approves; its requester cannot.
    let dep = "dep-otc";
    f.deposit_completed_by(dep, user, account, "900.00", chrono::Utc::now()).await?;
    let body = serde_json::json!({"quote_id": "q-otc", "sell_currency": "USD", "buy_currency": "INR", "sell_amount": "600.00"});
    f.command(&admin_token, "/v1/fx/quotes", Some("treasurer-1"), body).await?;
    f.read_until("/v1/fx/quotes/q-otc", "status", &["issued"]).await?;
    let body = serde_json::json!({"conversion_id": "c-otc", "quote_id": "q-otc", "source_account": account});
    f.command(&admin_token, "/v1/fx/conversions", Some("treasurer-1"), body).await?;
    f.read_until("/v1/fx/conversions/c-otc", "status", &["pending_approval"]).await?;
    let approve = serde_json::json!({"decision": "approved"});
    f.command(&admin_token, "/v1/fx/conversions/c-otc/decision", Some("treasurer-1"), approve.clone())
        .await?;
    f.command(&admin_token, "/v1/fx/conversions/c-otc/decision", Some("approver-2"), approve).await?;
    let otc = f.read_until("/v1/fx/conversions/c-otc", "status", &["completed", "rejected"]).await?;
    anyhow::ensure!(otc["status"] == "completed" && otc["decided_by"] == "user:approver-2", "{otc}");

    // Fees: a deposit completed (provider time) in last month, while last month is still open.
    let (prev, cur) = (period_of(last_month_day), period_of(now));
    f.deposit_completed_by("dep-last-month", user, account, "500.00", last_month_day).await?;
    let fees = f
        .until(
            "dep-last-month's fee booked",
            &format!("{}/v1/fees?transfer_id=dep-last-month", f.api_url),
            |v| v["fees"][0]["status"] == "booked",
        )
        .await?;
    anyhow::ensure!(
        minor(&fees["fees"][0]["fee"]) == 530 && fees["fees"][0]["period"] == prev.as_str(),
        "{fees}"
    );

    // Last month's invoice is finalized by its timer, then a completion dated in it arrives.
    let inv_prev = invoice_id(&prev);
    let closed = f
        .until(&format!("{inv_prev} finalized"), &format!("{}/v1/invoices/{inv_prev}", f.api_url), |v| {
            v["status"] == "finalized"
        })
        .await?;
    f.deposit_completed_by("dep-late", user, account, "200.00", last_month_day + chrono::Duration::hours(1))
        .await?;
    let inv_cur = invoice_id(&cur);
    let open = f
        .until(
            &format!("{inv_cur} with dep-late's adjustment"),
            &format!("{}/v1/invoices/{inv_cur}", f.api_url),
            |v| {
                v["lines"].as_array().is_some_and(|l| {
                    l.iter().any(|x| {
                        x["kind"] == "adjustment"
                            && x["sources"].as_array().is_some_and(|s| s.iter().any(|t| t == "dep-late"))
                    })
                })
            },
        )
        .await?;

    // Last month: dep-last-month's fee and the plan; finalized, and never changed after.
    let lines = closed["lines"].as_array().cloned().unwrap_or_default();
    let amount_of = |lines: &[serde_json::Value], kind: &str| -> i64 {
        lines.iter().filter(|l| l["kind"] == kind).map(|l| minor(&l["amount"])).sum()
    };
    anyhow::ensure!(
        lines.len() == 2 && amount_of(&lines, "usage") == 530 && amount_of(&lines, "plan") == 4_900,
        "{closed}"
    );
    anyhow::ensure!(minor(&closed["totals"][0]) == 530 + 4_900, "{closed}");
    let again = f.read(&format!("/v1/invoices/{inv_prev}")).await?;
    anyhow::ensure!(again["lines"] == closed["lines"] && again["status"] == "finalized", "{again}");
    // This month: the deposits' fees (2.80 + 9.30) and the adjustment (2.30) naming its source period.
    let lines = open["lines"].as_array().cloned().unwrap_or_default();
    let adjustment = lines.iter().find(|l| l["kind"] == "adjustment").cloned().unwrap_or_default();
    anyhow::ensure!(
        minor(&adjustment["amount"]) == 230 && adjustment["source_period"] == prev.as_str(),
        "{open}"
    );
    anyhow::ensure!(amount_of(&lines, "usage") == 280 + 930, "usage lines: {open}");
    anyhow::ensure!(amount_of(&lines, "plan") == 4_900, "this month's plan line: {open}");
    let totals = open["totals"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(totals.len() == 1 && minor(&totals[0]) == 280 + 930 + 230 + 4_900, "{open}");
    anyhow::ensure!(open["status"] == "draft", "{open}");

    // The tenant's posted balances still sum to zero per currency (fees, conversions and residue included).
    let balances = f.read("/v1/balances").await?;
    let mut sums = std::collections::BTreeMap::<String, i64>::new();
    for b in balances["balances"].as_array().cloned().unwrap_or_default() {
        *sums.entry(b["currency"].as_str().unwrap_or_default().to_owned()).or_default() +=
            b["posted_minor"].as_i64().unwrap_or_default();
    }
    anyhow::ensure!(sums.values().all(|s| *s == 0) && sums.len() >= 3, "posted sums {sums:?}");

    p.assert_reconciled().await;
    crate::audit::assert_trail(&p, Environment::Live, &admin_token).await?;
    p.finish().await
}
