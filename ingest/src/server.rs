//! The HTTP edge's routes and serving: provider webhooks ([`crate::webhooks`]) and tenant API
//! commands ([`crate::commands`]) → Kafka, plus `/health`. What requests share (state, guards, the
//! claim → produce → answer step) is in [`crate::request`].
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use riverbank_runtime::config::Config;
use riverbank_runtime::{kafka, CancellationToken};

use crate::{commands, store, webhooks};

// Their paths before they moved out of this module (the binary uses `load_providers` and `webhook_keys`).
pub use crate::keys::{load_providers, webhook_keys, IngestSetupError, KeySet, Owner};
pub use crate::request::Ingest;

pub fn router(state: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/webhooks/{provider}", post(webhooks::webhook))
        .route("/v1/webhooks/{provider}/{tenant_id}", post(webhooks::webhook_for_tenant))
        .route("/v1/transfers", post(commands::create_transfer))
        .route("/v1/transfers/{id}/approve", post(commands::approve_transfer))
        .route("/v1/transfers/{id}/reject", post(commands::reject_transfer))
        .route("/v1/transfers/{id}/cancel", post(commands::cancel_transfer))
        .route("/v1/fx/quotes", post(commands::fx_quote))
        .route("/v1/fx/conversions", post(commands::fx_conversion))
        .route("/v1/fx/rates", post(commands::fx_rates))
        .route("/v1/fx/conversions/{id}/decision", post(commands::fx_conversion_decision))
        .route("/v1/billing/plan", put(commands::billing_plan))
        .route("/v1/fees/{id}", put(commands::fee_config))
        .route("/v1/kyc/users/{id}/freeze", post(commands::kyc_freeze))
        .route("/v1/kyc/users/{id}/unfreeze", post(commands::kyc_unfreeze))
        .route("/v1/kyc/users/{id}/close", post(commands::kyc_close))
        .route("/v1/kyc/cases/{id}/decision", post(commands::kyc_review))
        .route("/v1/risk/reviews/{id}/decision", post(commands::risk_review))
        .route("/v1/users/{id}/consents", post(commands::consent))
        .route("/health", get(health))
        .route("/openapi.json", get(crate::openapi::serve))
        .fallback(riverbank_runtime::http::not_found)
        .method_not_allowed_fallback(riverbank_runtime::http::method_not_allowed)
        .with_state(state)
}

/// Serve until `shutdown`; in-flight requests finish first.
pub async fn serve(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    kafka::ensure_topics(&cfg.kafka, &kafka::all_topics(&cfg.kafka)).await?;
    let pool = riverbank_runtime::stores::postgres_pool(&cfg.postgres, false).await?;
    store::migrate(&pool).await?;
    // librdkafka gives up on a message when ingest gives up on its request: a 503 then means "not
    // accepted" (short of an acknowledgement lost in flight, which the deterministic event id covers).
    let mut producer_cfg = cfg.kafka.clone();
    producer_cfg.message_timeout_ms = cfg.ingest.produce_timeout_ms;
    let keystore = riverbank_runtime::keystore::from_config(pool.clone(), &cfg.keys).await?;
    let state = Arc::new(Ingest::new(cfg, kafka::producer(&producer_cfg)?, pool.clone(), keystore)?);
    tokio::spawn(store::sweep_loop(
        pool,
        Duration::from_secs(cfg.ingest.retention_sweep_interval_s),
        Duration::from_secs(cfg.ingest.webhook_dedupe_retention_h * 3600),
        Duration::from_secs(cfg.ingest.idempotency_retention_h * 3600),
        cfg.ingest.retention_sweep_rows_max,
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(cfg.ingest.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, providers = state.providers.len(), "ingest listening");
    riverbank_runtime::http::serve(listener, router(state), cfg.ingest.server_limits(), shutdown).await?;
    Ok(())
}

async fn health(State(s): State<Arc<Ingest>>) -> Response {
    let broker = kafka::ping(&s.kafka).await;
    let db = sqlx::query("SELECT 1").execute(&s.pool).await;
    let ok = broker.is_ok() && db.is_ok();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "broker": match &broker {
            Ok(brokers) => serde_json::json!({"status": "ok", "brokers": brokers}),
            Err(e) => serde_json::json!({"status": "down", "error": e.to_string()}),
        },
        "postgres": match &db {
            Ok(_) => serde_json::json!({"status": "ok"}),
            Err(_) => serde_json::json!({"status": "down"}),
        },
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}
