//! `GET /health`, `GET /ready` and `GET /metrics`.

use super::api::{ErrorBody, Status};
use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use crate::state::AppState;

/// The process answers.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses((status = 200, description = "the process answers", body = Status))
)]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Status {
        status: "ok".into(),
    })
}

/// The store answers (503 `STORE_UNAVAILABLE` if not).
#[utoipa::path(
    get, path = "/ready", tag = "operations",
    responses((status = 200, description = "the store answers", body = Status), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody))
)]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await?;
    Ok(HttpResponse::Ok().json(Status {
        status: "ready".into(),
    }))
}

/// Prometheus text format.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&state.connections))
}
