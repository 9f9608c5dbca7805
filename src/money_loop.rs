//! The platform's main flow, end to end, over the real edges only: signed provider webhooks and the
//! tenant API in, the read API out. No producer stands in for a processor or a provider.
//!
//! 1. A KYC vendor (idcheck) approves the user at tier 1 (signed webhook); the KYC read shows it.
//! 2. A deposit by API, executed by a payments provider (acmepay) under its reference: risk scoring
//!    approves it, the provider's signed `deposit.completed` completes it, the balance posts.
//! 3. A large deposit: risk holds it for review; a compliance officer (not the requester) approves it;
//!    the provider completes it.
//! 4. A payout to a sanctioned payee (a published list; the name written differently): rejected at
//!    once, with the reason.
//! 5. The user is frozen by an admin: their next transfer is blocked.
//!
//! `riverbank demo` runs it against the local stack; `tests/e2e/money_loop.rs` runs it on a fresh
//! pipeline and checks the stores, the screening coverage and `riverbank reconcile` besides.
use std::time::{Duration, Instant};

use anyhow::Context as _;
use riverbank_ingest::core::schemes::sign::{self, Signer};
use riverbank_runtime::Config;
use riverbank_schemas::Environment;

use crate::demo::{get_json, Sender};

/// The sanctions list the flow publishes (public-list style: names in clear; published as digests).
pub const SANCTIONS_LIST: &str = r#"list = "demo-sanctions"

[[entries]]
id = "DEMO-SDN-1"
names = ["Ivan Petrov", "Ivan Petroff"]
ids = ["0x0000000000000000000000000000000000dead01"]
"#;

/// Everything the flow needs: where the edges are, who signs, the tenant's keys.
pub struct Flow<'a> {
    pub cfg: &'a Config,
    pub client: &'a reqwest::Client,
    pub ingest_url: String,
    pub api_url: String,
    pub tenant: String,
    pub env: Environment,
    /// Signs as the KYC vendor (idcheck) for `tenant`.
    pub kyc: Sender,
    /// Signs as the payments provider (acmepay) for `tenant`.
    pub payments: Sender,
    /// An admin key of `tenant` (creates transfers, freezes users).
    pub admin_token: String,
    /// A compliance officer key of `tenant`.
    pub officer_token: String,
    /// Distinguishes this run's ids from earlier runs'.
    pub run: String,
    pub wait: Duration,
}

/// What the flow did, for the report and the test's checks.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub user: String,
    pub account: String,
    /// (transfer id, final status, reason) in the order the flow made them.
    pub transfers: Vec<(String, String, Option<String>)>,
    pub posted_minor: i64,
}

impl Flow<'_> {
    fn scope(&self) -> [(&str, &str); 2] {
        [("tenant_id", self.tenant.as_str()), ("environment", self.env.as_str())]
    }

    pub(crate) async fn webhook(&self, s: &Sender, id: &str, body: &serde_json::Value) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(body)?;
        let url = format!("{}/v1/webhooks/{}/{}", self.ingest_url, s.provider, s.tenant_id);
        let mut req = self.client.post(url).header("content-type", "application/json");
        for (k, v) in sign::headers(&s.scheme, &s.signer, id, chrono::Utc::now().timestamp(), &bytes) {
            req = req.header(k, v);
        }
        let resp = req.body(bytes).send().await?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "{} webhook {id}: {status} {}", s.provider, resp.text().await?);
        Ok(())
    }

    /// POST a command to ingest; it must be accepted (202).
    pub async fn command(
        &self,
        token: &str,
        path: &str,
        user: Option<&str>,
        body: serde_json::Value,
    ) -> anyhow::Result<()> {
        self.command_with(reqwest::Method::POST, token, path, user, body).await
    }

    /// A command with `method` (fee configs and plans are PUT); it must be accepted (202).
    pub async fn command_with(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        user: Option<&str>,
        body: serde_json::Value,
    ) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.ingest_url);
        let mut req = self.client.request(method.clone(), url).bearer_auth(token).json(&body);
        req = req.header("x-environment", self.env.as_str());
        if let Some(u) = user {
            req = req.header("x-user-id", u);
        }
        let resp = req.send().await?;
        let status = resp.status();
        anyhow::ensure!(
            status == reqwest::StatusCode::ACCEPTED,
            "{method} {path}: {status} {}",
            resp.text().await?
        );
        Ok(())
    }

    /// Poll `url` until `done` says yes (returns the last answer), at most `self.wait`.
    pub async fn until(
        &self,
        what: &str,
        url: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + self.wait;
        loop {
            let last = get_json(self.client, url, &self.scope()).await;
            if let Ok(v) = &last {
                if done(v) {
                    return Ok(v.clone());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("{what}: not within {:?}; last answer {last:?}", self.wait);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Wait until transfer `id` is in one of `want`; its read-API answer.
    pub async fn transfer_status(&self, id: &str, want: &[&str]) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/v1/transfers/{id}", self.api_url);
        self.until(&format!("transfer {id} reaching {want:?}"), &url, |v| {
            v["status"].as_str().is_some_and(|s| want.contains(&s))
        })
        .await
    }

    /// The KYC vendor approves `user` (case `case`, level `level`) as of `at` (its own clock).
    pub async fn kyc_approved_at(
        &self,
        user: &str,
        case: &str,
        level: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "applicantId": case, "inspectionId": format!("{case}-i"), "correlationId": format!("req-{case}"),
            "levelName": level, "externalUserId": user, "type": "applicantApproved", "reviewStatus": "completed",
            "createdAt": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "reviewResult": {"reviewAnswer": "GREEN"},
            // Personal data as the vendor sends it (made up): sealed at the edge (idcheck's [sensitive]).
            "info": {"firstName": "Asha", "lastName": "Demo", "dob": "1990-01-01", "tin": "000-00-0000",
                     "phone": "+1 555 0100", "addresses": [{"street": "1 Demo Street", "town": "Springfield"}],
                     "idDocs": [{"idDocType": "PASSPORT", "number": "DEMO00001"}]},
            "email": "asha.demo@example.com"
        });
        self.webhook(&self.kyc, &format!("kyc-{case}"), &body).await
    }

    /// Wait until the KYC read shows `user` with KYC status `status`.
    pub async fn kyc_status(&self, user: &str, status: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/v1/users/{user}/kyc", self.api_url);
        self.until(&format!("user {user} KYC {status}"), &url, |v| v["kyc_status"] == status).await
    }

    pub async fn kyc_approved(&self, user: &str, case: &str, level: &str) -> anyhow::Result<()> {
        self.kyc_approved_at(user, case, level, chrono::Utc::now()).await?;
        self.kyc_status(user, "approved").await.map(|_| ())
    }

    async fn deposit_completed(&self, reference: &str, amount: &str, account: &str) -> anyhow::Result<()> {
        self.deposit_completed_at(reference, amount, account, chrono::Utc::now()).await
    }

    /// The payments provider's signed `deposit.completed`, stating `at` as the event's time (its own
    /// clock): the completion's event time, which prices its fee and picks its invoice period.
    pub async fn deposit_completed_at(
        &self,
        reference: &str,
        amount: &str,
        account: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "type": "deposit.completed", "api_version": "2024-06-01",
            "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": {"object": "deposit", "id": reference, "amount": {"value": amount, "currency": "USD"},
                     "destination_account": account}
        });
        self.webhook(&self.payments, &format!("wh-{reference}-completed"), &body).await
    }

    /// GET `path` of the read API (scoped to the flow's tenant and environment).
    pub async fn read(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        get_json(self.client, &format!("{}{path}", self.api_url), &self.scope()).await
    }

    /// Wait until the read API's `path` answers with `field` equal to one of `want`.
    pub async fn read_until(
        &self,
        path: &str,
        field: &str,
        want: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.api_url);
        self.until(&format!("{path} {field} in {want:?}"), &url, |v| {
            v[field].as_str().is_some_and(|s| want.contains(&s))
        })
        .await
    }

    /// A deposit by API for `user`, completed by the provider at `completed_at`; waits for COMPLETED.
    pub async fn deposit_completed_by(
        &self,
        id: &str,
        user: &str,
        account: &str,
        amount: &str,
        completed_at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        let reference = self.deposit(id, user, account, amount).await?;
        self.transfer_status(id, &["APPROVED"]).await.with_context(|| format!("{id}: screening"))?;
        self.deposit_completed_at(&reference, amount, account, completed_at).await?;
        self.transfer_status(id, &["COMPLETED"]).await.with_context(|| format!("{id}: provider callback"))?;
        Ok(())
    }

    /// A deposit by API for `user`, executed by the payments provider; returns its provider reference.
    pub async fn deposit(&self, id: &str, user: &str, account: &str, amount: &str) -> anyhow::Result<String> {
        let reference = format!("dep_{id}");
        let body = serde_json::json!({
            "transfer_id": id, "kind": "deposit", "amount": amount, "currency": "USD",
            "destination_account": account, "user_id": user,
            "provider": self.payments.provider, "provider_reference": reference,
        });
        self.command(&self.admin_token, "/v1/transfers", None, body).await?;
        Ok(reference)
    }

    pub(crate) async fn payout(
        &self,
        id: &str,
        user: &str,
        account: &str,
        amount: &str,
        payee: serde_json::Value,
    ) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "transfer_id": id, "kind": "payout", "amount": amount, "currency": "USD",
            "source_account": account, "user_id": user, "counterparty": payee,
        });
        self.command(&self.admin_token, "/v1/transfers", None, body).await
    }
}

/// Publish the demo sanctions list (before the flow needs it: a list reaches every risk partition
/// through the router, in log order with the transfers screened after it).
pub async fn publish_sanctions(cfg: &Config, env: Environment) -> anyhow::Result<()> {
    crate::risk::publish_list_text(cfg, SANCTIONS_LIST, Some(env), "money-loop").await
}

/// Run steps 1-5 (see the module comment). Prints one line per step.
pub async fn run(f: &Flow<'_>) -> anyhow::Result<Outcome> {
    let user = format!("usr_{}", f.run);
    let account = format!("acct_{}", f.run);
    let mut out = Outcome { user: user.clone(), account: account.clone(), ..Outcome::default() };
    let mut note = |id: &str, v: &serde_json::Value| {
        let reason = v["reason"].as_str().map(str::to_owned);
        out.transfers.push((id.to_owned(), v["status"].as_str().unwrap_or_default().to_owned(), reason));
    };

    // 1. KYC.
    f.kyc_approved(&user, &format!("case_{}", f.run), "basic-kyc-level").await.context("step 1: KYC")?;
    println!(
        "[money loop] 1. idcheck approved {user} (tier 1): {}/v1/users/{user}/kyc?tenant_id={}",
        f.api_url, f.tenant
    );

    // 2. A deposit, screened and approved, completed by the provider.
    let small = format!("dep-small-{}", f.run);
    let reference = f.deposit(&small, &user, &account, "100.00").await?;
    f.transfer_status(&small, &["APPROVED"]).await.context("step 2: screening")?;
    f.deposit_completed(&reference, "100.00", &account).await?;
    let v = f.transfer_status(&small, &["COMPLETED"]).await.context("step 2: provider callback")?;
    note(&small, &v);
    println!("[money loop] 2. deposit {small} 100.00 USD: screened, approved, acmepay deposit.completed → COMPLETED");

    // 3. A large deposit: review, an officer approves, the provider completes it.
    let large = format!("dep-large-{}", f.run);
    let reference = f.deposit(&large, &user, &account, "1500.00").await?;
    let reviews = format!("{}/v1/risk/reviews", f.api_url);
    f.until("the large deposit in the review queue", &reviews, |v| {
        v["reviews"].as_array().is_some_and(|r| r.iter().any(|x| x["transfer_id"] == large.as_str()))
    })
    .await
    .context("step 3: review queue")?;
    let decision = serde_json::json!({"decision": "approved", "reason": "source of funds documented"});
    f.command(&f.officer_token, &format!("/v1/risk/reviews/{large}/decision"), Some("officer-1"), decision)
        .await?;
    f.transfer_status(&large, &["APPROVED"]).await.context("step 3: officer's decision")?;
    f.deposit_completed(&reference, "1500.00", &account).await?;
    let v = f.transfer_status(&large, &["COMPLETED"]).await.context("step 3: provider callback")?;
    note(&large, &v);
    println!("[money loop] 3. deposit {large} 1500.00 USD: held for review, approved by a compliance officer, completed");

    // 4. A sanctioned payee, written differently from the list.
    let sanctioned = format!("po-sanctioned-{}", f.run);
    f.payout(
        &sanctioned,
        &user,
        &account,
        "50.00",
        serde_json::json!({"name": "PETROV, Iván", "country": "DE"}),
    )
    .await?;
    let v = f.transfer_status(&sanctioned, &["BLOCKED"]).await.context("step 4: sanctions")?;
    anyhow::ensure!(v["reason"].as_str().is_some_and(|r| r.contains("sanctions")), "step 4: reason {v}");
    note(&sanctioned, &v);
    println!(
        "[money loop] 4. payout {sanctioned} to a sanctioned payee: BLOCKED ({})",
        v["reason"].as_str().unwrap_or_default()
    );

    // 5. Frozen.
    let reason = serde_json::json!({"reason": "account takeover suspected"});
    f.command(&f.admin_token, &format!("/v1/kyc/users/{user}/freeze"), None, reason).await?;
    let kyc = format!("{}/v1/users/{user}/kyc", f.api_url);
    f.until(&format!("{user} frozen"), &kyc, |v| v["user_status"] == "frozen")
        .await
        .context("step 5: freeze")?;
    let frozen = format!("po-frozen-{}", f.run);
    f.payout(&frozen, &user, &account, "10.00", serde_json::json!({"id": "payee-ok", "country": "DE"}))
        .await?;
    let v = f.transfer_status(&frozen, &["BLOCKED"]).await.context("step 5: frozen user")?;
    anyhow::ensure!(v["reason"].as_str().is_some_and(|r| r.contains("blocked_user")), "step 5: reason {v}");
    note(&frozen, &v);
    println!(
        "[money loop] 5. {user} frozen by an admin: payout {frozen} BLOCKED ({})",
        v["reason"].as_str().unwrap_or_default()
    );

    let b = get_json(f.client, &format!("{}/v1/balances", f.api_url), &f.scope()).await?;
    let balances = b["balances"].as_array().cloned().unwrap_or_default();
    let posted = |a: &serde_json::Value| a["posted_minor"].as_i64().unwrap_or(0);
    out.posted_minor = balances.iter().filter(|a| a["account"] == account.as_str()).map(posted).sum();
    anyhow::ensure!(
        out.posted_minor == 160_000,
        "{account} posted {} minor units, want 160000",
        out.posted_minor
    );
    let total: i64 = balances.iter().map(posted).sum();
    anyhow::ensure!(total == 0, "the tenant's posted balances sum to {total}, not 0 (double entry)");
    println!("[money loop] {account} holds 1600.00 USD posted; every decision: {}/v1/risk/decisions?transfer_id={large}&tenant_id={}", f.api_url, f.tenant);
    Ok(out)
}

/// What [`fx_and_billing`] did.
#[derive(Debug, Clone, Default)]
pub struct FxBillingOutcome {
    pub account: String,
    /// The deposit whose fee was charged, and the fee (minor units of USD).
    pub deposit: String,
    pub fee_minor: i64,
    pub quote: String,
    pub conversion: String,
    /// The current month's invoice id.
    pub invoice: String,
}

/// The rates steps 6-7 publish (`POST /v1/fx/rates`): EUR/USD and USD/INR mid rates as of now.
pub fn demo_rates() -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    serde_json::json!({"as_of": now, "rates": [
        {"base": "EUR", "quote": "USD", "rate": "1.0850"},
        {"base": "USD", "quote": "INR", "rate": "83.2500"},
        {"base": "GBP", "quote": "USD", "rate": "1.2700"}
    ]})
}

/// Steps 6-7, after [`run`], for a second user of the flow's tenant (the first one is frozen):
/// 6. The tenant's deposit fee (1% + 0.30 USD, at least 0.50, at most 25.00) from the start of last
///    month, the day's rates published; a 250.00 USD deposit completes and its fee is booked to the
///    tenant's fee account.
/// 7. A quote selling 100.00 USD for EUR (mid from the inverse of EUR/USD, the tenant's markup), a
///    conversion against it: the sell, buy, markup and residue legs are posted; the month's invoice
///    (a draft until the month closes) lists the deposit fees with a total equal to the fee legs.
pub async fn fx_and_billing(f: &Flow<'_>) -> anyhow::Result<FxBillingOutcome> {
    let user = format!("usr_{}_fx", f.run);
    let account = format!("acct_{}_fx", f.run);
    f.kyc_approved(&user, &format!("case_{}_fx", f.run), "basic-kyc-level").await.context("step 6: KYC")?;
    let now = chrono::Utc::now();
    let month_start = crate::money_loop::month_start(now);
    let since = month_start - chrono::Duration::days(40);
    let fee = serde_json::json!({"currency": "USD", "fixed": "0.30", "bps": 100, "min": "0.50", "max": "25.00",
        "effective_from": since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    f.command_with(reqwest::Method::PUT, &f.admin_token, "/v1/fees/deposit", None, fee).await?;
    f.command(&f.admin_token, "/v1/fx/rates", None, demo_rates()).await?;
    let deposit = format!("dep-fx-{}", f.run);
    f.deposit_completed_by(&deposit, &user, &account, "250.00", now).await.context("step 6: deposit")?;
    let fees = f
        .until(
            &format!("the fee of {deposit} booked"),
            &format!("{}/v1/fees?transfer_id={deposit}", f.api_url),
            |v| v["fees"].as_array().is_some_and(|a| a.iter().any(|x| x["status"] == "booked")),
        )
        .await
        .context("step 6: fee")?;
    let fee_minor = fees["fees"][0]["fee"]["amount_minor"].as_i64().unwrap_or_default();
    anyhow::ensure!(fee_minor == 280, "the fee of 250.00 USD at 1% + 0.30 is 2.80 USD, got {fees}");
    println!("[fx+billing] 6. fee config for deposits (1% + 0.30 USD, min 0.50, max 25.00); {deposit} 250.00 USD completed → fee 2.80 USD booked to billing:fees: {}/v1/fees?transfer_id={deposit}&tenant_id={}", f.api_url, f.tenant);

    let quote = format!("q-{}", f.run);
    let body = serde_json::json!({"quote_id": quote, "sell_currency": "USD", "buy_currency": "EUR", "sell_amount": "100.00"});
    f.command(&f.admin_token, "/v1/fx/quotes", Some("treasurer-1"), body).await?;
    let q = f
        .read_until(&format!("/v1/fx/quotes/{quote}"), "status", &["issued", "refused"])
        .await
        .context("step 7: quote")?;
    anyhow::ensure!(q["status"] == "issued", "quote {quote}: {q}");
    let conversion = format!("c-{}", f.run);
    let body = serde_json::json!({"conversion_id": conversion, "quote_id": quote, "source_account": account});
    f.command(&f.admin_token, "/v1/fx/conversions", Some("treasurer-1"), body).await?;
    let c = f
        .read_until(&format!("/v1/fx/conversions/{conversion}"), "status", &["completed", "rejected"])
        .await
        .context("step 7: conversion")?;
    anyhow::ensure!(c["status"] == "completed", "conversion {conversion}: {c}");
    println!(
        "[fx+billing] 7. quote {quote}: sell 100.00 USD at {} EUR per USD (mid {}, markup {} bps); conversion {conversion} completed: {}/v1/fx/conversions/{conversion}?tenant_id={}",
        q["rate"].as_str().unwrap_or_default(),
        q["mid_rate"].as_str().unwrap_or_default(),
        q["markup_bps"],
        f.api_url,
        f.tenant
    );
    let invoice = riverbank_schemas::billing::invoice_id(&riverbank_schemas::billing::period_of(now));
    let inv = f
        .until(
            &format!("invoice {invoice} lists {deposit}'s fee"),
            &format!("{}/v1/invoices/{invoice}", f.api_url),
            |v| v["lines"].as_array().is_some_and(|l| !l.is_empty()),
        )
        .await
        .context("step 7: invoice")?;
    println!(
        "[fx+billing]    invoice {invoice} ({}): {} line(s), totals {}: {}/v1/invoices/{invoice}?tenant_id={}",
        inv["status"].as_str().unwrap_or_default(),
        inv["lines"].as_array().map_or(0, Vec::len),
        inv["totals"],
        f.api_url,
        f.tenant
    );
    Ok(FxBillingOutcome { account, deposit, fee_minor, quote, conversion, invoice })
}

/// Midnight UTC on the first day of `at`'s month.
pub fn month_start(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::{Datelike as _, TimeZone as _};
    chrono::Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0).single().unwrap_or(at)
}

/// The demo's second half (`riverbank demo`, after the webhook stream): this flow for
/// [`DEMO_TENANT`] against the configured local pipeline, with keys it creates and the demo sanctions list.
pub async fn demo(cfg: &Config, wait_s: u64, flow_s: u64) -> anyhow::Result<()> {
    use riverbank_ingest::core::commands::Role;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let client = &client;
    let (ingest_url, api_url) =
        (format!("http://{}", cfg.ingest.listen_addr), format!("http://{}", cfg.api.listen_addr));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let env = Environment::Live;
    let kyc = crate::money_loop::sender(cfg, "idcheck", DEMO_TENANT, env)?;
    let payments = crate::money_loop::sender(cfg, "acmepay", DEMO_TENANT, env)?;
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await?;
    riverbank_ingest::store::migrate(&pool).await?;
    let (_, admin_token) =
        riverbank_runtime::apikeys::create_key(&pool, DEMO_TENANT, env, Role::Admin, "demo").await?;
    let (_, officer_token) =
        riverbank_runtime::apikeys::create_key(&pool, DEMO_TENANT, env, Role::ComplianceOfficer, "demo")
            .await?;
    pool.close().await;
    crate::money_loop::publish_sanctions(cfg, env).await?;
    let flow = crate::money_loop::Flow {
        cfg,
        client,
        ingest_url,
        api_url,
        tenant: DEMO_TENANT.to_owned(),
        env,
        kyc,
        payments,
        admin_token,
        officer_token,
        run: run_id[..8].to_owned(),
        wait: Duration::from_secs(wait_s),
    };
    let outcome = crate::money_loop::run(&flow).await?;
    fx_and_billing(&flow).await?;
    if flow_s > 0 {
        keep_flowing(&flow, &outcome.user, flow_s).await?;
    }
    Ok(())
}

/// Time between two transfers of [`keep_flowing`].
const FLOW_EVERY: Duration = Duration::from_millis(300);
/// Transfers of [`keep_flowing`] waiting for screening, a review or their provider's callback at most.
const FLOW_IN_FLIGHT_MAX: usize = 16;
/// Deposits per user before [`keep_flowing`] verifies the next one (below the default rules' hourly
/// count and tier 1's 24-hour sum, so they are approved, not held).
const FLOW_DEPOSITS_PER_USER: u64 = 8;
/// How long a large deposit waits in the review queue before the officer approves it.
const FLOW_REVIEW_WAIT: Duration = Duration::from_secs(8);

/// Traffic for the live dashboard, for `seconds`: deposits of newly verified users (one every
/// [`FLOW_DEPOSITS_PER_USER`]), screened, then completed by the provider's signed callback; among them
/// large deposits held for review and approved by the officer a few seconds later, payouts beyond the
/// balance (rejected), deposits of the frozen `frozen_user` (blocked) and callbacks the provider's
/// mapping refuses (dead letters). Prints what it sent every 10 s.
pub async fn keep_flowing(f: &Flow<'_>, frozen_user: &str, seconds: u64) -> anyhow::Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt as _};
    let verify = |n: u64| async move {
        let user = format!("usr_{}_live{n}", f.run);
        f.kyc_approved(&user, &format!("case_{}_live{n}", f.run), "basic-kyc-level").await.map(|_| user)
    };
    let mut user = verify(0).await?;
    let account = format!("acct_{}_live", f.run);
    println!("[flow] sending traffic for {seconds} s (watch the dashboard)");
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut sent, mut completed, mut reviewed, mut rejected, mut blocked, mut dead) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut in_flight = FuturesUnordered::new();
    let mut report = Instant::now();
    let (mut i, mut deposits): (u64, u64) = (0, 0);
    while Instant::now() < end {
        i += 1;
        let id = format!("live-{}-{i:05}", f.run);
        let amount = format!("{}.{:02}", 10 + (i * 37) % 190, (i * 13) % 100);
        match i % 20 {
            3 | 13 => {
                let payee = serde_json::json!({"id": "payee-flow", "country": "US"});
                f.payout(&id, &user, &account, "1000000.00", payee).await?;
                rejected += 1;
            }
            6 => {
                f.deposit(&id, frozen_user, &account, &amount).await?;
                blocked += 1;
            }
            9 | 19 => {
                // A callback the provider's mapping refuses (no deposit id): a dead letter, answered 202.
                let body = serde_json::json!({"type": "deposit.completed", "api_version": "2024-06-01",
                    "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "data": {"object": "deposit"}});
                if f.webhook(&f.payments, &format!("wh-{id}-unmappable"), &body).await.is_ok() {
                    dead += 1;
                }
            }
            _ if in_flight.len() < FLOW_IN_FLIGHT_MAX => {
                deposits += 1;
                if deposits % FLOW_DEPOSITS_PER_USER == 0 {
                    user = verify(deposits / FLOW_DEPOSITS_PER_USER).await?;
                }
                // One in ten is large: held for review, approved by the officer after a while.
                let large = i % 20 == 16;
                let amount = if large { "1500.00".to_owned() } else { amount };
                let reference = f.deposit(&id, &user, &account, &amount).await?;
                let account = account.clone();
                in_flight.push(async move {
                    if large {
                        let reviews = format!("{}/v1/risk/reviews", f.api_url);
                        f.until("a large deposit in the review queue", &reviews, |v| {
                            v["reviews"].as_array().is_some_and(|r| r.iter().any(|x| x["transfer_id"] == id.as_str()))
                        })
                        .await?;
                        tokio::time::sleep(FLOW_REVIEW_WAIT).await;
                        let decision = serde_json::json!({"decision": "approved", "reason": "source of funds documented"});
                        f.command(&f.officer_token, &format!("/v1/risk/reviews/{id}/decision"), Some("officer-1"), decision)
                            .await?;
                    }
                    f.transfer_status(&id, &["APPROVED"]).await?;
                    f.deposit_completed_at(&reference, &amount, &account, chrono::Utc::now()).await?;
                    Ok::<bool, anyhow::Error>(large)
                });
            }
            _ => {}
        }
        sent += 1;
        let pause = tokio::time::sleep(FLOW_EVERY);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                Some(r) = in_flight.next(), if !in_flight.is_empty() => match r {
                    Ok(large) => { completed += 1; reviewed += u64::from(large) }
                    Err(e) => println!("[flow] a deposit did not complete: {e:#}"),
                },
            }
        }
        if report.elapsed() >= Duration::from_secs(10) {
            report = Instant::now();
            println!("[flow] {sent} sent: {completed} deposits completed ({reviewed} after a review), {rejected} payouts beyond the balance, {blocked} for a frozen user, {dead} unmappable callbacks");
        }
    }
    while let Some(r) = in_flight.next().await {
        match r {
            Ok(large) => {
                completed += 1;
                reviewed += u64::from(large);
            }
            Err(e) => println!("[flow] a deposit did not complete: {e:#}"),
        }
    }
    println!("[flow] done: {sent} sent: {completed} deposits completed ({reviewed} after a review), {rejected} payouts beyond the balance, {blocked} for a frozen user, {dead} unmappable callbacks");
    Ok(())
}

/// The tenant the demo's money loop runs for (its senders are in deploy/local/riverbank.toml).
pub const DEMO_TENANT: &str = "tenant-alpha";

/// A signer for `provider` from the config's first secret of (provider, tenant, env).
pub fn sender(cfg: &Config, provider: &str, tenant: &str, env: Environment) -> anyhow::Result<Sender> {
    crate::demo::senders(cfg)?
        .into_iter()
        .find(|s| s.provider == provider && s.tenant_id == tenant && s.environment == env)
        .with_context(|| format!("no [[ingest.webhooks]] secret for {provider} / {tenant} / {env}"))
}

/// For tests: a sender whose key the test chose.
pub fn sender_with(provider: &str, tenant: &str, env: Environment, secret: &str) -> anyhow::Result<Sender> {
    let providers = riverbank_ingest::core::provider::load(&[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let def = providers.get(provider).with_context(|| format!("no provider {provider}"))?;
    Ok(Sender {
        provider: provider.to_owned(),
        tenant_id: tenant.to_owned(),
        environment: env,
        scheme: def.signature.clone(),
        signer: Signer::Secret(secret.to_owned()),
    })
}
