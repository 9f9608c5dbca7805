//! A definition's `[transfers]`: which of its mapped event types are transfer status callbacks, what
//! each means, and which of its `[fields]` hold the transfer's values. Resolved here, at the edge, into
//! `WebhookReceived.transfer_callback` (a typed `TransferCallback`), so the transfers processor needs
//! no provider-specific code and never sees a definition.
//!
//! ```toml
//! [transfers]
//! reference = "reference"                 # field names from [fields]
//! amount = "amount"                       # decimal major units ("250.00"), with `currency`
//! currency = "currency"
//! destination_account = "destination_account"   # for a created deposit
//! user_id = "user_id"                     # for a created deposit (optional)
//! reason = "failure_code"                 # optional
//!
//! [transfers.callbacks]
//! "deposit.received" = { status = "received", kind = "deposit", creates_deposit = true }
//! "deposit.completed" = { status = "completed", kind = "deposit" }
//! ```
//!
//! A callback whose values cannot be resolved (no reference, an amount that is not a decimal at the
//! currency's precision, an unknown currency) still becomes a callback, with the reasons in its
//! `problems`: the delivery is authentic, so it is accepted (202) and the processor rejects it with
//! those reasons (`transfer.input_rejected`), never silently and never as a 4xx to the provider.
use std::collections::BTreeMap;

use riverbank_schemas::money::AMOUNT_MINOR_MAX;
use riverbank_schemas::transfers::{CallbackStatus, TransferCallback, TransferKind};
use riverbank_schemas::{Currency, Money};
use serde::Deserialize;

use super::FieldSpec;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransfersSpec {
    /// The field holding the provider's reference for the transfer (required).
    pub reference: String,
    /// The field holding the amount in decimal major units; declared together with `currency`.
    #[serde(default)]
    pub amount: Option<String>,
    /// The field holding the currency code (ISO 4217 or a token riverbank knows).
    #[serde(default)]
    pub currency: Option<String>,
    /// The field holding the account a created deposit credits (required when a callback creates).
    #[serde(default)]
    pub destination_account: Option<String>,
    /// The field holding the end user of a created deposit.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The field holding the provider's failure or status code.
    #[serde(default)]
    pub reason: Option<String>,
    /// Mapped riverbank event type → what it means.
    pub callbacks: BTreeMap<String, CallbackSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSpec {
    pub status: CallbackStatus,
    /// The kind of transfer it is about; a callback for a transfer of another kind is rejected.
    #[serde(default)]
    pub kind: Option<TransferKind>,
    /// A `received` callback for an unknown reference creates a deposit.
    #[serde(default)]
    pub creates_deposit: bool,
}

impl TransfersSpec {
    /// Validate against the definition's fields and mapped types.
    pub fn validate(
        &self,
        fields: &BTreeMap<String, FieldSpec>,
        mapped_types: &std::collections::BTreeSet<&str>,
    ) -> Result<(), String> {
        let named = [
            ("reference", Some(&self.reference)),
            ("amount", self.amount.as_ref()),
            ("currency", self.currency.as_ref()),
            ("destination_account", self.destination_account.as_ref()),
            ("user_id", self.user_id.as_ref()),
            ("reason", self.reason.as_ref()),
        ];
        for (what, field) in named {
            if let Some(f) = field {
                if !fields.contains_key(f) {
                    return Err(format!(
                        "transfers.{what} names field '{f}', which [fields] does not declare"
                    ));
                }
            }
        }
        if self.amount.is_some() != self.currency.is_some() {
            return Err("transfers.amount and transfers.currency go together".to_owned());
        }
        if self.callbacks.is_empty() {
            return Err("transfers.callbacks declares no callback".to_owned());
        }
        for (event_type, cb) in &self.callbacks {
            let at = format!("transfers.callbacks.'{event_type}'");
            if !mapped_types.contains(event_type.as_str()) {
                return Err(format!("{at}: no provider type maps to '{event_type}' in event.types"));
            }
            if cb.creates_deposit {
                if cb.status != CallbackStatus::Received {
                    return Err(format!("{at}: only a 'received' callback may create a deposit"));
                }
                if cb.kind.is_some_and(|k| k != TransferKind::Deposit) {
                    return Err(format!("{at}: creates_deposit needs kind = \"deposit\""));
                }
                if self.amount.is_none() || self.destination_account.is_none() {
                    return Err(format!(
                        "{at}: a created deposit needs transfers.amount, transfers.currency and transfers.destination_account"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The callback a delivery of `event_type` is, if any: its values from the extracted `fields`, and
    /// why any named value could not be used (`problems`, in declaration order).
    pub fn resolve(
        &self,
        event_type: &str,
        fields: &BTreeMap<String, String>,
        problems: &BTreeMap<String, String>,
        specs: &BTreeMap<String, FieldSpec>,
    ) -> Option<TransferCallback> {
        let cb = self.callbacks.get(event_type)?;
        let mut out = Vec::new();
        // A named field's value; `required` adds a problem when it has none.
        let mut value = |what: &str, field: Option<&String>, required: bool| -> Option<String> {
            let f = field?;
            if let Some(v) = fields.get(f) {
                return Some(v.clone());
            }
            if let Some(why) = problems.get(f) {
                out.push(format!("{what}: {why}"));
            } else if required {
                let from = specs
                    .get(f)
                    .map(|s| s.0.iter().map(|src| src.pointer.as_str()).collect::<Vec<_>>().join(" or "))
                    .unwrap_or_default();
                out.push(format!("{what} is missing (field '{f}': {from})"));
            }
            None
        };
        let reference = value("reference", Some(&self.reference), true);
        let amount_text = value("amount", self.amount.as_ref(), true);
        let currency_text = value("currency", self.currency.as_ref(), true);
        let destination_account =
            value("destination_account", self.destination_account.as_ref(), cb.creates_deposit);
        let user_id = value("user_id", self.user_id.as_ref(), false);
        let reason = value("reason", self.reason.as_ref(), false);
        let amount = match (amount_text, currency_text) {
            (Some(a), Some(c)) => match parse_amount(&a, &c) {
                Ok(m) => Some(m),
                Err(why) => {
                    out.push(why);
                    None
                }
            },
            _ => None,
        };
        Some(TransferCallback {
            status: cb.status,
            kind: cb.kind,
            creates_deposit: cb.creates_deposit,
            reference,
            amount,
            destination_account,
            user_id,
            reason,
            problems: out,
        })
    }
}

/// A positive amount in decimal major units at the currency's precision, at most `AMOUNT_MINOR_MAX`.
pub fn parse_amount(text: &str, currency: &str) -> Result<Money, String> {
    let currency = Currency::from_code(currency).map_err(|e| format!("currency: {e}"))?;
    let m = Money::parse_major(text, currency).map_err(|e| format!("amount: {e}"))?;
    if m.amount_minor <= 0 {
        return Err(format!("amount: '{text}' is not greater than zero"));
    }
    if m.amount_minor > AMOUNT_MINOR_MAX {
        return Err(format!(
            "amount: '{text}' {} is above the largest amount riverbank takes",
            currency.code()
        ));
    }
    Ok(m)
}
