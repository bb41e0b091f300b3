//! The agent's HTTP surface: /metrics, /api/v1/incidents, /healthz and a status page,
//! served by a capped accept loop with deadlines (`server`), behind TLS and basic auth
//! when a web config file asks for them.
mod auth;
mod failed_logins;
mod fd_budget;
mod gate;
mod health;
mod page;
mod server;
mod slots;
mod web_config;

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{Html, IntoResponse},
    routing::get,
    Router,
};

pub use health::Health;
pub use server::Listener;
pub use web_config::WebConfig;

use crate::{daemon::Shared, incidents::IncidentList};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/api/v1/incidents", get(incidents))
        .route("/healthz", get(healthz))
        .with_state(shared)
}

/// Runs a handler's work on the blocking pool: it takes locks the scanner and uprobe
/// discovery also take, and a wait there must not stall the accept loop or /healthz.
async fn off_thread<T: Send + 'static>(
    shared: Arc<Shared>,
    work: impl FnOnce(&Shared) -> T + Send + 'static,
) -> Result<T, StatusCode> {
    tokio::task::spawn_blocking(move || work(&shared))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Result<impl IntoResponse, StatusCode> {
    let text = off_thread(shared, |shared| {
        let (counters, programs, waits) = {
            let probes = shared.probes();
            (
                probes.counters(),
                probes.program_stats(),
                probes.wait_histograms(),
            )
        };
        shared.metrics.observe_kernel(counters, &programs, waits);
        shared.metrics.encode()
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

async fn incidents(State(shared): State<Arc<Shared>>) -> Result<impl IntoResponse, StatusCode> {
    // Serialized on the blocking pool too: with many incidents the answer is large.
    let body = off_thread(shared, |shared| {
        serde_json::to_vec(&IncidentList {
            incidents: shared.store().list(),
        })
    })
    .await?
    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}

async fn status_page(State(shared): State<Arc<Shared>>) -> Result<Html<String>, StatusCode> {
    off_thread(shared, |shared| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Html(page::render(
            &shared.store().list(),
            &shared.config,
            host.trim(),
        ))
    })
    .await
}

async fn healthz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.health.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
