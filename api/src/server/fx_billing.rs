//! FX and billing reads: a quote, a conversion (with its amounts and the ledger's answer), the latest rate
//! per pair, invoices (a list, and one with its lines) and fees from Postgres; fee revenue and FX volume
//! from ClickHouse with `complete_through`. Tenant-scoped like every read (`guarded`); every value is
//! bound, never spliced into SQL; a bad parameter is a 400 naming it (`error.field`). Amounts are
//! `{amount_minor, currency}` (integer minor units), as in the events; rates are `×10^9` integers, with
//! their exact decimal text beside them.
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use riverbank_runtime::http::HttpError;
use riverbank_runtime::kafka;
use riverbank_schemas::billing::{FeePart, INVOICE_LINES_MAX};
use riverbank_schemas::fx::RateUsed;
use riverbank_schemas::{Currency, Environment, Money, Topics};
use serde::{Deserialize, Serialize};

use super::analytics::{fetch, Bind};
use super::{
    complete_through, database_error, guarded, guarded_for, live, micros_cursor, next_cursor, scoped_row,
    Api, Readers,
};

/// Rows per page when the caller names no `limit` (at most `api.page_rows_max`).
pub const FX_BILLING_PAGE_ROWS_DEFAULT: u32 = 100;
/// Longest `from`..`to` span of the fee revenue and FX volume analytics: 366 days (a year by day).
pub const ANALYTICS_RANGE_S_MAX: i64 = 366 * 86_400;
/// Longest quote, conversion, transfer or invoice id accepted, in bytes (`FX_ID_BYTES_MAX`, and the
/// transfers processor's `TRANSFER_ID_BYTES_MAX`).
pub const ID_BYTES_MAX: usize = riverbank_schemas::fx::FX_ID_BYTES_MAX;
/// ClickHouse sums of minor units are taken in two parts (`intDiv(x, 10^9)` and `x % 10^9`), each far
/// from overflowing Int64, and put together here with checked arithmetic.
pub(super) const SUM_SPLIT: i64 = 1_000_000_000;

/// A 400 naming the parameter at fault (`error.field`) and the rule it breaks (`error.rule`).
pub(super) fn bad(
    field: &str,
    code: &'static str,
    rule: &'static str,
    message: impl std::fmt::Display,
) -> HttpError {
    HttpError {
        field: Some((field.to_owned(), rule)),
        ..HttpError::bad_request(code, format!("{field}: {message}"))
    }
}

/// The query string, or a 400 in the one error shape (an unknown or missing parameter, a bad number).
pub(super) fn params<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, HttpError> {
    q.map(|Query(q)| q).map_err(|e| HttpError::bad_request("invalid_query", e.body_text()))
}

/// The path's id, or a 400 naming it.
fn path_id(p: Result<Path<String>, PathRejection>, field: &str) -> Result<String, HttpError> {
    let id = p.map(|Path(id)| id).map_err(|e| bad(field, "invalid_id", "id_format", e.body_text()))?;
    check_id(field, &id)?;
    Ok(id)
}

/// Ids as the edge and the processors make them: 1–[`ID_BYTES_MAX`] of ASCII letters, digits, `_`,
/// `-`, `.`, `:`.
fn check_id(field: &str, id: &str) -> Result<(), HttpError> {
    let ok = !id.is_empty()
        && id.len() <= ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            "invalid_id",
            "id_format",
            format!("must be 1-{ID_BYTES_MAX} of ASCII letters, digits, '_', '-', '.', ':'"),
        ))
    }
}

/// `YYYY-MM`, a month 01-12.
fn check_period(field: &str, text: &str) -> Result<(), HttpError> {
    let b = text.as_bytes();
    let ok = b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[5..].iter().all(u8::is_ascii_digit)
        && text[5..].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m));
    if ok {
        Ok(())
    } else {
        Err(bad(field, "invalid_period", "period_format", "must be YYYY-MM (e.g. 2026-11)"))
    }
}

pub(super) fn page_limit(limit: Option<u32>, max: u32) -> Result<u32, HttpError> {
    let limit = limit.unwrap_or(FX_BILLING_PAGE_ROWS_DEFAULT.min(max));
    if limit == 0 || limit > max {
        return Err(bad("limit", "invalid_limit", "range", format!("must be 1..={max}")));
    }
    Ok(limit)
}

fn bad_cursor() -> HttpError {
    bad("after", "invalid_cursor", "cursor", "must be a next_cursor from a previous page")
}

fn not_found(what: &str) -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what} for this tenant"))
}

/// Money from a stored (minor units, currency code) pair.
fn money(column: &str, minor: i64, currency: &str) -> Result<Money, HttpError> {
    let c = Currency::from_code(currency)
        .map_err(|e| HttpError::internal(&format!("{column}: currency {currency:?}: {e}")))?;
    Ok(Money::new(minor, c))
}

/// Money from nullable columns: both or neither.
fn money_opt(column: &str, minor: Option<i64>, currency: Option<&str>) -> Result<Option<Money>, HttpError> {
    match (minor, currency) {
        (Some(m), Some(c)) => money(column, m, c).map(Some),
        _ => Ok(None),
    }
}

/// JSON text Postgres gave back for a `jsonb` column, as the type the sinks wrote.
fn from_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, HttpError> {
    serde_json::from_str(text).map_err(|e| HttpError::internal(&format!("{column}: {e}")))
}

/// A rate ×10^9 as exact decimal text ("1.092560000" → "1.09256"), integer arithmetic only.
pub fn rate_text(e9: i64) -> String {
    let sign = if e9 < 0 { "-" } else { "" };
    let abs = e9.unsigned_abs();
    let frac = format!("{:09}", abs % 1_000_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{}", abs / 1_000_000_000)
    } else {
        format!("{sign}{}.{frac}", abs / 1_000_000_000)
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
}

#[derive(Debug, sqlx::FromRow)]
struct QuoteRow {
    quote_id: String,
    status: String,
    version: i32,
    sell_currency: String,
    buy_currency: String,
    sell_minor: Option<i64>,
    buy_minor: Option<i64>,
    fixed: String,
    mid_e9: Option<i64>,
    rate_e9: Option<i64>,
    markup_bps: i32,
    rates: String,
    pivot: Option<String>,
    rate_as_of: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    rounding: String,
    requested_by: String,
    reason: Option<String>,
    conversion_id: Option<String>,
    updated_at: DateTime<Utc>,
}

/// A quote as the FX processor last recorded it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct QuoteView {
    tenant_id: String,
    environment: Environment,
    quote_id: String,
    /// issued | refused | expired | used
    status: String,
    version: i32,
    sell_currency: String,
    buy_currency: String,
    /// The amount sold (fixed by the request, or computed); absent when not computed.
    sell: Option<Money>,
    buy: Option<Money>,
    /// Which side the request fixed: `sell` or `buy`.
    fixed: String,
    /// Mid rate: buy units per sell unit, ×10^9, and as decimal text.
    mid_e9: Option<i64>,
    mid_rate: Option<String>,
    /// The customer's rate after markup, ×10^9, and as decimal text.
    rate_e9: Option<i64>,
    rate: Option<String>,
    markup_bps: i32,
    /// The rates it rests on: pair, rate, source, time and version.
    rates: Vec<RateUsed>,
    pivot: Option<String>,
    rate_as_of: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    rounding: String,
    requested_by: String,
    reason: Option<String>,
    conversion_id: Option<String>,
    updated_at: DateTime<Utc>,
}

/// `GET /v1/fx/quotes/{quote_id}`: the quote's current state; 404 while the FX processor has not decided
/// it (quotes are asynchronous) or when it is another tenant's.
pub(super) async fn quote(
    State(s): State<Arc<Api>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Response {
    let (q, quote_id) = match (params(q), path_id(id, "quote_id")) {
        (Ok(q), Ok(id)) => (q, id),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let row: Option<QuoteRow> = scoped_row(
            &s2.pg,
            "SELECT quote_id, status, version, sell_currency, buy_currency, sell_minor, buy_minor, fixed, mid_e9,
                    rate_e9, markup_bps, rates::text AS rates, pivot, rate_as_of, expires_at, rounding,
                    requested_by, reason, conversion_id, updated_at
             FROM fx_quotes WHERE tenant_id = $1 AND environment = $2 AND quote_id = $3",
            (&q.tenant_id, q.environment),
            &quote_id,
        )
        .await?;
        let r = row.ok_or_else(|| not_found("quote"))?;
        Ok(QuoteView {
            tenant_id: q.tenant_id,
            environment: q.environment,
            sell: money_opt("fx_quotes.sell", r.sell_minor, Some(&r.sell_currency))?,
            buy: money_opt("fx_quotes.buy", r.buy_minor, Some(&r.buy_currency))?,
            rates: from_json("fx_quotes.rates", &r.rates)?,
            quote_id: r.quote_id,
            status: r.status,
            version: r.version,
            sell_currency: r.sell_currency,
            buy_currency: r.buy_currency,
            fixed: r.fixed,
            mid_e9: r.mid_e9,
            mid_rate: r.mid_e9.map(rate_text),
            rate_e9: r.rate_e9,
            rate: r.rate_e9.map(rate_text),
            markup_bps: r.markup_bps,
            pivot: r.pivot,
            rate_as_of: r.rate_as_of,
            expires_at: r.expires_at,
            rounding: r.rounding,
            requested_by: r.requested_by,
            reason: r.reason,
            conversion_id: r.conversion_id,
            updated_at: r.updated_at,
        })
    })
    .await
}

#[derive(Debug, sqlx::FromRow)]
struct ConversionRow {
    conversion_id: String,
    quote_id: String,
    status: String,
    version: i32,
    account: String,
    destination: String,
    sell_minor: Option<i64>,
    sell_currency: Option<String>,
    buy_minor: Option<i64>,
    buy_currency: Option<String>,
    mid_value_minor: Option<i64>,
    fee_minor: Option<i64>,
    residue_minor: Option<i64>,
    mid_value_exact: Option<String>,
    buy_exact: Option<String>,
    fee_exact: Option<String>,
    mid_e9: Option<i64>,
    rate_e9: Option<i64>,
    rounding: String,
    booking_id: Option<String>,
    otc: bool,
    requested_by: String,
    decided_by: Option<String>,
    reason: Option<String>,
    updated_at: DateTime<Utc>,
    booking_outcome: Option<String>,
    booking_reason: Option<String>,
}

/// A conversion's amounts: S sold; in the buy currency B bought, M the mid value, F the markup fee, R
/// the rounding residue (R = M − B − F), and the exact values B, M and F were rounded from.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AmountsView {
    sell: Money,
    buy: Money,
    mid_value: Money,
    fee: Money,
    residue: Money,
    mid_value_exact: Option<String>,
    buy_exact: Option<String>,
    fee_exact: Option<String>,
}

/// What the ledger answered to the conversion's booking.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct BookingView {
    booking_id: String,
    /// booked | refused; absent while the ledger has not answered.
    outcome: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ConversionView {
    tenant_id: String,
    environment: Environment,
    conversion_id: String,
    quote_id: String,
    /// pending_approval | booking | completed | rejected
    status: String,
    version: i32,
    account: String,
    destination: String,
    /// Absent when the conversion was refused before it was priced.
    amounts: Option<AmountsView>,
    mid_e9: Option<i64>,
    mid_rate: Option<String>,
    rate_e9: Option<i64>,
    rate: Option<String>,
    rounding: String,
    booking_id: Option<String>,
    booking: Option<BookingView>,
    /// Needed a second person's approval.
    otc: bool,
    requested_by: String,
    decided_by: Option<String>,
    reason: Option<String>,
    updated_at: DateTime<Utc>,
}

fn amounts(r: &ConversionRow) -> Result<Option<AmountsView>, HttpError> {
    let (Some(sell_currency), Some(buy_currency)) = (r.sell_currency.as_deref(), r.buy_currency.as_deref())
    else {
        return Ok(None);
    };
    let buy = |column: &str, minor: Option<i64>| -> Result<Money, HttpError> {
        money(column, minor.ok_or_else(|| HttpError::internal(&format!("{column} is NULL")))?, buy_currency)
    };
    Ok(Some(AmountsView {
        sell: money(
            "fx_conversions.sell_minor",
            r.sell_minor.ok_or_else(|| HttpError::internal(&"fx_conversions.sell_minor is NULL"))?,
            sell_currency,
        )?,
        buy: buy("fx_conversions.buy_minor", r.buy_minor)?,
        mid_value: buy("fx_conversions.mid_value_minor", r.mid_value_minor)?,
        fee: buy("fx_conversions.fee_minor", r.fee_minor)?,
        residue: buy("fx_conversions.residue_minor", r.residue_minor)?,
        mid_value_exact: r.mid_value_exact.clone(),
        buy_exact: r.buy_exact.clone(),
        fee_exact: r.fee_exact.clone(),
    }))
}

/// `GET /v1/fx/conversions/{conversion_id}`: the conversion's current state, its amounts and the ledger's
/// answer to its booking; 404 while the FX processor has not decided it.
pub(super) async fn conversion(
    State(s): State<Arc<Api>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Response {
    let (q, conversion_id) = match (params(q), path_id(id, "conversion_id")) {
        (Ok(q), Ok(id)) => (q, id),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let row: Option<ConversionRow> = scoped_row(
            &s2.pg,
            "SELECT c.conversion_id, c.quote_id, c.status, c.version, c.account, c.destination, c.sell_minor,
                    c.sell_currency, c.buy_minor, c.buy_currency, c.mid_value_minor, c.fee_minor, c.residue_minor,
                    c.mid_value_exact, c.buy_exact, c.fee_exact, c.mid_e9, c.rate_e9, c.rounding, c.booking_id,
                    c.otc, c.requested_by, c.decided_by, c.reason, c.updated_at,
                    b.outcome AS booking_outcome, b.reason AS booking_reason
             FROM fx_conversions c
             LEFT JOIN ledger_bookings b
               ON b.tenant_id = c.tenant_id AND b.environment = c.environment AND b.booking_id = c.booking_id
             WHERE c.tenant_id = $1 AND c.environment = $2 AND c.conversion_id = $3",
            (&q.tenant_id, q.environment),
            &conversion_id,
        )
        .await?;
        let r = row.ok_or_else(|| not_found("conversion"))?;
        Ok(ConversionView {
            tenant_id: q.tenant_id,
            environment: q.environment,
            amounts: amounts(&r)?,
            booking: r.booking_id.clone().map(|booking_id| BookingView {
                booking_id,
                outcome: r.booking_outcome.clone(),
                reason: r.booking_reason.clone(),
            }),
            conversion_id: r.conversion_id,
            quote_id: r.quote_id,
            status: r.status,
            version: r.version,
            account: r.account,
            destination: r.destination,
            mid_e9: r.mid_e9,
            mid_rate: r.mid_e9.map(rate_text),
            rate_e9: r.rate_e9,
            rate: r.rate_e9.map(rate_text),
            rounding: r.rounding,
            booking_id: r.booking_id,
            otc: r.otc,
            requested_by: r.requested_by,
            decided_by: r.decided_by,
            reason: r.reason,
            updated_at: r.updated_at,
        })
    })
    .await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    #[schemars(range(min = 1))]
    limit: Option<u32>,
    /// Keyset cursor from a previous page's `next_cursor`.
    after: Option<String>,
}

/// The latest rate of one pair, as published.
#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct RateView {
    base: String,
    quote: String,
    /// 1 base = rate_e9 / 10^9 quote.
    rate_e9: i64,
    #[sqlx(skip)]
    rate: String,
    as_of: DateTime<Utc>,
    published_by: String,
    /// The publication it came from.
    event_id: uuid::Uuid,
}

/// Rates cursor: `{base}/{quote}`, two currency codes.
fn parse_pair_cursor(text: &str) -> Result<(String, String), HttpError> {
    let (base, quote) = text.split_once('/').ok_or_else(bad_cursor)?;
    for code in [base, quote] {
        Currency::from_code(code).map_err(|_| bad_cursor())?;
    }
    Ok((base.to_owned(), quote.to_owned()))
}

/// `GET /v1/fx/rates`: the latest published rate of every pair (the greatest `as_of`, as the FX
/// processor keeps it), in (base, quote) order, a page at a time. Rates are platform reference data that
/// every tenant's quotes rest on: any tenant's key reads them (a rates feed's key reads nothing).
pub(super) async fn rates(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        let limit = page_limit(q.limit, s2.page_rows_max)?;
        let (after_base, after_quote) = match &q.after {
            Some(c) => parse_pair_cursor(c)?,
            None => (String::new(), String::new()),
        };
        let mut rates: Vec<RateView> = sqlx::query_as(
            "SELECT DISTINCT ON (base, quote) base, quote, rate_e9, as_of, published_by, event_id
             FROM fx_rates WHERE environment = $1 AND (base, quote) > ($2, $3)
             ORDER BY base, quote, as_of DESC, occurred_at DESC, event_id DESC
             LIMIT $4",
        )
        .bind(q.environment.as_str())
        .bind(&after_base)
        .bind(&after_quote)
        .bind(i64::from(limit))
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        for r in &mut rates {
            r.rate = rate_text(r.rate_e9);
        }
        let next_cursor = next_cursor(&rates, limit, |r| format!("{}/{}", r.base, r.quote));
        Ok(serde_json::json!({
            "tenant_id": q.tenant_id, "environment": q.environment, "rates": rates, "next_cursor": next_cursor
        }))
    })
    .await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoicesQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    /// `YYYY-MM`: only that month's invoices.
    period: Option<String>,
    #[schemars(range(min = 1))]
    limit: Option<u32>,
    /// Keyset cursor from a previous page's `next_cursor`.
    after: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct InvoiceRow {
    invoice_id: String,
    period: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    closes_at: DateTime<Utc>,
    status: String,
    version: i32,
    totals: String,
    line_count: i32,
    updated_at: DateTime<Utc>,
}

/// An invoice without its lines.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct InvoiceSummary {
    invoice_id: String,
    /// `YYYY-MM`
    period: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    /// When the billing processor's clock finalizes it.
    closes_at: DateTime<Utc>,
    /// draft | finalized
    status: String,
    version: i32,
    /// Per currency, Σ lines.
    totals: Vec<Money>,
    line_count: i32,
    updated_at: DateTime<Utc>,
}

impl InvoiceSummary {
    fn of(r: InvoiceRow) -> Result<InvoiceSummary, HttpError> {
        Ok(InvoiceSummary {
            totals: from_json("invoices.totals", &r.totals)?,
            invoice_id: r.invoice_id,
            period: r.period,
            period_start: r.period_start,
            period_end: r.period_end,
            closes_at: r.closes_at,
            status: r.status,
            version: r.version,
            line_count: r.line_count,
            updated_at: r.updated_at,
        })
    }
}

const INVOICE_COLUMNS: &str = "invoice_id, period, period_start, period_end, closes_at, status, version,
    totals::text AS totals, line_count, updated_at";

/// Invoices cursor: `{period}/{invoice_id}`.
fn parse_invoice_cursor(text: &str) -> Result<(String, String), HttpError> {
    let (period, id) = text.split_once('/').ok_or_else(bad_cursor)?;
    check_period("after", period).map_err(|_| bad_cursor())?;
    check_id("after", id).map_err(|_| bad_cursor())?;
    Ok((period.to_owned(), id.to_owned()))
}

/// `GET /v1/invoices[?period=YYYY-MM]`: the tenant's invoices (of one month with `period`), oldest
/// period first, a page at a time; lines are in `GET /v1/invoices/{id}`.
pub(super) async fn invoices(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<InvoicesQuery>, QueryRejection>,
) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        if let Some(p) = &q.period {
            check_period("period", p)?;
        }
        let limit = page_limit(q.limit, s2.page_rows_max)?;
        let (after_period, after_id) = match &q.after {
            Some(c) => parse_invoice_cursor(c)?,
            None => (String::new(), String::new()),
        };
        let rows: Vec<InvoiceRow> = sqlx::query_as(&format!(
            "SELECT {INVOICE_COLUMNS} FROM invoices
             WHERE tenant_id = $1 AND environment = $2 AND ($3::text IS NULL OR period = $3)
               AND (period, invoice_id) > ($4, $5)
             ORDER BY period, invoice_id LIMIT $6"
        ))
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(&q.period)
        .bind(&after_period)
        .bind(&after_id)
        .bind(i64::from(limit))
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let next_cursor = next_cursor(&rows, limit, |r| format!("{}/{}", r.period, r.invoice_id));
        let invoices = rows.into_iter().map(InvoiceSummary::of).collect::<Result<Vec<_>, _>>()?;
        Ok(serde_json::json!({
            "tenant_id": q.tenant_id, "environment": q.environment, "invoices": invoices,
            "next_cursor": next_cursor
        }))
    })
    .await
}

#[derive(Debug, sqlx::FromRow)]
struct LineRow {
    line_id: String,
    kind: String,
    transfer_kind: Option<String>,
    description: String,
    counted: i64,
    amount_minor: i64,
    currency: String,
    source_period: Option<String>,
    sources: String,
}

/// One invoice line.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct LineView {
    /// Stable within the invoice: `usage/{kind}/{currency}`, `plan/{plan}`,
    /// `adjustment/{period}/{kind}/{currency}`.
    line_id: String,
    /// usage | plan | adjustment
    kind: String,
    transfer_kind: Option<String>,
    description: String,
    /// Fees (or plan charges) counted.
    count: i64,
    amount: Money,
    /// An adjustment's source period.
    source_period: Option<String>,
    /// An adjustment's transfers.
    sources: Vec<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct InvoiceView {
    tenant_id: String,
    environment: Environment,
    #[serde(flatten)]
    invoice: InvoiceSummary,
    /// In the invoice's order.
    lines: Vec<LineView>,
}

/// `GET /v1/invoices/{invoice_id}`: the invoice's current version with its lines; 404 when the tenant has
/// no such invoice.
pub(super) async fn invoice(
    State(s): State<Arc<Api>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Response {
    let (q, invoice_id) = match (params(q), path_id(id, "invoice_id")) {
        (Ok(q), Ok(id)) => (q, id),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        // One snapshot: the lines read are the version read.
        let mut tx = s2.pg.begin().await.map_err(|e| database_error("postgres", &e))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(|e| database_error("postgres", &e))?;
        let row: Option<InvoiceRow> = sqlx::query_as(&format!(
            "SELECT {INVOICE_COLUMNS} FROM invoices WHERE tenant_id = $1 AND environment = $2 AND invoice_id = $3"
        ))
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(&invoice_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        let r = row.ok_or_else(|| not_found("invoice"))?;
        // An invoice holds at most INVOICE_LINES_MAX lines (billing folds adjustments beyond it).
        let lines: Vec<LineRow> = sqlx::query_as(
            "SELECT line_id, kind, transfer_kind, description, counted, amount_minor, currency, source_period,
                    sources::text AS sources
             FROM invoice_lines WHERE tenant_id = $1 AND environment = $2 AND invoice_id = $3
             ORDER BY position LIMIT $4",
        )
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(&invoice_id)
        .bind(i64::try_from(INVOICE_LINES_MAX).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        tx.rollback().await.map_err(|e| database_error("postgres", &e))?;
        let lines = lines
            .into_iter()
            .map(|l| {
                Ok(LineView {
                    amount: money("invoice_lines.amount", l.amount_minor, &l.currency)?,
                    sources: from_json("invoice_lines.sources", &l.sources)?,
                    line_id: l.line_id,
                    kind: l.kind,
                    transfer_kind: l.transfer_kind,
                    description: l.description,
                    count: l.counted,
                    source_period: l.source_period,
                })
            })
            .collect::<Result<Vec<_>, HttpError>>()?;
        Ok(InvoiceView {
            tenant_id: q.tenant_id,
            environment: q.environment,
            invoice: InvoiceSummary::of(r)?,
            lines,
        })
    })
    .await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeesQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    /// One transfer's fee (404 when it has none).
    transfer_id: Option<String>,
    /// `YYYY-MM`: fees of transfers completed in that month.
    period: Option<String>,
    /// Fees counted on one invoice.
    invoice_id: Option<String>,
    #[schemars(range(min = 1))]
    limit: Option<u32>,
    /// Keyset cursor from a previous page's `next_cursor`.
    after: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct FeeRow {
    transfer_id: String,
    transfer_kind: String,
    transfer_amount_minor: i64,
    transfer_currency: String,
    completed_at: DateTime<Utc>,
    period: String,
    fee_minor: i64,
    currency: String,
    status: String,
    version: i32,
    config_version: Option<String>,
    pricing: String,
    monthly_volume_before_minor: i64,
    monthly_volume_currency: String,
    fixed_minor: i64,
    fixed_currency: String,
    parts: String,
    exact: String,
    clamped: Option<String>,
    rounding: String,
    booking_id: Option<String>,
    invoice_id: Option<String>,
    adjustment: bool,
    reason: Option<String>,
    updated_at: DateTime<Utc>,
}

/// One transfer's fee and how it was computed.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FeeView {
    transfer_id: String,
    transfer_kind: String,
    transfer_amount: Money,
    completed_at: DateTime<Utc>,
    period: String,
    fee: Money,
    /// booking | booked | refused | waived
    status: String,
    version: i32,
    /// The config that priced it (absent: none, the fee is waived).
    config_version: Option<String>,
    /// volume | graduated
    pricing: String,
    monthly_volume_before: Money,
    fixed: Money,
    /// The slices of the percentage part and their basis points.
    parts: Vec<FeePart>,
    /// fixed + Σ parts, exact, in minor units, before rounding and clamping.
    exact: String,
    /// `min` or `max` when the clamp changed it.
    clamped: Option<String>,
    rounding: String,
    booking_id: Option<String>,
    /// The invoice it is counted on, once booked.
    invoice_id: Option<String>,
    /// Counted as an adjustment on a later invoice (its own period had closed).
    adjustment: bool,
    reason: Option<String>,
    updated_at: DateTime<Utc>,
}

impl FeeView {
    fn of(r: FeeRow) -> Result<FeeView, HttpError> {
        Ok(FeeView {
            transfer_amount: money("fees.transfer_amount", r.transfer_amount_minor, &r.transfer_currency)?,
            fee: money("fees.fee", r.fee_minor, &r.currency)?,
            monthly_volume_before: money(
                "fees.monthly_volume_before",
                r.monthly_volume_before_minor,
                &r.monthly_volume_currency,
            )?,
            fixed: money("fees.fixed", r.fixed_minor, &r.fixed_currency)?,
            parts: from_json("fees.parts", &r.parts)?,
            transfer_id: r.transfer_id,
            transfer_kind: r.transfer_kind,
            completed_at: r.completed_at,
            period: r.period,
            status: r.status,
            version: r.version,
            config_version: r.config_version,
            pricing: r.pricing,
            exact: r.exact,
            clamped: r.clamped,
            rounding: r.rounding,
            booking_id: r.booking_id,
            invoice_id: r.invoice_id,
            adjustment: r.adjustment,
            reason: r.reason,
            updated_at: r.updated_at,
        })
    }
}

/// Fees cursor: `<completed_at unix micros>_<transfer_id>` (micros hold no `_`).
fn parse_fee_cursor(text: &str) -> Result<(DateTime<Utc>, String), HttpError> {
    micros_cursor(text, |id| check_id("after", id).is_ok(), bad_cursor)
}

/// `GET /v1/fees[?transfer_id=][&period=][&invoice_id=]`: fees in the order their transfers completed, a
/// page at a time; with `transfer_id`, that transfer's fee (404 when it has none yet).
pub(super) async fn fees(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<FeesQuery>, QueryRejection>,
) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let s2 = s.clone();
    let scope = (q.tenant_id.clone(), q.environment);
    guarded(&s, &headers, (&scope.0, scope.1), async move {
        if let Some(t) = &q.transfer_id {
            check_id("transfer_id", t)?;
        }
        if let Some(p) = &q.period {
            check_period("period", p)?;
        }
        if let Some(i) = &q.invoice_id {
            check_id("invoice_id", i)?;
        }
        let limit = page_limit(q.limit, s2.page_rows_max)?;
        let (after_at, after_id) = q.after.as_deref().map(parse_fee_cursor).transpose()?.unzip();
        let rows: Vec<FeeRow> = sqlx::query_as(
            "SELECT transfer_id, transfer_kind, transfer_amount_minor, transfer_currency, completed_at, period,
                    fee_minor, currency, status, version, config_version, pricing, monthly_volume_before_minor,
                    monthly_volume_currency, fixed_minor, fixed_currency, parts::text AS parts, exact, clamped,
                    rounding, booking_id, invoice_id, adjustment, reason, updated_at
             FROM fees
             WHERE tenant_id = $1 AND environment = $2 AND ($3::text IS NULL OR transfer_id = $3)
               AND ($4::text IS NULL OR period = $4) AND ($5::text IS NULL OR invoice_id = $5)
               AND ($6::timestamptz IS NULL OR (completed_at, transfer_id) > ($6, $7::text))
             ORDER BY completed_at, transfer_id LIMIT $8",
        )
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(&q.transfer_id)
        .bind(&q.period)
        .bind(&q.invoice_id)
        .bind(after_at)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&s2.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
        if rows.is_empty() && q.transfer_id.is_some() && q.after.is_none() {
            return Err(not_found("fee (no fee recorded for this transfer)"));
        }
        let next_cursor =
            next_cursor(&rows, limit, |r| format!("{}_{}", r.completed_at.timestamp_micros(), r.transfer_id));
        let fees = rows.into_iter().map(FeeView::of).collect::<Result<Vec<_>, _>>()?;
        Ok(serde_json::json!({
            "tenant_id": q.tenant_id, "environment": q.environment, "fees": fees, "next_cursor": next_cursor
        }))
    })
    .await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    /// At or after (RFC 3339).
    #[schemars(with = "Option<DateTime<Utc>>")]
    from: Option<String>,
    /// Before (RFC 3339).
    #[schemars(with = "Option<DateTime<Utc>>")]
    to: Option<String>,
    /// Rows at most (default and maximum `api.page_rows_max`).
    #[schemars(range(min = 1))]
    limit: Option<u32>,
}

/// `from` and `to`: required, RFC 3339, `from < to`, at most [`ANALYTICS_RANGE_S_MAX`] apart, within
/// what ClickHouse `DateTime` holds.
fn range(q: &RangeQuery) -> Result<(DateTime<Utc>, DateTime<Utc>), HttpError> {
    time_range(q.from.as_deref(), q.to.as_deref(), ANALYTICS_RANGE_S_MAX)
}

/// `from` and `to` (RFC 3339, required), `from < to`, at most `span_s_max` seconds apart, within what
/// ClickHouse `DateTime` holds; a 400 naming the parameter otherwise.
pub(super) fn time_range(
    from: Option<&str>,
    to: Option<&str>,
    span_s_max: i64,
) -> Result<(DateTime<Utc>, DateTime<Utc>), HttpError> {
    let time = |field: &str, v: Option<&str>| -> Result<DateTime<Utc>, HttpError> {
        let example = "RFC 3339, e.g. 2026-12-01T00:00:00Z";
        let text =
            v.ok_or_else(|| bad(field, "invalid_time", "required", format!("is required ({example})")))?;
        let t = DateTime::parse_from_rfc3339(text)
            .map_err(|_| bad(field, "invalid_time", "rfc3339", format!("must be {example}")))?
            .with_timezone(&Utc);
        if !(0..=i64::from(u32::MAX)).contains(&t.timestamp()) {
            return Err(bad(field, "invalid_time", "range", "must be 1970..2106"));
        }
        Ok(t)
    };
    let (from, to) = (time("from", from)?, time("to", to)?);
    if from >= to {
        return Err(bad("to", "invalid_time", "order", "must be after from"));
    }
    if (to - from).num_seconds() > span_s_max {
        return Err(bad(
            "to",
            "invalid_time",
            "span",
            format!("from..to spans at most {} days", span_s_max / 86_400),
        ));
    }
    Ok((from, to))
}

/// What a ranged analytics read states beside its rows.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RangeFrame {
    tenant_id: String,
    environment: Environment,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Every event recorded before this instant is counted; later ones may still arrive.
    complete_through: Option<DateTime<Utc>>,
}

/// The binds of a ranged analytics query ([`fee_revenue_sql`], [`fx_volume_sql`]), in placeholder order:
/// tenant, environment, from s, to s, from ms, to ms, rows.
pub(super) fn range_binds(
    tenant_id: &str,
    environment: Environment,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    rows: u64,
) -> Vec<Bind> {
    vec![
        Bind::Text(tenant_id.to_owned()),
        Bind::Text(environment.as_str().to_owned()),
        Bind::Int(from.timestamp()),
        Bind::Int(to.timestamp()),
        Bind::Int(from.timestamp_millis()),
        Bind::Int(to.timestamp_millis()),
        Bind::Int(i64::try_from(rows).unwrap_or(i64::MAX)),
    ]
}

/// One ranged analytics read over ClickHouse: `sql` (placeholders as [`range_binds`]), the topic its
/// `complete_through` watches, and how the answer is made of the frame, the rows and `truncated`.
struct Ranged<T, Out> {
    sql: String,
    topic: fn(&Topics, Environment) -> String,
    answer: fn(RangeFrame, Vec<T>, bool) -> Out,
}

impl<T, Out: Serialize> Ranged<T, Out> {
    /// The parameters (a 400 before anything else), the key, the range ([`ANALYTICS_RANGE_S_MAX`]) and
    /// `limit` (default and maximum `api.page_rows_max`); then `limit + 1` rows of `sql`, the first
    /// `limit` through `row`, `truncated` when there were more, and `complete_through`.
    async fn run<R>(
        self,
        s: Arc<Api>,
        headers: HeaderMap,
        q: Result<Query<RangeQuery>, QueryRejection>,
        row: impl Fn(R) -> Result<T, HttpError>,
    ) -> Response
    where
        R: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let q = match params(q) {
            Ok(q) => q,
            Err(e) => return e.into_response(),
        };
        let s2 = s.clone();
        let scope = (q.tenant_id.clone(), q.environment);
        guarded_for(&s, &headers, (&scope.0, scope.1), Readers::TenantOrPlatform, async move {
            let (from, to) = range(&q)?;
            let limit = q.limit.map_or(Ok(s2.page_rows_max), |l| page_limit(Some(l), s2.page_rows_max))?;
            let binds = range_binds(&q.tenant_id, q.environment, (from, to), u64::from(limit) + 1);
            let (rows, truncated) = fetch::<R>(&s2, &self.sql, &binds, limit).await?;
            let rows = rows.into_iter().map(row).collect::<Result<Vec<_>, HttpError>>()?;
            let topic = (self.topic)(&kafka::topics(&s2.kafka), q.environment);
            let complete_through = complete_through(&s2.ch, &[topic], s2.kafka.topic_partitions).await?;
            let frame =
                RangeFrame { tenant_id: q.tenant_id, environment: q.environment, from, to, complete_through };
            Ok((self.answer)(frame, rows, truncated))
        })
        .await
    }
}

/// A sum of minor units ClickHouse returned in two parts, put together with checked arithmetic.
pub(super) fn joined(column: &str, hi: i64, lo: i64) -> Result<i64, HttpError> {
    i128::from(hi)
        .checked_mul(i128::from(SUM_SPLIT))
        .and_then(|h| h.checked_add(i128::from(lo)))
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| HttpError::internal(&format!("{column}: the sum does not fit 64 bits")))
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct RevenueRow {
    day: String,
    kind: String,
    currency: String,
    fees: u64,
    fee_hi: i64,
    fee_lo: i64,
}

/// Booked fees of one day, transfer kind and currency.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RevenueDay {
    /// `YYYY-MM-DD` (UTC) of the transfers' completion.
    day: String,
    kind: String,
    currency: String,
    fees: u64,
    /// Integer minor units of `currency`.
    fee_minor: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FeeRevenue {
    /// `complete_through`: every fee recorded before it is counted; later ones may still arrive.
    #[serde(flatten)]
    frame: RangeFrame,
    days: Vec<RevenueDay>,
    /// More rows exist than `limit`.
    truncated: bool,
}

/// The fee revenue query as executed. Placeholders in order: tenant, environment, from s, to s, from ms,
/// to ms, rows (`limit + 1`).
pub(super) fn fee_revenue_sql() -> String {
    format!(
        "SELECT day, kind, currency, toUInt64(count()) AS fees,
                toInt64(sum(intDiv(fee, {SUM_SPLIT}))) AS fee_hi, toInt64(sum(fee % {SUM_SPLIT})) AS fee_lo
         FROM (
             SELECT transfer_id, argMax(status, version) AS st, argMax(kind, version) AS kind,
                    argMax(currency, version) AS currency, argMax(fee_minor, version) AS fee,
                    toString(toDate(argMax(completed_at, version))) AS day
             FROM fee_facts FINAL
             WHERE tenant_id = ? AND environment = ?
               AND completed_at >= toDateTime(?) AND completed_at <= toDateTime(?)
               AND toUInt64(completed_at) * 1000 + completed_ms >= ?
               AND toUInt64(completed_at) * 1000 + completed_ms < ?
             GROUP BY transfer_id)
         WHERE st = 'booked'
         GROUP BY day, kind, currency ORDER BY day, kind, currency LIMIT ?"
    )
}

/// `GET /v1/analytics/fee-revenue?from=&to=[&limit=]`: booked fees (each transfer's latest fee version,
/// if booked) of transfers completed in `[from, to)`, per day × transfer kind × currency.
pub(super) async fn fee_revenue(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Response {
    // FINAL collapses a replay's copies; a fee's state is its highest version.
    let revenue = Ranged {
        sql: fee_revenue_sql(),
        topic: Topics::billing_events,
        answer: |frame, days, truncated| FeeRevenue { frame, days, truncated },
    };
    revenue
        .run(s, headers, q, |r: RevenueRow| {
            Ok(RevenueDay {
                fee_minor: joined("fee_facts.fee_minor", r.fee_hi, r.fee_lo)?,
                day: r.day,
                kind: r.kind,
                currency: r.currency,
                fees: r.fees,
            })
        })
        .await
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct VolumeRow {
    pair: String,
    sell_currency: String,
    buy_currency: String,
    conversions: u64,
    sold_hi: i64,
    sold_lo: i64,
    bought_hi: i64,
    bought_lo: i64,
}

/// Completed conversions of one pair.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PairVolume {
    /// `SELL/BUY`
    pair: String,
    sell_currency: String,
    buy_currency: String,
    conversions: u64,
    /// Integer minor units of `sell_currency`.
    sold_minor: i64,
    /// Integer minor units of `buy_currency`.
    bought_minor: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FxVolume {
    /// `complete_through`: every conversion recorded before it is counted; later ones may still arrive.
    #[serde(flatten)]
    frame: RangeFrame,
    pairs: Vec<PairVolume>,
    /// More rows exist than `limit`.
    truncated: bool,
}

/// The FX volume query as executed. Placeholders in order: tenant, environment, from s, to s, from ms, to
/// ms, rows (`limit + 1`).
pub(super) fn fx_volume_sql() -> String {
    format!(
        "SELECT pair, sell_currency, buy_currency, toUInt64(count()) AS conversions,
                toInt64(sum(intDiv(sell, {SUM_SPLIT}))) AS sold_hi, toInt64(sum(sell % {SUM_SPLIT})) AS sold_lo,
                toInt64(sum(intDiv(buy, {SUM_SPLIT}))) AS bought_hi, toInt64(sum(buy % {SUM_SPLIT})) AS bought_lo
         FROM (
             SELECT id, argMax(status, version) AS st, argMax(pair, version) AS pair,
                    argMax(sell_currency, version) AS sell_currency,
                    argMax(buy_currency, version) AS buy_currency,
                    argMax(sell_minor, version) AS sell, argMax(buy_minor, version) AS buy
             FROM fx_facts FINAL
             WHERE tenant_id = ? AND environment = ? AND fact = 'conversion'
               AND occurred_at >= toDateTime(?) AND occurred_at <= toDateTime(?)
               AND toUInt64(occurred_at) * 1000 + occurred_ms >= ?
               AND toUInt64(occurred_at) * 1000 + occurred_ms < ?
             GROUP BY id)
         WHERE st = 'completed'
         GROUP BY pair, sell_currency, buy_currency ORDER BY pair, sell_currency, buy_currency LIMIT ?"
    )
}

/// `GET /v1/analytics/fx-volume?from=&to=[&limit=]`: conversions completed in `[from, to)` (the time
/// their completion was recorded), per pair: how many, and the sums sold and bought.
pub(super) async fn fx_volume(
    State(s): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Response {
    // `completed` is final: a conversion completed in the range has its highest version there, so the
    // state of the versions recorded in the range is its state.
    let volume = Ranged {
        sql: fx_volume_sql(),
        topic: Topics::fx_events,
        answer: |frame, pairs, truncated| FxVolume { frame, pairs, truncated },
    };
    volume
        .run(s, headers, q, |r: VolumeRow| {
            Ok(PairVolume {
                sold_minor: joined("fx_facts.sell_minor", r.sold_hi, r.sold_lo)?,
                bought_minor: joined("fx_facts.buy_minor", r.bought_hi, r.bought_lo)?,
                pair: r.pair,
                sell_currency: r.sell_currency,
                buy_currency: r.buy_currency,
                conversions: r.conversions,
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_print_exactly() {
        assert_eq!(rate_text(1_092_560_000), "1.09256");
        assert_eq!(rate_text(1_000_000_000), "1");
        assert_eq!(rate_text(1), "0.000000001");
        assert_eq!(rate_text(83_123_456_789), "83.123456789");
        assert_eq!(rate_text(-1_500_000_000), "-1.5");
        assert_eq!(rate_text(i64::MIN), "-9223372036.854775808");
    }

    #[test]
    fn ids_periods_and_cursors_are_checked_naming_the_parameter() {
        assert!(check_id("quote_id", "q-1.a:b_2").is_ok());
        assert!(check_id("quote_id", &"q".repeat(ID_BYTES_MAX)).is_ok());
        for bad_id in ["", "q 1", "q/1", "q\u{0}", "ü"] {
            let e = check_id("quote_id", bad_id).unwrap_err();
            assert_eq!(
                (e.code, e.field.map(|f| f.0)),
                ("invalid_id", Some("quote_id".to_owned())),
                "{bad_id:?}"
            );
        }
        assert!(check_id("quote_id", &"q".repeat(ID_BYTES_MAX + 1)).is_err());
        assert!(check_period("period", "2026-11").is_ok());
        for p in ["2026-13", "2026-00", "2026-1", "202611", "26-11", "2026-11-01", "２０２６-11"] {
            let e = check_period("period", p).unwrap_err();
            assert_eq!((e.code, e.field.map(|f| f.0)), ("invalid_period", Some("period".to_owned())), "{p}");
        }
        assert_eq!(parse_pair_cursor("EUR/USD").expect("pair"), ("EUR".into(), "USD".into()));
        assert_eq!(
            parse_invoice_cursor("2026-11/inv_2026-11").expect("inv"),
            ("2026-11".into(), "inv_2026-11".into())
        );
        let at = DateTime::from_timestamp_micros(1_790_000_000_123_456).expect("time");
        assert_eq!(parse_fee_cursor("1790000000123456_dep_1").expect("fee"), (at, "dep_1".into()));
        for c in ["", "EUR", "EUR/", "XXX/USD", "eur/usd"] {
            assert_eq!(parse_pair_cursor(c).unwrap_err().code, "invalid_cursor", "{c}");
        }
        for c in ["", "2026-11", "2026-13/inv", "2026-11/", "2026-11/a b"] {
            assert_eq!(parse_invoice_cursor(c).unwrap_err().code, "invalid_cursor", "{c}");
        }
        for c in ["", "x_t1", "1790000000123456_", "99999999999999999999_t1", "1_t 1"] {
            let e = parse_fee_cursor(c).unwrap_err();
            assert_eq!((e.code, e.field.map(|f| f.0)), ("invalid_cursor", Some("after".to_owned())), "{c}");
        }
        assert_eq!(page_limit(None, 1000).expect("default"), FX_BILLING_PAGE_ROWS_DEFAULT);
        assert_eq!(page_limit(Some(0), 1000).unwrap_err().field.map(|f| f.0), Some("limit".to_owned()));
    }

    #[test]
    fn analytics_ranges_are_validated_naming_the_field() {
        let q = |from: Option<&str>, to: Option<&str>| RangeQuery {
            tenant_id: "acme".into(),
            environment: Environment::Live,
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            limit: None,
        };
        assert!(range(&q(Some("2026-01-01T00:00:00Z"), Some("2026-12-31T00:00:00+01:00"))).is_ok());
        for (from, to, field) in [
            (None, Some("2026-12-02T00:00:00Z"), "from"),
            (Some("2026-12-01T00:00:00Z"), None, "to"),
            (Some("yesterday"), Some("2026-12-02T00:00:00Z"), "from"),
            (Some("2026-12-02T00:00:00Z"), Some("2026-12-01T00:00:00Z"), "to"),
            (Some("2025-01-01T00:00:00Z"), Some("2026-12-01T00:00:00Z"), "to"),
            (Some("1969-12-31T00:00:00Z"), Some("1970-01-02T00:00:00Z"), "from"),
        ] {
            let e = range(&q(from, to)).unwrap_err();
            assert_eq!(
                (e.code, e.field.map(|f| f.0)),
                ("invalid_time", Some(field.to_owned())),
                "{from:?}..{to:?}"
            );
        }
    }

    #[test]
    fn split_sums_join_exactly_or_refuse() {
        assert_eq!(joined("x", 0, 150).expect("small"), 150);
        assert_eq!(joined("x", 3, 999_999_999).expect("joined"), 3_999_999_999);
        assert_eq!(joined("x", -2, -5).expect("negative"), -2_000_000_005);
        assert_eq!(joined("x", 9_223_372_036, 854_775_807).expect("max"), i64::MAX);
        assert!(joined("x", 9_223_372_036, 854_775_808).is_err());
        assert!(joined("x", i64::MAX, 0).is_err());
    }
}
