//! Topic names. Every topic is per environment: live and sandbox never share one.

use crate::Environment;

/// Topic names under an optional prefix (a deployment or test namespace, e.g. `acme.` or `t123.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic `base` in `env`, under the prefix.
    pub fn name(&self, env: Environment, base: &str) -> String {
        format!("{}{}.{}", self.prefix, env.as_str(), base)
    }

    /// Verified provider webhooks.
    pub fn ingest_webhooks(&self, env: Environment) -> String {
        self.name(env, "ingest.webhooks")
    }

    /// Audit records (the platform's `audit.events.log`).
    pub fn audit_events(&self, env: Environment) -> String {
        self.name(env, "audit.events.log")
    }

    /// Actions performed outside the processors, stated by the component that performed them
    /// (`audit.action_taken`: API keys, redrives, decrypted reads, exports, erasures, rewraps,
    /// consents); the audit processor chains them with everything else.
    pub fn audit_actions(&self, env: Environment) -> String {
        self.name(env, "audit.actions")
    }

    /// Transfer status events (the platform's `transactions.update.status`).
    pub fn transfer_status(&self, env: Environment) -> String {
        self.name(env, "transactions.update.status")
    }

    /// Every input of the transfers processor: commands, provider callbacks, risk decisions, policies.
    pub fn transfer_inputs(&self, env: Environment) -> String {
        self.name(env, "transfers.inputs")
    }

    /// Inputs the transfers processor refused, with the reason.
    pub fn transfer_rejections(&self, env: Environment) -> String {
        self.name(env, "transfers.rejections")
    }

    /// Double-entry ledger postings.
    pub fn ledger_postings(&self, env: Environment) -> String {
        self.name(env, "ledger.postings")
    }

    /// Account balances after each change.
    pub fn balances(&self, env: Environment) -> String {
        self.name(env, "ledger.balances")
    }

    /// Processor state checkpoints (snapshots and deltas), one partition per input partition.
    pub fn checkpoints(&self, env: Environment, processor: &str) -> String {
        self.name(env, &format!("checkpoints.{processor}"))
    }

    /// Inputs that could not be processed, with the reason.
    pub fn dead_letters(&self, env: Environment) -> String {
        self.name(env, "deadletter")
    }

    /// FX commands from tenants and rate publishers (quotes, conversions, rates).
    pub fn fx_commands(&self, env: Environment) -> String {
        self.name(env, "fx.commands")
    }

    /// FX rates (`fx.rates_published`), reference data broadcast to FX and risk: rates publishers' and
    /// (republished by the FX processor) rates providers' webhooks.
    pub fn fx_rates(&self, env: Environment) -> String {
        self.name(env, "fx.rates")
    }

    /// What the FX processor decides: quotes, conversions, refused inputs.
    pub fn fx_events(&self, env: Environment) -> String {
        self.name(env, "fx.events")
    }

    /// The ledger's answers to bookings (`ledger.booking_recorded`), keyed by tenant.
    pub fn ledger_bookings(&self, env: Environment) -> String {
        self.name(env, "ledger.bookings")
    }

    /// What the billing processor decides: fees, invoices, refused inputs.
    pub fn billing_events(&self, env: Environment) -> String {
        self.name(env, "billing.events")
    }

    /// Billing commands (fee configuration, plans).
    pub fn billing_commands(&self, env: Environment) -> String {
        self.name(env, "billing.commands")
    }

    /// KYC admin commands and mapped KYC provider results.
    pub fn kyc_commands(&self, env: Environment) -> String {
        self.name(env, "kyc.commands")
    }

    /// What the KYC processor decides: `user.*` events and its refused inputs (`kyc.input_rejected`).
    pub fn kyc_events(&self, env: Environment) -> String {
        self.name(env, "kyc.events")
    }

    /// Screening requests: the transfers processor's `transfer.screening_requested`, one per transfer that
    /// reaches COMPLIANCE_CHECK, with what risk scoring needs to decide.
    pub fn transfer_screening(&self, env: Environment) -> String {
        self.name(env, "transfers.screening")
    }

    /// Commands to risk scoring, keyed by tenant: manual review decisions.
    pub fn risk_commands(&self, env: Environment) -> String {
        self.name(env, "risk.commands")
    }

    /// Reference data for risk scoring, broadcast to every partition: rule sets and sanctions lists.
    pub fn risk_reference(&self, env: Environment) -> String {
        self.name(env, "risk.reference")
    }

    /// Explained risk decisions (live and shadow), review queue changes and refused risk inputs.
    pub fn risk_decisions(&self, env: Environment) -> String {
        self.name(env, "risk.decisions")
    }

    /// A processor's log (its one input, which its router fills): `{processor}.inputs`.
    pub fn log(&self, env: Environment, processor: &str) -> String {
        self.name(env, &format!("{processor}.inputs"))
    }

    /// Closed volume windows (the runtime's worked example, `processors/src/volume.rs`).
    pub fn volume_windows(&self, env: Environment) -> String {
        self.name(env, "volume.windows")
    }

    /// Every topic riverbank owns in one environment.
    pub fn all(&self, env: Environment) -> Vec<String> {
        vec![
            self.ingest_webhooks(env),
            self.audit_events(env),
            self.audit_actions(env),
            self.transfer_status(env),
            self.transfer_inputs(env),
            self.transfer_rejections(env),
            self.ledger_postings(env),
            self.balances(env),
            self.dead_letters(env),
            self.fx_commands(env),
            self.fx_rates(env),
            self.fx_events(env),
            self.ledger_bookings(env),
            self.billing_commands(env),
            self.billing_events(env),
            self.kyc_commands(env),
            self.kyc_events(env),
            self.transfer_screening(env),
            self.risk_commands(env),
            self.risk_reference(env),
            self.risk_decisions(env),
        ]
    }

    /// The environment a topic belongs to, if it is one of ours.
    pub fn environment_of(&self, topic: &str) -> Option<Environment> {
        let rest = topic.strip_prefix(&self.prefix)?;
        Environment::ALL
            .into_iter()
            .find(|env| rest.strip_prefix(env.as_str()).is_some_and(|r| r.starts_with('.')))
    }

    /// The processor whose outputs `topic` carries and that processor's inputs; `None` for topics
    /// ingest writes (or none of ours). The sinks' complete-through watermark follows this chain.
    pub fn upstream(&self, topic: &str) -> Option<(&'static str, Vec<String>)> {
        let env = self.environment_of(topic)?;
        if topic == self.audit_events(env) {
            return Some(("audit", vec![self.log(env, "audit")]));
        }
        let transfers = [
            self.transfer_status(env),
            self.transfer_rejections(env),
            self.ledger_postings(env),
            self.balances(env),
            self.transfer_screening(env),
            self.ledger_bookings(env),
        ];
        if transfers.iter().any(|t| t == topic) {
            return Some(("transfers", vec![self.transfer_inputs(env)]));
        }
        // Routed processors: their log (the watermark adds the router's hop, `router_sources`).
        if topic == self.kyc_events(env) {
            return Some(("kyc", vec![self.log(env, "kyc")]));
        }
        if topic == self.risk_decisions(env) {
            return Some(("risk", vec![self.log(env, "risk")]));
        }
        // fx.rates: ingest writes rates publishers' directly; the FX processor republishes providers'.
        if topic == self.fx_events(env) || topic == self.fx_rates(env) {
            return Some(("fx", vec![self.log(env, "fx")]));
        }
        if topic == self.billing_events(env) {
            return Some(("billing", vec![self.log(env, "billing")]));
        }
        None
    }

    /// The topics the router of `processor` copies into its log (routed and broadcast), empty for a
    /// processor without a router. The sinks' complete-through follows this second hop (sources → log,
    /// the router's group) as well as the first (log → outputs, the processor's group); the registry
    /// test keeps it equal to every processor's `Spec`.
    pub fn router_sources(&self, env: Environment, processor: &str) -> Vec<String> {
        match processor {
            "audit" => vec![
                self.ingest_webhooks(env),
                self.transfer_status(env),
                self.transfer_rejections(env),
                self.risk_decisions(env),
                self.kyc_events(env),
                self.fx_events(env),
                self.billing_events(env),
                self.audit_actions(env),
            ],
            // Provider transfer callbacks; ingest writes commands to the log directly.
            "transfers" => vec![self.ingest_webhooks(env)],
            "kyc" => vec![self.ingest_webhooks(env), self.kyc_commands(env)],
            "risk" => vec![
                self.transfer_screening(env),
                self.kyc_events(env),
                self.risk_commands(env),
                self.risk_reference(env),
                self.fx_rates(env),
            ],
            "fx" => vec![
                self.fx_commands(env),
                self.ledger_bookings(env),
                self.ingest_webhooks(env),
                self.fx_rates(env),
            ],
            "billing" => {
                vec![self.billing_commands(env), self.transfer_status(env), self.ledger_bookings(env)]
            }
            "volume" => vec![self.transfer_status(env), self.transfer_rejections(env), self.fx_rates(env)],
            _ => vec![],
        }
    }

    /// A consumer group id for a component, scoped by the prefix.
    pub fn group(&self, component: &str) -> String {
        format!("{}riverbank.{}", self.prefix, component)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_never_share_a_topic() {
        let t = Topics::new("x.");
        let live = t.all(Environment::Live);
        let sandbox = t.all(Environment::Sandbox);
        for name in &live {
            assert!(!sandbox.contains(name), "{name} shared");
            assert_eq!(t.environment_of(name), Some(Environment::Live));
        }
        for name in &sandbox {
            assert_eq!(t.environment_of(name), Some(Environment::Sandbox));
        }
        assert_eq!(t.audit_events(Environment::Live), "x.live.audit.events.log");
        assert_eq!(t.environment_of("y.live.audit.events.log"), None);
        assert_eq!(t.environment_of("x.livex.audit"), None);
    }
}
