//! The webhook key index, built once at start-up: provider definitions (built-in and from
//! `ingest.providers_dir`) and every configured tenant's keys per (provider, environment), checked
//! against the provider's scheme. A request verifies against a slice of it; the key that verifies
//! decides the tenant.
use std::collections::{BTreeMap, HashMap};

use riverbank_ingest_core::provider::{self, ProviderDef};
use riverbank_ingest_core::schemes::Key;
use riverbank_runtime::config::Config;
use riverbank_schemas::Environment;

/// Why ingest cannot start: a webhook entry or a provider definition is unusable.
#[derive(Debug, thiserror::Error)]
pub enum IngestSetupError {
    #[error(
        "ingest.webhooks[{index}]: provider '{provider}' has no definition (built-in or in providers_dir)"
    )]
    UnknownProvider { index: usize, provider: String },
    #[error("ingest.webhooks[{index}].secrets[{secret}]: {message}")]
    Secret { index: usize, secret: usize, message: &'static str },
    #[error("ingest.webhooks[{index}]: environment {env} is not in kafka.environments")]
    Environment { index: usize, env: Environment },
    #[error(transparent)]
    Definition(#[from] provider::DefinitionError),
    #[error("ingest.webhooks[{index}]: a secret of {provider} is also tenant {other}'s; the verifying secret decides the tenant, so tenants never share one")]
    SharedSecret { index: usize, provider: String, other: String },
    #[error("ingest.providers_dir {dir}: {error}")]
    ProvidersDir { dir: String, error: std::io::Error },
}

/// Every tenant's keys for one provider in one environment, in config order, and the same per tenant
/// (so a request verifies against a slice, without copying keys).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// `tenants[i]` owns `all[i]`.
    pub all: Vec<Key>,
    pub tenants: Vec<String>,
    pub by_tenant: HashMap<String, Vec<Key>>,
}

/// Who owns the key that verified: the route's tenant, or the tenant at the key's index.
pub enum Owner<'a> {
    Tenant(&'a str),
    ByIndex(&'a [String]),
}

impl<'a> Owner<'a> {
    pub fn of(&self, key_index: usize) -> Option<&'a str> {
        match self {
            Owner::Tenant(t) => Some(t),
            Owner::ByIndex(tenants) => tenants.get(key_index).map(String::as_str),
        }
    }
}

impl KeySet {
    /// The keys to try: one tenant's, or every tenant's; and who owns them.
    pub fn candidates<'a>(&'a self, tenant: Option<&'a str>) -> (&'a [Key], Owner<'a>) {
        match tenant {
            Some(t) => (self.by_tenant.get(t).map(Vec::as_slice).unwrap_or(&[]), Owner::Tenant(t)),
            None => (&self.all, Owner::ByIndex(&self.tenants)),
        }
    }
}

/// Provider definitions: the built-ins plus every `*.toml` in `dir` (when set).
pub fn load_providers(dir: &str) -> Result<BTreeMap<String, ProviderDef>, IngestSetupError> {
    let mut extra = Vec::new();
    if !dir.is_empty() {
        let err = |error| IngestSetupError::ProvidersDir { dir: dir.to_owned(), error };
        let mut paths: Vec<_> =
            std::fs::read_dir(dir).map_err(err)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths.into_iter().filter(|p| p.extension().is_some_and(|x| x == "toml")) {
            let text = std::fs::read_to_string(&p).map_err(err)?;
            extra.push((p.display().to_string(), text));
        }
    }
    Ok(provider::load(&extra)?)
}

/// The provider definitions and every configured webhook key, validated: each entry names a defined
/// provider and a served environment, and each secret parses for that provider's scheme.
#[allow(clippy::type_complexity)]
pub fn webhook_keys(
    cfg: &Config,
) -> Result<(BTreeMap<String, ProviderDef>, HashMap<(String, Environment), KeySet>), IngestSetupError> {
    let providers = load_providers(&cfg.ingest.providers_dir)?;
    let mut keys: HashMap<(String, Environment), KeySet> = HashMap::new();
    let mut owners: HashMap<(String, Environment, String), String> = HashMap::new();
    for (index, w) in cfg.ingest.webhooks.iter().enumerate() {
        if !cfg.kafka.environments.contains(&w.environment) {
            return Err(IngestSetupError::Environment { index, env: w.environment });
        }
        let def = providers
            .get(&w.provider)
            .ok_or_else(|| IngestSetupError::UnknownProvider { index, provider: w.provider.clone() })?;
        let entry = keys.entry((w.provider.clone(), w.environment)).or_default();
        for s in &w.secrets {
            if let Some(other) =
                owners.insert((w.provider.clone(), w.environment, s.expose().clone()), w.tenant_id.clone())
            {
                if other != w.tenant_id {
                    return Err(IngestSetupError::SharedSecret {
                        index,
                        provider: w.provider.clone(),
                        other,
                    });
                }
            }
        }
        for (secret, s) in w.secrets.iter().enumerate() {
            let key = def.signature.key(s.expose()).map_err(|e| IngestSetupError::Secret {
                index,
                secret,
                message: e.0,
            })?;
            entry.all.push(key.clone());
            entry.tenants.push(w.tenant_id.clone());
            entry.by_tenant.entry(w.tenant_id.clone()).or_default().push(key);
        }
    }
    Ok((providers, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use riverbank_runtime::config::WebhookSecretConfig;
    use riverbank_runtime::Secret;

    fn entry(provider: &str, tenant: &str, secrets: &[&str]) -> WebhookSecretConfig {
        WebhookSecretConfig {
            provider: provider.into(),
            tenant_id: tenant.into(),
            environment: Environment::Live,
            secrets: secrets.iter().map(|s| Secret::new((*s).to_owned())).collect(),
        }
    }

    #[test]
    fn webhook_keys_are_checked_against_their_provider_at_start_up() {
        let mut cfg = Config::load(None).expect("defaults");
        let shared = "a-long-shared-secret-0001";
        cfg.ingest.webhooks =
            vec![entry("kycflow", "t1", &[shared]), entry("kycflow", "t2", &["another-secret-00002"])];
        let (_, keys) = webhook_keys(&cfg).expect("valid");
        let set = &keys[&("kycflow".to_owned(), Environment::Live)];
        assert_eq!((set.all.len(), set.by_tenant["t2"].len()), (2, 1));
        assert_eq!(set.candidates(None).1.of(1), Some("t2"));

        let cases = [
            (vec![entry("nosuch", "t1", &[shared])], "no definition"),
            (vec![entry("acmepay", "t1", &["not-a-whsec-secret"])], "whsec_"),
            (vec![entry("kycflow", "t1", &["short"])], "at least 16 bytes"),
            (vec![entry("kycflow", "t1", &[shared]), entry("kycflow", "t2", &[shared])], "never share"),
        ];
        for (webhooks, want) in cases {
            cfg.ingest.webhooks = webhooks;
            let e = webhook_keys(&cfg).expect_err(want).to_string();
            assert!(e.contains(want), "{e} should say {want}");
        }
    }
}
