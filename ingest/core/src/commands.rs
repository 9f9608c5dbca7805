//! Tenant API commands: decode a request body, validate it (amount > 0, known currency, precision,
//! well-formed ids), and say which event it becomes, on which topic, and which roles may send it.
//! Errors name the field and the rule, so a 4xx tells the caller exactly what to fix.
use chrono::{DateTime, Utc};
use riverbank_schemas::commands::{
    command_types as ct, parse_rate_e9, FeeConfigUpserted, FeeTier, FxConversionRequested, FxQuoteRequested,
    FxRate, FxRatesPublished, KycReviewDecided, KycUserActionRequested, ReviewDecision,
};
use riverbank_schemas::money::AMOUNT_MINOR_MAX;
use riverbank_schemas::risk::RiskReviewDecided;
use riverbank_schemas::transfers::{
    input_types as it, Counterparty, ExternalRef, TransferAction, TransferDecision, TransferRequested,
};
use riverbank_schemas::{Currency, Money, MoneyError, TransferKind};

pub use riverbank_schemas::commands::KycUserAction;
pub use riverbank_schemas::roles::Role;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest reason text, in bytes.
pub const REASON_BYTES_MAX: usize = 500;
/// Most rates in one publication.
pub const RATES_PER_REQUEST_MAX: usize = 500;
/// Most fee tiers in one config.
pub const FEE_TIERS_MAX: usize = 16;

/// Which stream a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Transfers,
    Fx,
    /// Rates: reference data on `fx.rates`, broadcast to FX and risk.
    FxRates,
    Billing,
    Kyc,
    Risk,
    /// Actions stated for the audit trail (`audit.action_taken` on `{env}.audit.actions`): consents.
    Audit,
}

/// One endpoint of the command API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    CreateTransfer,
    ApproveTransfer,
    RejectTransfer,
    CancelTransfer,
    FxQuote,
    FxConversion,
    FxRates,
    /// The OTC approval of a conversion above the tenant's threshold.
    FxConversionDecision,
    FeeConfig,
    /// The tenant's subscription plan.
    BillingPlan,
    KycUser(KycUserAction),
    KycReviewDecision,
    RiskReviewDecision,
    /// A user's consent granted or revoked (`POST /v1/users/{id}/consents`), with when and from where.
    Consent,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 16] = [
        Endpoint::CreateTransfer,
        Endpoint::ApproveTransfer,
        Endpoint::RejectTransfer,
        Endpoint::CancelTransfer,
        Endpoint::FxQuote,
        Endpoint::FxConversion,
        Endpoint::FxRates,
        Endpoint::FxConversionDecision,
        Endpoint::FeeConfig,
        Endpoint::BillingPlan,
        Endpoint::KycUser(KycUserAction::Freeze),
        Endpoint::KycUser(KycUserAction::Unfreeze),
        Endpoint::KycUser(KycUserAction::Close),
        Endpoint::KycReviewDecision,
        Endpoint::RiskReviewDecision,
        Endpoint::Consent,
    ];

    /// Roles allowed to call this endpoint.
    pub fn roles(self) -> &'static [Role] {
        use Endpoint::*;
        match self {
            CreateTransfer | CancelTransfer | FxQuote | FxConversion | Consent => {
                &[Role::Operator, Role::Admin]
            }
            ApproveTransfer | RejectTransfer | FeeConfig | BillingPlan | FxConversionDecision
            | KycUser(_) | KycReviewDecision => &[Role::Admin],
            FxRates => &[Role::RatesPublisher, Role::Admin],
            RiskReviewDecision => &[Role::ComplianceOfficer],
        }
    }

    pub fn name(self) -> &'static str {
        use Endpoint::*;
        match self {
            CreateTransfer => "create_transfer",
            ApproveTransfer => "approve_transfer",
            RejectTransfer => "reject_transfer",
            CancelTransfer => "cancel_transfer",
            FxQuote => "fx_quote",
            FxConversion => "fx_conversion",
            FxRates => "fx_rates",
            FxConversionDecision => "fx_conversion_decision",
            BillingPlan => "billing_plan",
            FeeConfig => "fee_config",
            KycUser(KycUserAction::Freeze) => "kyc_freeze",
            KycUser(KycUserAction::Unfreeze) => "kyc_unfreeze",
            KycUser(KycUserAction::Close) => "kyc_close",
            KycReviewDecision => "kyc_review_decision",
            RiskReviewDecision => "risk_review_decision",
            Consent => "consent",
        }
    }

    /// The JSON schema of this endpoint's request body (for the edge's OpenAPI document).
    pub fn body_schema(self, gen: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        use Endpoint::*;
        match self {
            CreateTransfer => gen.subschema_for::<CreateTransferBody>(),
            RiskReviewDecision => gen.subschema_for::<RiskReviewBody>(),
            ApproveTransfer | RejectTransfer | CancelTransfer => gen.subschema_for::<ReasonBody>(),
            FxQuote => gen.subschema_for::<FxQuoteBody>(),
            FxConversion => gen.subschema_for::<FxConversionBody>(),
            FxRates => gen.subschema_for::<FxRatesBody>(),
            FxConversionDecision => gen.subschema_for::<DecisionBody>(),
            BillingPlan => gen.subschema_for::<BillingPlanBody>(),
            FeeConfig => gen.subschema_for::<FeeConfigBody>(),
            KycUser(_) => gen.subschema_for::<RequiredReasonBody>(),
            KycReviewDecision => gen.subschema_for::<ReviewBody>(),
            Consent => gen.subschema_for::<ConsentBody>(),
        }
    }
}

/// A validated command, ready to wrap in an envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub event_type: &'static str,
    pub stream: Stream,
    /// Keeps one entity's commands in order (a transfer, a quote, a user, a case).
    pub entity_key: String,
    pub payload: serde_json::Value,
}

/// A 4xx answer naming the field and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub rule: &'static str,
    pub message: String,
}

fn invalid(field: &str, rule: &'static str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_owned(), rule, message: message.into() }
}

/// Ids: 1–64 of ASCII letters, digits, `_`, `-`, `.`, `:`.
pub fn check_id(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "id_format", "must be 1-64 of ASCII letters, digits, '_', '-', '.', ':'"))
    }
}

fn check_reason(field: &str, value: &str) -> Result<(), FieldError> {
    if value.len() > REASON_BYTES_MAX || value.chars().any(char::is_control) {
        return Err(invalid(field, "text_format", "must be at most 500 bytes, without control characters"));
    }
    Ok(())
}

fn currency(field: &str, code: &str) -> Result<Currency, FieldError> {
    Currency::from_code(code)
        .map_err(|_| invalid(field, "known_currency", format!("'{code}' is not a known currency")))
}

/// A positive amount in major units ("250.00") of `currency`, within its precision and at most
/// [`AMOUNT_MINOR_MAX`] minor units.
fn amount(field: &str, text: &str, currency: Currency) -> Result<Money, FieldError> {
    let too_large = || {
        let max = Money::new(AMOUNT_MINOR_MAX, currency).to_major_string();
        invalid(field, "max", format!("must be at most {max} {currency} ({AMOUNT_MINOR_MAX} minor units)"))
    };
    let m = Money::parse_major(text, currency).map_err(|e| match e {
        MoneyError::TooPrecise { .. } => invalid(field, "precision", e.to_string()),
        // Past 64 bits is past the cap too.
        MoneyError::Overflow if !text.starts_with('-') => too_large(),
        MoneyError::Overflow => invalid(field, "positive", "must be greater than 0"),
        _ => invalid(field, "decimal", format!("'{text}' is not a decimal amount like \"12.34\"")),
    })?;
    if m.amount_minor <= 0 {
        return Err(invalid(field, "positive", "must be greater than 0"));
    }
    if !m.within_max() {
        return Err(too_large());
    }
    Ok(m)
}

/// An amount that may be zero (fees).
fn non_negative_amount(field: &str, text: &str, currency: Currency) -> Result<Money, FieldError> {
    match amount(field, text, currency) {
        Err(e)
            if e.rule == "positive"
                && Money::parse_major(text, currency).is_ok_and(|m| m.amount_minor == 0) =>
        {
            Ok(Money::zero(currency))
        }
        r => r,
    }
}

fn bps(field: &str, v: u32) -> Result<u32, FieldError> {
    if v > 10_000 {
        return Err(invalid(field, "range", "basis points are 0-10000"));
    }
    Ok(v)
}

/// Decode JSON into `T`, naming the field that failed.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        let (field, rule) = if let Some(f) = backticked(&msg, "unknown field `") {
            (f, "unknown_field")
        } else if let Some(f) = backticked(&msg, "missing field `") {
            (if path == "." { f } else { format!("{path}.{f}") }, "required")
        } else if inner.is_syntax() || inner.is_eof() {
            ("body".to_owned(), "json")
        } else {
            (if path == "." { "body".to_owned() } else { path }, "type")
        };
        FieldError { field, rule, message: msg }
    })
}

fn backticked(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.split(prefix).nth(1)?;
    Some(rest.split('`').next()?.to_owned())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateTransferBody {
    transfer_id: String,
    kind: TransferKind,
    amount: String,
    currency: String,
    #[serde(default)]
    source_account: Option<String>,
    #[serde(default)]
    destination_account: Option<String>,
    /// The end user whose money moves (pseudonymous id, as the KYC vendors know them).
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    counterparty: Option<CounterpartyBody>,
    /// The provider executing it (a provider definition's name) and its reference for the transfer.
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    provider_reference: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct CounterpartyBody {
    #[serde(default)]
    id: Option<String>,
    /// Personal data: never leaves the edge; it becomes keyed digests (`risk::name_keys`).
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    country: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/users/{id}/consents`: what the user consented to (or withdrew), and the user's own client
/// as the tenant saw it (the user's address is cut to its network before anything is produced).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ConsentBody {
    purpose: String,
    granted: bool,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RequiredReasonBody {
    reason: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct FxQuoteBody {
    quote_id: String,
    sell_currency: String,
    buy_currency: String,
    #[serde(default)]
    sell_amount: Option<String>,
    #[serde(default)]
    buy_amount: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct FxConversionBody {
    conversion_id: String,
    quote_id: String,
    source_account: String,
    #[serde(default)]
    destination_account: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: ReviewDecision,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct BillingPlanBody {
    plan: String,
    fee: String,
    currency: String,
    #[serde(default)]
    effective_from: Option<DateTime<Utc>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct FxRateBody {
    base: String,
    quote: String,
    rate: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct FxRatesBody {
    as_of: DateTime<Utc>,
    rates: Vec<FxRateBody>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct FeeTierBody {
    monthly_volume_from: String,
    bps: u32,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct FeeConfigBody {
    currency: String,
    fixed: String,
    bps: u32,
    #[serde(default)]
    min: Option<String>,
    #[serde(default)]
    max: Option<String>,
    #[serde(default)]
    tiers: Vec<FeeTierBody>,
    #[serde(default)]
    pricing: Option<String>,
    #[serde(default)]
    effective_from: Option<DateTime<Utc>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    decision: ReviewDecision,
    #[serde(default)]
    tier: Option<u8>,
    #[serde(default)]
    reason: Option<String>,
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_else(|e| unreachable!("command payloads serialize: {e}"))
}

/// Decode and validate one request. `path_id` is the `{id}` of the route (transfer, fee kind, user,
/// case); `actor` is who acts (from the API key, or `x-user-id`).
///
/// `name_key` is the deployment's key for counterparty name digests (`risk::name_keys`).
pub fn decode(
    endpoint: Endpoint,
    path_id: Option<&str>,
    body: &[u8],
    actor: &str,
    name_key: &[u8],
) -> Result<Command, FieldError> {
    use Endpoint::*;
    match endpoint {
        CreateTransfer => decode_create_transfer(body, actor, name_key),
        RiskReviewDecision => decode_risk_review(path_id, body, actor),
        ApproveTransfer => decode_transfer_decision(it::APPROVED, path_id, body, actor),
        RejectTransfer => decode_transfer_decision(it::APPROVAL_REJECTED, path_id, body, actor),
        CancelTransfer => decode_cancel_transfer(path_id, body, actor),
        FxQuote => decode_fx_quote(body, actor),
        FxConversion => decode_fx_conversion(body, actor),
        FxRates => decode_fx_rates(body, actor),
        FxConversionDecision => decode_fx_conversion_decision(path_id, body, actor),
        BillingPlan => decode_billing_plan(body, actor),
        FeeConfig => decode_fee_config(path_id, body, actor),
        KycUser(action) => decode_kyc_user(action, path_id, body, actor),
        KycReviewDecision => decode_kyc_review(path_id, body, actor),
        Consent => decode_consent(path_id, body),
    }
}

/// The route's `{id}`, checked as `field`.
fn path(path_id: Option<&str>, field: &str) -> Result<String, FieldError> {
    let id = path_id.ok_or_else(|| invalid(field, "required", "missing from the path"))?;
    check_id(field, id)?;
    Ok(id.to_owned())
}

/// Longest counterparty name, in bytes.
pub const NAME_BYTES_MAX: usize = 200;

fn decode_create_transfer(body: &[u8], actor: &str, name_key: &[u8]) -> Result<Command, FieldError> {
    let b: CreateTransferBody = json(body)?;
    check_id("transfer_id", &b.transfer_id)?;
    let cur = currency("currency", &b.currency)?;
    let amount = amount("amount", &b.amount, cur)?;
    check_accounts(&b)?;
    if let Some(u) = &b.user_id {
        check_id("user_id", u)?;
    }
    let counterparty = b.counterparty.as_ref().map(|c| counterparty(c, name_key)).transpose()?;
    let external_ref = match (&b.provider, &b.provider_reference) {
        (None, None) => None,
        (Some(p), Some(r)) => {
            check_id("provider", p)?;
            check_reference("provider_reference", r)?;
            Some(ExternalRef { provider: p.clone(), reference: r.clone() })
        }
        (Some(_), None) => return Err(invalid("provider_reference", "required", "given with provider")),
        (None, Some(_)) => return Err(invalid("provider", "required", "given with provider_reference")),
    };
    let payload = TransferRequested {
        transfer_id: b.transfer_id.clone(),
        kind: b.kind,
        amount,
        source_account: b.source_account,
        destination_account: b.destination_account,
        requested_by: actor.to_owned(),
        user_id: b.user_id,
        counterparty,
        external_ref,
    };
    Ok(Command {
        event_type: it::REQUESTED,
        stream: Stream::Transfers,
        entity_key: b.transfer_id,
        payload: to_value(&payload),
    })
}

/// A transfer's accounts: well-formed, never `external`, present exactly when its kind needs them,
/// and distinct for an internal transfer.
fn check_accounts(b: &CreateTransferBody) -> Result<(), FieldError> {
    for (field, v) in [("source_account", &b.source_account), ("destination_account", &b.destination_account)]
    {
        if let Some(v) = v {
            check_id(field, v)?;
            if v == "external" {
                return Err(invalid(
                    field,
                    "not_external",
                    "'external' is the outside world, not an account",
                ));
            }
        }
    }
    let (needs_source, needs_destination) = match b.kind {
        TransferKind::Deposit => (false, true),
        TransferKind::Withdrawal | TransferKind::Payout => (true, false),
        TransferKind::Internal => (true, true),
    };
    for (field, needed, v) in [
        ("source_account", needs_source, &b.source_account),
        ("destination_account", needs_destination, &b.destination_account),
    ] {
        if needed && v.is_none() {
            return Err(invalid(field, "required", format!("a {} needs it", b.kind.as_str())));
        }
        if !needed && v.is_some() {
            return Err(invalid(field, "not_allowed", format!("a {} has none", b.kind.as_str())));
        }
    }
    if b.kind == TransferKind::Internal && b.source_account == b.destination_account {
        return Err(invalid("destination_account", "distinct", "must differ from source_account"));
    }
    Ok(())
}

/// A provider's reference: 1-128 printable ASCII characters without spaces (ids, hashes).
pub fn check_reference(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            field,
            "reference_format",
            "must be 1-128 printable ASCII characters, no spaces",
        ));
    }
    Ok(())
}

fn counterparty(c: &CounterpartyBody, name_key: &[u8]) -> Result<Counterparty, FieldError> {
    if let Some(id) = &c.id {
        check_reference("counterparty.id", id)?;
    }
    if let Some(country) = &c.country {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                "counterparty.country",
                "country_code",
                "must be ISO 3166-1 alpha-2, like \"DE\"",
            ));
        }
    }
    let mut name_keys = Vec::new();
    if let Some(name) = &c.name {
        if name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
            return Err(invalid(
                "counterparty.name",
                "text_format",
                "must be at most 200 bytes, without control characters",
            ));
        }
        name_keys = riverbank_schemas::risk::name_keys(name_key, name);
        if name_keys.is_empty() {
            return Err(invalid("counterparty.name", "name_format", "must contain a letter or a digit"));
        }
    }
    Ok(Counterparty { id: c.id.clone(), country: c.country.clone(), name_keys })
}

/// A compliance officer's decision on a transfer risk scoring held for review.
fn decode_risk_review(path_id: Option<&str>, body: &[u8], actor: &str) -> Result<Command, FieldError> {
    let transfer_id = path(path_id, "transfer_id")?;
    let b: RiskReviewBody = json(body)?;
    check_reason("reason", &b.reason)?;
    let payload = RiskReviewDecided {
        transfer_id: transfer_id.clone(),
        decision: b.decision,
        reason: b.reason,
        actor: actor.to_owned(),
    };
    Ok(Command {
        event_type: riverbank_schemas::risk::RISK_REVIEW_DECIDED,
        stream: Stream::Risk,
        entity_key: transfer_id,
        payload: to_value(&payload),
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RiskReviewBody {
    decision: ReviewDecision,
    reason: String,
}

/// Approve or reject (`event_type`) a transfer awaiting approval.
fn decode_transfer_decision(
    event_type: &'static str,
    path_id: Option<&str>,
    body: &[u8],
    actor: &str,
) -> Result<Command, FieldError> {
    let transfer_id = path(path_id, "transfer_id")?;
    let b: ReasonBody = json(body)?;
    if let Some(r) = &b.reason {
        check_reason("reason", r)?;
    }
    let payload =
        TransferDecision { transfer_id: transfer_id.clone(), actor: actor.to_owned(), reason: b.reason };
    Ok(Command {
        event_type,
        stream: Stream::Transfers,
        entity_key: transfer_id,
        payload: to_value(&payload),
    })
}

fn decode_cancel_transfer(path_id: Option<&str>, body: &[u8], actor: &str) -> Result<Command, FieldError> {
    let transfer_id = path(path_id, "transfer_id")?;
    let b: ReasonBody = json(body)?;
    if let Some(r) = &b.reason {
        check_reason("reason", r)?;
    }
    let payload = TransferAction { transfer_id: transfer_id.clone(), actor: actor.to_owned() };
    Ok(Command {
        event_type: it::CANCEL_REQUESTED,
        stream: Stream::Transfers,
        entity_key: transfer_id,
        payload: to_value(&payload),
    })
}

fn decode_fx_quote(body: &[u8], actor: &str) -> Result<Command, FieldError> {
    let b: FxQuoteBody = json(body)?;
    check_id("quote_id", &b.quote_id)?;
    let sell = currency("sell_currency", &b.sell_currency)?;
    let buy = currency("buy_currency", &b.buy_currency)?;
    if sell == buy {
        return Err(invalid("buy_currency", "distinct", "must differ from sell_currency"));
    }
    let (sell_amount, buy_amount) = match (&b.sell_amount, &b.buy_amount) {
        (Some(s), None) => (Some(amount("sell_amount", s, sell)?), None),
        (None, Some(v)) => (None, Some(amount("buy_amount", v, buy)?)),
        _ => {
            return Err(invalid(
                "sell_amount",
                "exactly_one",
                "give exactly one of sell_amount or buy_amount",
            ))
        }
    };
    let payload = FxQuoteRequested {
        quote_id: b.quote_id.clone(),
        sell_currency: sell,
        buy_currency: buy,
        sell_amount,
        buy_amount,
        requested_by: actor.to_owned(),
    };
    Ok(Command {
        event_type: ct::FX_QUOTE_REQUESTED,
        stream: Stream::Fx,
        entity_key: b.quote_id,
        payload: to_value(&payload),
    })
}

fn decode_fx_conversion(body: &[u8], actor: &str) -> Result<Command, FieldError> {
    let b: FxConversionBody = json(body)?;
    check_id("conversion_id", &b.conversion_id)?;
    check_id("quote_id", &b.quote_id)?;
    tenant_account("source_account", &b.source_account)?;
    if let Some(d) = &b.destination_account {
        tenant_account("destination_account", d)?;
    }
    let payload = FxConversionRequested {
        conversion_id: b.conversion_id,
        quote_id: b.quote_id.clone(),
        source_account: b.source_account,
        destination_account: b.destination_account,
        requested_by: actor.to_owned(),
    };
    Ok(Command {
        event_type: ct::FX_CONVERSION_REQUESTED,
        stream: Stream::Fx,
        // Keyed by quote: a conversion follows its quote.
        entity_key: b.quote_id,
        payload: to_value(&payload),
    })
}

/// A tenant's own account: an id, not `external`, not one of the platform's (`fx:…`, `billing:…`).
fn tenant_account(field: &str, v: &str) -> Result<(), FieldError> {
    check_id(field, v)?;
    if v == "external" {
        return Err(invalid(field, "not_external", "'external' is the outside world, not an account"));
    }
    if riverbank_schemas::ledger::is_platform_account(v) {
        return Err(invalid(
            field,
            "not_platform",
            "accounts starting with 'fx:' or 'billing:' are the platform's",
        ));
    }
    Ok(())
}

fn decode_fx_conversion_decision(
    path_id: Option<&str>,
    body: &[u8],
    actor: &str,
) -> Result<Command, FieldError> {
    let conversion_id = path(path_id, "conversion_id")?;
    let b: DecisionBody = json(body)?;
    if let Some(r) = &b.reason {
        check_reason("reason", r)?;
    }
    let payload = riverbank_schemas::fx::FxConversionDecided {
        conversion_id: conversion_id.clone(),
        decision: b.decision,
        actor: actor.to_owned(),
        reason: b.reason,
    };
    Ok(Command {
        event_type: ct::FX_CONVERSION_DECIDED,
        stream: Stream::Fx,
        entity_key: conversion_id,
        payload: to_value(&payload),
    })
}

fn decode_billing_plan(body: &[u8], actor: &str) -> Result<Command, FieldError> {
    let b: BillingPlanBody = json(body)?;
    check_id("plan", &b.plan)?;
    let cur = currency("currency", &b.currency)?;
    let fee = non_negative_amount("fee", &b.fee, cur)?;
    if let Some(at) = b.effective_from {
        event_time("effective_from", at)?;
    }
    let payload = riverbank_schemas::billing::BillingPlanSet {
        plan: b.plan,
        fee,
        effective_from: b.effective_from,
        changed_by: actor.to_owned(),
    };
    Ok(Command {
        event_type: ct::BILLING_PLAN_SET,
        stream: Stream::Billing,
        entity_key: "plan".to_owned(),
        payload: to_value(&payload),
    })
}

/// An instant a command states (`as_of`, `effective_from`): inside the accepted event-time range.
fn event_time(field: &str, at: DateTime<Utc>) -> Result<(), FieldError> {
    if crate::event_time::in_range(at) {
        return Ok(());
    }
    Err(invalid(field, "range", format!("must be within {}", crate::event_time::EVENT_TIME_RANGE)))
}

fn decode_fx_rates(body: &[u8], actor: &str) -> Result<Command, FieldError> {
    let b: FxRatesBody = json(body)?;
    event_time("as_of", b.as_of)?;
    if b.rates.is_empty() || b.rates.len() > RATES_PER_REQUEST_MAX {
        return Err(invalid("rates", "count", "give 1-500 rates"));
    }
    let mut rates = Vec::with_capacity(b.rates.len());
    for (i, r) in b.rates.iter().enumerate() {
        let base = currency(&format!("rates[{i}].base"), &r.base)?;
        let quote = currency(&format!("rates[{i}].quote"), &r.quote)?;
        if base == quote {
            return Err(invalid(&format!("rates[{i}].quote"), "distinct", "must differ from base"));
        }
        let rate_e9 = parse_rate_e9(&r.rate).ok_or_else(|| {
            invalid(
                &format!("rates[{i}].rate"),
                "decimal",
                "a positive decimal with at most 9 places, e.g. \"1.0845\"",
            )
        })?;
        rates.push(FxRate { base, quote, rate_e9 });
    }
    let payload = FxRatesPublished { as_of: b.as_of, rates, published_by: actor.to_owned() };
    Ok(Command {
        event_type: ct::FX_RATES_PUBLISHED,
        stream: Stream::FxRates,
        entity_key: "rates".to_owned(),
        payload: to_value(&payload),
    })
}

fn decode_fee_config(path_id: Option<&str>, body: &[u8], actor: &str) -> Result<Command, FieldError> {
    let kind_text = path(path_id, "transfer_kind")?;
    let kind: TransferKind = serde_json::from_value(serde_json::Value::String(kind_text.clone()))
        .map_err(|_| invalid("transfer_kind", "one_of", "deposit, withdrawal, internal or payout"))?;
    let b: FeeConfigBody = json(body)?;
    let cur = currency("currency", &b.currency)?;
    let fixed = non_negative_amount("fixed", &b.fixed, cur)?;
    let base_bps = bps("bps", b.bps)?;
    let min = b.min.as_deref().map(|t| non_negative_amount("min", t, cur)).transpose()?;
    let max = b.max.as_deref().map(|t| amount("max", t, cur)).transpose()?;
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo.amount_minor > hi.amount_minor {
            return Err(invalid("min", "at_most_max", "must not exceed max"));
        }
    }
    let tiers = fee_tiers(&b.tiers, cur)?;
    let pricing = match b.pricing.as_deref() {
        None | Some("volume") => riverbank_schemas::billing::TierPricing::Volume,
        Some("graduated") => riverbank_schemas::billing::TierPricing::Graduated,
        Some(_) => return Err(invalid("pricing", "one_of", "volume or graduated")),
    };
    if let Some(at) = b.effective_from {
        event_time("effective_from", at)?;
    }
    let payload = FeeConfigUpserted {
        transfer_kind: kind,
        fixed,
        bps: base_bps,
        min,
        max,
        tiers,
        pricing,
        effective_from: b.effective_from,
        changed_by: actor.to_owned(),
    };
    Ok(Command {
        event_type: ct::FEE_CONFIG_UPSERTED,
        stream: Stream::Billing,
        entity_key: kind_text,
        payload: to_value(&payload),
    })
}

/// At most [`FEE_TIERS_MAX`] tiers in `cur`, strictly ascending by monthly volume.
fn fee_tiers(tiers: &[FeeTierBody], cur: Currency) -> Result<Vec<FeeTier>, FieldError> {
    if tiers.len() > FEE_TIERS_MAX {
        return Err(invalid("tiers", "count", "at most 16 tiers"));
    }
    let mut out = Vec::with_capacity(tiers.len());
    for (i, t) in tiers.iter().enumerate() {
        let from =
            non_negative_amount(&format!("tiers[{i}].monthly_volume_from"), &t.monthly_volume_from, cur)?;
        if out.last().is_some_and(|prev: &FeeTier| prev.monthly_volume_from.amount_minor >= from.amount_minor)
        {
            return Err(invalid(
                &format!("tiers[{i}].monthly_volume_from"),
                "ascending",
                "tiers must ascend",
            ));
        }
        out.push(FeeTier { monthly_volume_from: from, bps: bps(&format!("tiers[{i}].bps"), t.bps)? });
    }
    Ok(out)
}

fn decode_kyc_user(
    action: KycUserAction,
    path_id: Option<&str>,
    body: &[u8],
    actor: &str,
) -> Result<Command, FieldError> {
    let user_id = path(path_id, "user_id")?;
    let b: RequiredReasonBody = json(body)?;
    check_reason("reason", &b.reason)?;
    if b.reason.trim().is_empty() {
        return Err(invalid("reason", "required", "say why"));
    }
    let payload = KycUserActionRequested {
        user_id: user_id.clone(),
        action,
        reason: b.reason,
        actor: actor.to_owned(),
    };
    Ok(Command {
        event_type: ct::KYC_USER_ACTION_REQUESTED,
        stream: Stream::Kyc,
        entity_key: user_id,
        payload: to_value(&payload),
    })
}

/// A consent becomes an audit action of the user (`consent.granted` / `consent.revoked`), resource
/// `consent` `{user}/{purpose}`; its time is the command's.
fn decode_consent(path_id: Option<&str>, body: &[u8]) -> Result<Command, FieldError> {
    use riverbank_schemas::audit::{actions, cut_user_agent, truncate_ip, AuditAction};
    let user_id = path(path_id, "user_id")?;
    let b: ConsentBody = json(body)?;
    check_id("purpose", &b.purpose)?;
    let ip = match &b.ip {
        Some(ip) => {
            Some(truncate_ip(ip).ok_or_else(|| invalid("ip", "format", "must be an IPv4 or IPv6 address"))?)
        }
        None => None,
    };
    let payload = AuditAction {
        actor: format!("user:{user_id}"),
        action: if b.granted { actions::CONSENT_GRANTED } else { actions::CONSENT_REVOKED }.to_owned(),
        resource_type: "consent".to_owned(),
        resource_id: format!("{user_id}/{}", b.purpose),
        before: None,
        after: Some(if b.granted { "granted" } else { "revoked" }.to_owned()),
        ip,
        user_agent: b.user_agent.as_deref().map(cut_user_agent),
        request_id: None,
    };
    Ok(Command {
        event_type: AuditAction::EVENT_TYPE,
        stream: Stream::Audit,
        entity_key: user_id,
        payload: to_value(&payload),
    })
}

fn decode_kyc_review(path_id: Option<&str>, body: &[u8], actor: &str) -> Result<Command, FieldError> {
    let case_id = path(path_id, "case_id")?;
    let b: ReviewBody = json(body)?;
    if let Some(r) = &b.reason {
        check_reason("reason", r)?;
    }
    match (b.decision, b.tier) {
        (_, Some(t)) if t > 3 => return Err(invalid("tier", "range", "KYC tiers are 0-3")),
        (ReviewDecision::Rejected, Some(_)) => {
            return Err(invalid("tier", "not_allowed", "a rejection grants no tier"))
        }
        _ => {}
    }
    let payload = KycReviewDecided {
        case_id: case_id.clone(),
        decision: b.decision,
        tier: b.tier,
        reason: b.reason,
        actor: actor.to_owned(),
    };
    Ok(Command {
        event_type: ct::KYC_REVIEW_DECIDED,
        stream: Stream::Kyc,
        entity_key: case_id,
        payload: to_value(&payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(endpoint: Endpoint, path: Option<&str>, body: &str) -> (String, &'static str) {
        let e = decode(endpoint, path, body.as_bytes(), "user:u1", b"k").expect_err(body);
        (e.field, e.rule)
    }

    #[test]
    fn a_valid_transfer_becomes_transfer_requested() {
        let c = decode(
            Endpoint::CreateTransfer,
            None,
            br#"{"transfer_id":"tr_1","kind":"payout","amount":"250.00","currency":"USD","source_account":"acct_a"}"#,
            "user:u1",
            b"k",
        )
        .expect("valid");
        assert_eq!(c.event_type, "transfer.requested");
        assert_eq!(c.stream, Stream::Transfers);
        assert_eq!(c.entity_key, "tr_1");
        assert_eq!(c.payload["amount"]["amount_minor"], 25000);
        assert_eq!(c.payload["requested_by"], "user:u1");
    }

    #[test]
    fn validation_errors_name_the_field_and_the_rule() {
        use Endpoint::*;
        let t = |rest: &str| format!(r#"{{"transfer_id":"tr_1","kind":"deposit",{rest}}}"#);
        let cases: Vec<(Endpoint, Option<&str>, String, &str, &str)> = vec![
            (
                CreateTransfer,
                None,
                t(r#""amount":"0","currency":"USD","destination_account":"a""#),
                "amount",
                "positive",
            ),
            (
                CreateTransfer,
                None,
                t(r#""amount":"-5","currency":"USD","destination_account":"a""#),
                "amount",
                "positive",
            ),
            (
                CreateTransfer,
                None,
                t(r#""amount":"1.234","currency":"USD","destination_account":"a""#),
                "amount",
                "precision",
            ),
            (
                CreateTransfer,
                None,
                t(r#""amount":"1","currency":"XXX","destination_account":"a""#),
                "currency",
                "known_currency",
            ),
            (
                CreateTransfer,
                None,
                t(r#""amount":"1e3","currency":"USD","destination_account":"a""#),
                "amount",
                "decimal",
            ),
            (CreateTransfer, None, t(r#""amount":"1","currency":"USD""#), "destination_account", "required"),
            (
                CreateTransfer,
                None,
                t(r#""amount":"1","currency":"USD","destination_account":"a b""#),
                "destination_account",
                "id_format",
            ),
            (
                CreateTransfer,
                None,
                t(r#""amount":"1","currency":"USD","destination_account":"a","x":1"#),
                "x",
                "unknown_field",
            ),
            (
                CreateTransfer,
                None,
                r#"{"kind":"deposit","amount":"1","currency":"USD"}"#.to_owned(),
                "transfer_id",
                "required",
            ),
            (
                CreateTransfer,
                None,
                t(r#""amount":1,"currency":"USD","destination_account":"a""#),
                "amount",
                "type",
            ),
            (CreateTransfer, None, "{not json".to_owned(), "body", "json"),
            (ApproveTransfer, Some("bad id!"), "{}".to_owned(), "transfer_id", "id_format"),
            (
                FxQuote,
                None,
                r#"{"quote_id":"q","sell_currency":"USD","buy_currency":"USD","sell_amount":"1"}"#.to_owned(),
                "buy_currency",
                "distinct",
            ),
            (
                FxQuote,
                None,
                r#"{"quote_id":"q","sell_currency":"USD","buy_currency":"EUR"}"#.to_owned(),
                "sell_amount",
                "exactly_one",
            ),
            (
                FxConversion,
                None,
                r#"{"conversion_id":"c","quote_id":"q","source_account":"fx:desk"}"#.to_owned(),
                "source_account",
                "not_platform",
            ),
            (
                FxConversion,
                None,
                r#"{"conversion_id":"c","quote_id":"q","source_account":"a","destination_account":"external"}"#
                    .to_owned(),
                "destination_account",
                "not_external",
            ),
            (
                FeeConfig,
                Some("payout"),
                r#"{"currency":"USD","fixed":"0","bps":25,"pricing":"tiered"}"#.to_owned(),
                "pricing",
                "one_of",
            ),
            (BillingPlan, None, r#"{"plan":"p","fee":"-1","currency":"USD"}"#.to_owned(), "fee", "positive"),
            (
                FxQuote,
                None,
                r#"{"quote_id":"q","sell_currency":"JPY","buy_currency":"EUR","sell_amount":"1.5"}"#
                    .to_owned(),
                "sell_amount",
                "precision",
            ),
            (
                FxRates,
                None,
                r#"{"as_of":"2026-11-22T07:00:00Z","rates":[{"base":"EUR","quote":"USD","rate":"-1"}]}"#
                    .to_owned(),
                "rates[0].rate",
                "decimal",
            ),
            (FxRates, None, r#"{"as_of":"2026-11-22T07:00:00Z","rates":[]}"#.to_owned(), "rates", "count"),
            (
                FxRates,
                None,
                r#"{"as_of":"1969-12-31T23:59:59Z","rates":[{"base":"EUR","quote":"USD","rate":"1"}]}"#
                    .to_owned(),
                "as_of",
                "range",
            ),
            (
                FxRates,
                None,
                r#"{"as_of":"2100-01-01T00:00:00Z","rates":[{"base":"EUR","quote":"USD","rate":"1"}]}"#
                    .to_owned(),
                "as_of",
                "range",
            ),
            (
                FeeConfig,
                Some("payout"),
                r#"{"currency":"USD","fixed":"0.30","bps":20000}"#.to_owned(),
                "bps",
                "range",
            ),
            (
                FeeConfig,
                Some("payout"),
                r#"{"currency":"USD","fixed":"0.30","bps":20,"min":"5","max":"1"}"#.to_owned(),
                "min",
                "at_most_max",
            ),
            (
                FeeConfig,
                Some("lunch"),
                r#"{"currency":"USD","fixed":"0.30","bps":20}"#.to_owned(),
                "transfer_kind",
                "one_of",
            ),
            (KycUser(KycUserAction::Freeze), Some("usr_1"), "{}".to_owned(), "reason", "required"),
            (
                KycReviewDecision,
                Some("case_1"),
                r#"{"decision":"approved","tier":4}"#.to_owned(),
                "tier",
                "range",
            ),
            (KycReviewDecision, Some("case_1"), r#"{"decision":"maybe"}"#.to_owned(), "decision", "type"),
        ];
        for (endpoint, path, body, field, rule) in cases {
            assert_eq!(err(endpoint, path, &body), (field.to_owned(), rule), "{body}");
        }
    }

    #[test]
    fn amounts_above_the_cap_are_refused_with_rule_max() {
        use Endpoint::*;
        let transfer = |amount: &str, currency: &str| {
            format!(
                r#"{{"transfer_id":"tr_1","kind":"deposit","amount":"{amount}","currency":"{currency}","destination_account":"a"}}"#
            )
        };
        // 10^15 minor units: 10^13 USD, 10^15 JPY, 10^7 BTC, 10^12 BHD.
        let at_cap = [
            ("10000000000000.00", "USD"),
            ("1000000000000000", "JPY"),
            ("10000000", "BTC"),
            ("1000000000000", "BHD"),
        ];
        for (text, cur) in at_cap {
            let c = decode(CreateTransfer, None, transfer(text, cur).as_bytes(), "user:u1", b"k")
                .unwrap_or_else(|e| panic!("{text} {cur}: {e}"));
            assert_eq!(c.payload["amount"]["amount_minor"], AMOUNT_MINOR_MAX, "{text} {cur}");
        }
        let above = [
            ("10000000000000.01", "USD"),
            ("1000000000000001", "JPY"),
            ("10000000.00000001", "BTC"),
            ("9223372036854775807", "JPY"),
            ("99999999999999999999", "USD"),
        ];
        for (text, cur) in above {
            assert_eq!(
                err(CreateTransfer, None, &transfer(text, cur)),
                ("amount".to_owned(), "max"),
                "{text}"
            );
        }
        let e = decode(CreateTransfer, None, transfer("10000000000000.01", "USD").as_bytes(), "u", b"k")
            .expect_err("above the cap");
        assert!(e.message.contains("10000000000000.00 USD"), "the message says the limit: {}", e.message);
        // Every amount a command carries: quotes and fee configs too.
        let cases = [
            (
                FxQuote,
                None,
                r#"{"quote_id":"q","sell_currency":"JPY","buy_currency":"EUR","sell_amount":"1000000000000001"}"#,
                "sell_amount",
            ),
            (
                FxQuote,
                None,
                r#"{"quote_id":"q","sell_currency":"JPY","buy_currency":"EUR","buy_amount":"10000000000000.01"}"#,
                "buy_amount",
            ),
            (FeeConfig, Some("payout"), r#"{"currency":"USD","fixed":"10000000000000.01","bps":1}"#, "fixed"),
            (
                FeeConfig,
                Some("payout"),
                r#"{"currency":"USD","fixed":"0","bps":1,"min":"10000000000001"}"#,
                "min",
            ),
            (
                FeeConfig,
                Some("payout"),
                r#"{"currency":"USD","fixed":"0","bps":1,"max":"10000000000001"}"#,
                "max",
            ),
            (
                FeeConfig,
                Some("payout"),
                r#"{"currency":"USD","fixed":"0","bps":1,"tiers":[{"monthly_volume_from":"10000000000001","bps":1}]}"#,
                "tiers[0].monthly_volume_from",
            ),
        ];
        for (endpoint, path, body, field) in cases {
            assert_eq!(err(endpoint, path, body), (field.to_owned(), "max"), "{body}");
        }
    }

    #[test]
    fn every_endpoint_accepts_a_well_formed_request() {
        use Endpoint::*;
        let ok: Vec<(Endpoint, Option<&str>, &str, &str)> = vec![
            (ApproveTransfer, Some("tr_1"), r#"{"reason":"checked"}"#, "transfer.approved"),
            (RejectTransfer, Some("tr_1"), "", "transfer.approval_rejected"),
            (CancelTransfer, Some("tr_1"), "{}", "transfer.cancel_requested"),
            (
                FxQuote,
                None,
                r#"{"quote_id":"q1","sell_currency":"USD","buy_currency":"EUR","buy_amount":"100"}"#,
                "fx.quote_requested",
            ),
            (
                FxConversion,
                None,
                r#"{"conversion_id":"c1","quote_id":"q1","source_account":"acct_1"}"#,
                "fx.conversion_requested",
            ),
            (FxConversionDecision, Some("c1"), r#"{"decision":"approved"}"#, "fx.conversion_decided"),
            (
                BillingPlan,
                None,
                r#"{"plan":"growth","fee":"99.00","currency":"USD","effective_from":"2026-11-01T00:00:00Z"}"#,
                "billing.plan_set",
            ),
            (
                FxRates,
                None,
                r#"{"as_of":"2026-11-22T07:00:00Z","rates":[{"base":"EUR","quote":"USD","rate":"1.0845"}]}"#,
                "fx.rates_published",
            ),
            (
                FeeConfig,
                Some("payout"),
                r#"{"currency":"USD","fixed":"0","bps":25,"min":"0.50","max":"25","tiers":[{"monthly_volume_from":"0","bps":25},{"monthly_volume_from":"100000","bps":15}]}"#,
                "billing.fee_config_upserted",
            ),
            (
                KycUser(KycUserAction::Close),
                Some("usr_1"),
                r#"{"reason":"customer request"}"#,
                "kyc.user_action_requested",
            ),
            (KycReviewDecision, Some("case_1"), r#"{"decision":"approved","tier":2}"#, "kyc.review_decided"),
            (
                RiskReviewDecision,
                Some("tr_1"),
                r#"{"decision":"rejected","reason":"mule pattern"}"#,
                "risk.review_decided",
            ),
        ];
        for (endpoint, path, body, event_type) in ok {
            let c = decode(endpoint, path, body.as_bytes(), "key:k1", b"k")
                .unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(c.event_type, event_type);
        }
    }

    #[test]
    fn roles_gate_endpoints() {
        assert!(!Endpoint::CreateTransfer.roles().contains(&Role::Viewer));
        assert!(!Endpoint::ApproveTransfer.roles().contains(&Role::Operator));
        assert!(Endpoint::FxRates.roles().contains(&Role::RatesPublisher));
        assert!(!Endpoint::CreateTransfer.roles().contains(&Role::RatesPublisher));
        for r in [Role::Viewer, Role::Operator, Role::Admin, Role::RatesPublisher, Role::ComplianceOfficer] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Endpoint::RiskReviewDecision.roles(), [Role::ComplianceOfficer]);
        assert!(!Endpoint::Consent.roles().contains(&Role::Auditor));
    }

    #[test]
    fn a_consent_is_an_audit_action_with_the_users_network_only() {
        let body = br#"{"purpose":"marketing","granted":true,"ip":"203.0.113.77","user_agent":"Mobile/1.0"}"#;
        let c = decode(Endpoint::Consent, Some("usr_1"), body, "key:k1", b"k").expect("decodes");
        assert_eq!(
            (c.event_type, c.stream, c.entity_key.as_str()),
            ("audit.action_taken", Stream::Audit, "usr_1")
        );
        assert_eq!(c.payload["action"], "consent.granted");
        assert_eq!(c.payload["resource_id"], "usr_1/marketing");
        assert_eq!(c.payload["ip"], "203.0.113.0/24");
        assert!(!c.payload.to_string().contains("203.0.113.77"));
        let revoked = decode(
            Endpoint::Consent,
            Some("usr_1"),
            br#"{"purpose":"marketing","granted":false}"#,
            "a",
            b"k",
        )
        .expect("decodes");
        assert_eq!(revoked.payload["action"], "consent.revoked");
        let bad = decode(
            Endpoint::Consent,
            Some("usr_1"),
            br#"{"purpose":"m","granted":true,"ip":"nope"}"#,
            "a",
            b"k",
        );
        assert!(matches!(bad, Err(e) if e.field == "ip"));
    }

    #[test]
    fn a_counterparty_name_never_leaves_the_edge_and_ids_refs_and_countries_are_checked() {
        let body = r#"{"transfer_id":"tr_1","kind":"payout","amount":"5.00","currency":"USD","source_account":"acct_a",
            "user_id":"usr_1","counterparty":{"id":"payee-9","name":"Iván Petrov","country":"DE"},
            "provider":"acmepay","provider_reference":"po_123"}"#;
        let c =
            decode(Endpoint::CreateTransfer, None, body.as_bytes(), "user:u1", b"edge-key").expect("valid");
        let text = c.payload.to_string();
        assert!(!text.contains("Petrov") && !text.contains("Iv"), "{text}");
        assert_eq!(c.payload["user_id"], "usr_1");
        assert_eq!(c.payload["external_ref"]["reference"], "po_123");
        let keys = riverbank_schemas::risk::name_keys(b"edge-key", "PETROV, Ivan");
        assert_eq!(c.payload["counterparty"]["name_keys"], serde_json::json!(keys));
        let base = r#""transfer_id":"tr_1","kind":"payout","amount":"5.00","currency":"USD","source_account":"acct_a""#;
        for (extra, field, rule) in [
            (r#""counterparty":{"country":"Germany"}"#, "counterparty.country", "country_code"),
            (r#""counterparty":{"name":"--"}"#, "counterparty.name", "name_format"),
            (r#""counterparty":{"id":"has space"}"#, "counterparty.id", "reference_format"),
            (r#""provider":"acmepay""#, "provider_reference", "required"),
            (r#""provider_reference":"x""#, "provider", "required"),
            (r#""user_id":"no spaces please""#, "user_id", "id_format"),
        ] {
            let got = err(Endpoint::CreateTransfer, None, &format!("{{{base},{extra}}}"));
            assert_eq!(got, (field.to_owned(), rule), "{extra}");
        }
        assert_eq!(
            err(Endpoint::RiskReviewDecision, Some("tr_1"), r#"{"decision":"approved"}"#).1,
            "required"
        );
    }
}
