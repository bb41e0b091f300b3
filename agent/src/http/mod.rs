//! The agent's HTTP surface: /metrics, /api/v1/incidents, /healthz and a status page.
mod page;

use std::sync::Arc;

use axum::{
    extract::State,
    http::header,
    response::{Html, IntoResponse},
    routing::get,
    Json, Router,
};

use crate::daemon::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/api/v1/incidents", get(incidents))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let (counters, programs, waits) = {
        let probes = shared.probes();
        (
            probes.counters(),
            probes.program_stats(),
            probes.wait_histograms(),
        )
    };
    shared.metrics.observe_kernel(counters, &programs, waits);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

async fn incidents(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(serde_json::json!({ "incidents": shared.store().list() }))
}

async fn status_page(State(shared): State<Arc<Shared>>) -> Html<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    Html(page::render(
        &shared.store().list(),
        &shared.config,
        host.trim(),
    ))
}
