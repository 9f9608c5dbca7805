//! `GET /v1/users/{user_id}/personal-data?tenant_id=&environment=[&history=true]`: a data subject's
//! personal data, as ingest sealed it at the edge and the Postgres sink keeps it (`personal_data`).
//!
//! - **What.** The latest value per (data class, JSON pointer) of the subject, or with `history=true`
//!   every value, newest first per (class, pointer); at most `api.page_rows_max` values (`truncated`
//!   says more exist).
//! - **Who sees what.** Each value is opened with the key store (`KeyStore::open_key` and
//!   `riverbank_crypto::field::open`, bound to the stored pointer and record). A key of role
//!   `compliance_officer` or `admin` gets the clear values; any other reading role, and a read without a
//!   key (a trusted network, `api.require_api_key = false`), gets `riverbank_crypto::mask::mask` of each.
//!   A value whose data key was destroyed (`riverbank gdpr erase`) answers `"erased": true` and no value;
//!   one that does not open where it is stored (not sealed for this subject, field and record) answers
//!   `"unreadable": true`.
//! - **Audited before it is served.** Every read states one `personal_data.read` action on
//!   `{env}.audit.actions` (actor `key:<key id>`, resource `user`/`<user id>`, after = `clear` or
//!   `masked` and the classes read, the client's ip and user agent) and waits for the broker before any
//!   value is opened; if it cannot be stated within `ingest.produce_timeout_ms`, the answer is 503 and
//!   nothing is opened or served.
//! - **Scoped.** The key must be the tenant's, for the environment read (`Api::authorize_key`), like
//!   every read; the values are looked up by (tenant, environment, subject) only.
use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use riverbank_crypto::field::{self, FieldContext, SUBJECT_BYTES_MAX};
use riverbank_crypto::keys::DataClass;
use riverbank_crypto::mask::mask;
use riverbank_runtime::config::Config;
use riverbank_runtime::http::{within, HttpError};
use riverbank_runtime::keystore::{key_ring, KeyStore, KeyStoreError, KeyStoreLimits};
use riverbank_schemas::audit::actions;
use riverbank_schemas::roles::Role;
use riverbank_schemas::Environment;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::{database_error, live, Api, Params};

/// The roles that read personal data in clear; every other reading role gets masked values.
pub const CLEAR_ROLES: [Role; 2] = [Role::ComplianceOfficer, Role::Admin];

/// What the personal-data read needs beyond the other reads: the key store, and a producer to state
/// each read on the audit trail.
pub struct PersonalReads {
    keys: KeyStore,
}

impl PersonalReads {
    /// The key store `[keys]` configures, over the API's pool. Nothing connects here (the API starts
    /// while Postgres is down); the key store's table is the key store's to create (ingest creates it
    /// before it seals anything, so a value stored here always has one).
    pub fn new(cfg: &Config, pg: PgPool) -> anyhow::Result<Self> {
        let ring = key_ring(&cfg.keys)?;
        Ok(PersonalReads { keys: KeyStore::new(pg, Arc::new(ring), KeyStoreLimits::from(&cfg.keys)) })
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonalQuery {
    tenant_id: String,
    #[serde(default = "live")]
    environment: Environment,
    /// Every stored value, not only the latest per (class, pointer).
    #[serde(default)]
    history: bool,
}

/// Whether a reader sees clear or masked values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Clear,
    Masked,
}

impl Access {
    /// Clear for a key of a [`CLEAR_ROLES`] role; masked for any other key and without a key.
    pub fn of(role: Option<Role>) -> Access {
        match role {
            Some(r) if CLEAR_ROLES.contains(&r) => Access::Clear,
            _ => Access::Masked,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Access::Clear => "clear",
            Access::Masked => "masked",
        }
    }
}

/// What a reader with `access` is shown of an opened value: ingest sealed the value's JSON text, so the
/// clear form is that JSON value (a string, or an object such as an address); the masked form is
/// `mask(class, text)`, where the text of a string is the string itself and of anything else its JSON.
pub fn shown(access: Access, class: DataClass, opened: &[u8]) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_slice(opened)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(opened).into_owned()));
    match access {
        Access::Clear => value,
        Access::Masked => {
            let text = match &value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            serde_json::Value::String(mask(class, &text))
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct StoredValue {
    data_class: String,
    pointer: String,
    record: String,
    sealed: String,
    provider: String,
    occurred_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PersonalValue {
    data_class: String,
    pointer: String,
    provider: String,
    /// The event the value came with (the webhook's event id).
    record: String,
    occurred_at: DateTime<Utc>,
    /// Clear or masked (see `access`); absent when erased or unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    /// The subject's data key for this class was destroyed: the value is gone for good.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    erased: bool,
    /// The value does not open where it is stored (it was not sealed for this subject, field and record).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unreadable: bool,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PersonalData {
    tenant_id: String,
    environment: Environment,
    user_id: String,
    access: Access,
    values: Vec<PersonalValue>,
    /// More values exist than `api.page_rows_max`.
    truncated: bool,
}

/// The latest value per (class, pointer) of a subject. Placeholders: tenant, environment, subject, rows.
const LATEST_SQL: &str = "SELECT data_class, pointer, record, sealed, provider, occurred_at FROM (
        SELECT DISTINCT ON (data_class, pointer) data_class, pointer, record, sealed, provider, occurred_at,
               event_id
        FROM personal_data WHERE tenant_id = $1 AND environment = $2 AND subject = $3
        ORDER BY data_class, pointer, occurred_at DESC, event_id DESC) latest
    ORDER BY data_class, pointer LIMIT $4";

/// Every value of a subject, newest first per (class, pointer). Placeholders: as [`LATEST_SQL`].
const HISTORY_SQL: &str = "SELECT data_class, pointer, record, sealed, provider, occurred_at
    FROM personal_data WHERE tenant_id = $1 AND environment = $2 AND subject = $3
    ORDER BY data_class, pointer, occurred_at DESC, event_id DESC LIMIT $4";

fn check_subject(user_id: &str) -> Result<(), HttpError> {
    if user_id.is_empty() || user_id.len() > SUBJECT_BYTES_MAX || user_id.chars().any(char::is_control) {
        return Err(HttpError::bad_request(
            "invalid_user_id",
            format!("user_id must be 1..={SUBJECT_BYTES_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

/// The client's address as a trusted proxy states it (`x-forwarded-for`, first hop); the audit
/// processor keeps only its network.
pub async fn read(
    State(s): State<Arc<Api>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    Params(q): Params<PersonalQuery>,
) -> Response {
    let _permit = match s.in_flight.enter() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match within(s.request_timeout, answer(&s, &headers, user_id, q)).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn answer(
    s: &Api,
    headers: &HeaderMap,
    user_id: String,
    q: PersonalQuery,
) -> Result<PersonalData, HttpError> {
    let key = s.authorize_key(headers, &q.tenant_id, q.environment).await?;
    check_subject(&user_id)?;
    let access = Access::of(key.as_ref().map(|k| k.role));
    let actor =
        key.as_ref().map_or_else(|| "system:trusted-network".to_owned(), |k| format!("key:{}", k.key_id));
    let limit = s.page_rows_max;
    let mut rows: Vec<StoredValue> = sqlx::query_as(if q.history { HISTORY_SQL } else { LATEST_SQL })
        .bind(&q.tenant_id)
        .bind(q.environment.as_str())
        .bind(&user_id)
        .bind(i64::from(limit) + 1)
        .fetch_all(&s.pg)
        .await
        .map_err(|e| database_error("postgres", &e))?;
    let truncated = rows.len() > limit as usize;
    rows.truncate(limit as usize);

    // Stated before anything is opened: a decryption nobody can see in the trail never happens.
    let classes: BTreeSet<&str> = rows.iter().map(|r| r.data_class.as_str()).collect();
    let classes: Vec<&str> = classes.into_iter().collect();
    let after = Some(format!("{} classes={}", access.as_str(), classes.join(",")));
    let action = super::audit::request_action(
        headers,
        actor,
        actions::PERSONAL_DATA_READ,
        "user",
        user_id.clone(),
        after,
    );
    super::audit::state_request_action(s, &q.tenant_id, q.environment, action).await?;
    let p = &s.personal;

    let mut values = Vec::with_capacity(rows.len());
    for r in rows {
        let opened = open(&p.keys, (&q.tenant_id, q.environment), &user_id, &r).await?;
        let (value, erased, unreadable) = match opened {
            Opened::Value(class, clear) => (Some(shown(access, class, &clear)), false, false),
            Opened::Erased => (None, true, false),
            Opened::Unreadable => (None, false, true),
        };
        values.push(PersonalValue {
            data_class: r.data_class,
            pointer: r.pointer,
            provider: r.provider,
            record: r.record,
            occurred_at: r.occurred_at,
            value,
            erased,
            unreadable,
        });
    }
    Ok(PersonalData {
        tenant_id: q.tenant_id,
        environment: q.environment,
        user_id,
        access,
        values,
        truncated,
    })
}

enum Opened {
    Value(DataClass, Vec<u8>),
    Erased,
    Unreadable,
}

/// Open one stored value with its subject's data key, bound to where it is stored. The clear bytes are
/// never logged.
async fn open(
    keys: &KeyStore,
    (tenant, env): (&str, Environment),
    subject: &str,
    r: &StoredValue,
) -> Result<Opened, HttpError> {
    let Some(sealed) = field::parse(&r.sealed) else { return Ok(Opened::Unreadable) };
    if sealed.subject != subject || sealed.class.as_str() != r.data_class {
        return Ok(Opened::Unreadable);
    }
    let dek = match keys.open_key(tenant, env, &sealed.key_id).await {
        Ok(dek) => dek,
        Err(KeyStoreError::Erased) => return Ok(Opened::Erased),
        Err(KeyStoreError::Unknown | KeyStoreError::Invalid(_) | KeyStoreError::Crypto(_)) => {
            return Ok(Opened::Unreadable)
        }
        Err(e @ (KeyStoreError::Db(_) | KeyStoreError::Corrupt(_) | KeyStoreError::Contended)) => {
            return Err(database_error("key store", &e))
        }
    };
    let ctx =
        FieldContext { tenant, environment: env.as_str(), subject, field: &r.pointer, record: &r.record };
    Ok(match field::open(&dek, &ctx, &r.sealed) {
        Ok(clear) => Opened::Value(sealed.class, clear),
        Err(_) => Opened::Unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_compliance_officers_and_admins_read_in_clear() {
        assert_eq!(Access::of(Some(Role::ComplianceOfficer)), Access::Clear);
        assert_eq!(Access::of(Some(Role::Admin)), Access::Clear);
        for role in [Role::Viewer, Role::Operator, Role::Auditor, Role::RatesPublisher] {
            assert_eq!(Access::of(Some(role)), Access::Masked, "{role:?}");
        }
        assert_eq!(Access::of(None), Access::Masked, "a trusted network without keys reads masked");
    }

    #[test]
    fn what_each_access_is_shown() {
        let pan = br#""ABCDE1234F""#;
        assert_eq!(shown(Access::Clear, DataClass::PII_NATIONAL_ID, pan), serde_json::json!("ABCDE1234F"));
        assert_eq!(shown(Access::Masked, DataClass::PII_NATIONAL_ID, pan), serde_json::json!("***234F"));
        let name = br#""Ada Lovelace""#;
        assert_eq!(shown(Access::Masked, DataClass::PII_NAME, name), serde_json::json!("A. L."));
        // An object (an address) is shown whole in clear, and masked as its class masks any text.
        let address = br#"{"line1":"12 Analytical Row","city":"London"}"#;
        assert_eq!(
            shown(Access::Clear, DataClass::PII_ADDRESS, address),
            serde_json::json!({"line1": "12 Analytical Row", "city": "London"})
        );
        assert_eq!(shown(Access::Masked, DataClass::PII_ADDRESS, address), serde_json::json!("***"));
        // A number's text is masked like a string of its digits; nothing of a masked value is in clear.
        let account = b"770012349988123";
        let masked = shown(Access::Masked, DataClass::FINANCIAL_BANK_ACCOUNT, account);
        assert_eq!(masked, serde_json::json!("***8123"));
        assert!(!masked.to_string().contains("77001234"));
    }
}
