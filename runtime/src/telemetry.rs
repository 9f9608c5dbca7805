//! Logging. Spans carry tenant, topic, partition, offset and processor; never PII.
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Install the global subscriber once; later calls are no-ops (tests start several components).
pub fn init(cfg: &TelemetryConfig) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Serve Prometheus metrics on `telemetry.metrics_listen_addr` (if set). Call inside the tokio runtime.
/// Metric names: `riverbank_<thing>_<unit>[_total]`, labels bounded (component names, never ids).
pub fn install_metrics(cfg: &TelemetryConfig) -> anyhow::Result<()> {
    if cfg.metrics_listen_addr.is_empty() {
        return Ok(());
    }
    let addr: std::net::SocketAddr = cfg.metrics_listen_addr.parse()?;
    metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(addr).install()?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(())
}
