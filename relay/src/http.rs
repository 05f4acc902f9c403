//! `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::delivery::RelayProducer;
use crate::store::{Backlog, RelayStore};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::health::Health;
use crate::shutdown::Shutdown;

/// How long a health probe waits for the database or the broker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs a Prometheus recorder as this process's metrics recorder and
/// returns the handle `/metrics` renders (pass it to
/// [`Relay::with_metrics`](crate::Relay::with_metrics)).
///
/// # Panics
/// When a metrics recorder is already installed: call it once, and not
/// when the host application installs its own.
pub fn install_recorder() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(crate::metrics::BATCH_SECONDS.into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )
        .expect("bucket list is not empty")
        .set_buckets_for_metric(
            Matcher::Full(crate::metrics::BATCH_SIZE.into()),
            &[
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            ],
        )
        .expect("bucket list is not empty")
        .install_recorder()
        .expect("the metrics recorder is installed once")
}

/// Sets the backlog gauges.
pub fn set_backlog_gauges(b: &Backlog) {
    metrics::gauge!(crate::metrics::PENDING).set(b.pending as f64);
    metrics::gauge!(crate::metrics::DEAD_MESSAGES).set(b.dead as f64);
    metrics::gauge!(crate::metrics::OLDEST_PENDING).set(b.oldest_pending_secs);
    metrics::gauge!(crate::metrics::AWAITING).set(b.awaiting as f64);
    metrics::gauge!(crate::metrics::OVERDUE).set(b.overdue as f64);
    metrics::gauge!(crate::metrics::COMPLETED).set(b.completed as f64);
}

#[derive(Clone)]
struct AppState {
    store: RelayStore,
    producer: RelayProducer,
    health: Health,
    /// `None` when the host application exports the metrics itself.
    metrics: Option<PrometheusHandle>,
}

/// Binds `addr` and serves until `shutdown`. Returns the bound address (so
/// port 0 can be used) once listening.
pub async fn serve(
    addr: SocketAddr,
    store: RelayStore,
    producer: RelayProducer,
    health: Health,
    metrics: Option<PrometheusHandle>,
    mut shutdown: Shutdown,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::HttpListen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::HttpListen { addr, source })?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            store,
            producer,
            health,
            metrics,
        });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP endpoint failed");
        }
    });
    Ok(bound)
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let database = match tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query("SELECT 1").execute(s.store.pool()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_string()),
    };
    let broker = crate::publish::ask_broker(&s.producer, PROBE_TIMEOUT).await;
    // Reachable is not enough: a relay whose loop makes no progress holds
    // keys nobody else may publish.
    let publishing = s.health.problem().map_or(Ok(()), Err);
    let status = if database.is_ok() && broker.is_ok() && publishing.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let show = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
    (
        status,
        Json(serde_json::json!({
            "database": show(database),
            "broker": show(broker),
            "publishing": show(publishing),
        })),
    )
}

async fn render_metrics(State(s): State<AppState>) -> axum::response::Response {
    let Some(metrics) = &s.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "this relay runs in-process without a metrics handle; its metrics go to the host application's recorder\n",
        )
            .into_response();
    };
    // Fresh backlog figures on every scrape; on error the gauges keep the
    // sweeper's last values.
    if let Ok(Ok(b)) = tokio::time::timeout(PROBE_TIMEOUT, s.store.backlog()).await {
        set_backlog_gauges(&b);
    }
    metrics.render().into_response()
}
